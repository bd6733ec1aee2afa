"""Cached answers: a finished run's analysis and downsampled metric queries over finished runs,
kept so that an experiment page of 200 runs is computed once, not at every open.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04 19:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'cached_answers',
        sa.Column('key', sa.String(length=64), nullable=False, comment="SHA-256 of the answer's inputs."),
        sa.Column('experiment_id', sa.Integer(), nullable=False),
        sa.Column(
            'run_id', sa.Integer(), nullable=True,
            comment='The run whose analysis this is; null for a query.',
        ),
        sa.Column('size_bytes', sa.Integer(), nullable=False),
        sa.Column('body', sa.LargeBinary(), nullable=False, comment='The answer, gzip-compressed.'),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ['experiment_id'], ['experiments.id'],
            name=op.f('fk_cached_answers_experiment_id_experiments'), ondelete='CASCADE',
        ),
        sa.ForeignKeyConstraint(
            ['run_id'], ['runs.id'], name=op.f('fk_cached_answers_run_id_runs'), ondelete='CASCADE',
        ),
        sa.PrimaryKeyConstraint('key', name=op.f('pk_cached_answers')),
    )
    op.create_index('ix_cached_answers_experiment_id', 'cached_answers', ['experiment_id'])
    op.create_index('ix_cached_answers_run_id', 'cached_answers', ['run_id'])
    op.create_index('ix_cached_answers_created_at', 'cached_answers', ['created_at'])


def downgrade() -> None:
    op.drop_table('cached_answers')

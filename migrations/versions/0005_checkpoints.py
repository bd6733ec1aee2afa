"""Checkpoints: an index row per (run, step), and chunks for the database checkpoint store.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 20:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('checkpoints',
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('step', sa.BigInteger(), nullable=False),
    sa.Column('size_bytes', sa.BigInteger(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('fencing_token', sa.Integer(), nullable=False, comment="The run's lease token of the writer."),
    sa.Column('blob_key', sa.String(length=300), nullable=False),
    sa.Column('kept', sa.Boolean(), nullable=False, comment='Spared by retention.'),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], name=op.f('fk_checkpoints_run_id_runs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('run_id', 'step', name=op.f('pk_checkpoints'))
    )
    op.create_table('checkpoint_chunks',
    sa.Column('blob_key', sa.String(length=300), nullable=False),
    sa.Column('seq', sa.Integer(), nullable=False),
    sa.Column('data', sa.LargeBinary(), nullable=False),
    sa.PrimaryKeyConstraint('blob_key', 'seq', name=op.f('pk_checkpoint_chunks'))
    )


def downgrade() -> None:
    op.drop_table('checkpoint_chunks')
    op.drop_table('checkpoints')

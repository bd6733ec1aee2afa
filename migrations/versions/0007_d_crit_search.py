"""d_crit_search: each probe run's round, and when a search ended.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 14:20:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('runs') as batch_op:
        batch_op.add_column(sa.Column(
            'search_round', sa.Integer(), nullable=True, comment="A d_crit_search probe's round (1, 2, ...).",
        ))
    with op.batch_alter_table('experiments') as batch_op:
        batch_op.add_column(sa.Column(
            'search_ended_at', sa.DateTime(timezone=True), nullable=True,
            comment='When a d_crit_search planned its last round (it ended).',
        ))


def downgrade() -> None:
    with op.batch_alter_table('experiments') as batch_op:
        batch_op.drop_column('search_ended_at')
    with op.batch_alter_table('runs') as batch_op:
        batch_op.drop_column('search_round')

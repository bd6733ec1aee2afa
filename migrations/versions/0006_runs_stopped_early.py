"""runs.stopped_early_at_step: where a stop_when condition ended a run.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 01:15:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('runs') as batch_op:
        batch_op.add_column(sa.Column(
            'stopped_early_at_step', sa.BigInteger(), nullable=True,
            comment='The step at which a stop_when condition ended the run (it succeeded).',
        ))


def downgrade() -> None:
    with op.batch_alter_table('runs') as batch_op:
        batch_op.drop_column('stopped_early_at_step')

"""Tags and notes on experiments and runs.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04 17:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None

_TAGS_COMMENT = 'Free key -> value labels set by the owner (PATCH); null when none.'
_NOTE_COMMENT = "The owner's free-text note."


def upgrade() -> None:
    for table in ('experiments', 'runs'):
        with op.batch_alter_table(table) as batch_op:
            batch_op.add_column(sa.Column('tags', sa.JSON(), nullable=True, comment=_TAGS_COMMENT))
            batch_op.add_column(sa.Column('note', sa.Text(), nullable=True, comment=_NOTE_COMMENT))


def downgrade() -> None:
    for table in ('runs', 'experiments'):
        with op.batch_alter_table(table) as batch_op:
            batch_op.drop_column('note')
            batch_op.drop_column('tags')

"""Storage bounds: each run's stored and planned metric points and checkpoint bytes; the age of a
database-stored checkpoint blob, so that the reconciler can delete one no index row names; an
index of the searches that have not ended, for the reconciler's pass.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04 17:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

# The reconciler looks for d_crit_searches between rounds among these only (a partial index).
OPEN_SEARCHES = "kind = 'd_crit_search' AND search_ended_at IS NULL"

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('runs') as batch_op:
        batch_op.add_column(sa.Column(
            'stored_points', sa.BigInteger(), server_default='0', nullable=False,
            comment='Metric points stored (write_points counts them).',
        ))
        batch_op.add_column(sa.Column(
            'planned_points', sa.BigInteger(), server_default='0', nullable=False,
            comment='Metric points its spec will store in all (groklab/storage.py).',
        ))
        batch_op.add_column(sa.Column(
            'planned_checkpoint_bytes', sa.BigInteger(), server_default='0', nullable=False,
            comment='Checkpoint bytes its spec will keep at most.',
        ))
    # SQLite cannot ADD COLUMN with a default of CURRENT_TIMESTAMP: it copies the table instead.
    recreate = 'always' if op.get_bind().dialect.name == 'sqlite' else 'auto'
    with op.batch_alter_table('checkpoint_chunks', recreate=recreate) as batch_op:
        batch_op.add_column(sa.Column(
            'created_at', sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False,
            comment="An unindexed blob's age (orphans).",
        ))
    op.create_index(
        'ix_experiments_open_searches', 'experiments', ['id'],
        postgresql_where=sa.text(OPEN_SEARCHES), sqlite_where=sa.text(OPEN_SEARCHES),
    )
    # Points stored before this revision count towards their owner's usage from now on. Runs
    # queued before it plan nothing more than they store (their specs are not re-read here).
    op.execute(
        "UPDATE runs SET stored_points = (SELECT count(*) FROM metric_points JOIN metric_series "
        "ON metric_points.series_id = metric_series.id WHERE metric_series.run_id = runs.id)"
    )


def downgrade() -> None:
    op.drop_index('ix_experiments_open_searches', table_name='experiments')
    with op.batch_alter_table('checkpoint_chunks') as batch_op:
        batch_op.drop_column('created_at')
    with op.batch_alter_table('runs') as batch_op:
        batch_op.drop_column('planned_checkpoint_bytes')
        batch_op.drop_column('planned_points')
        batch_op.drop_column('stored_points')

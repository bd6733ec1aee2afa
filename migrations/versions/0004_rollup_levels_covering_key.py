"""Metric rollups every 4x in width (16, 64, ..., 65536) and a primary key that covers them.

Downsampled reads fold ~10 blocks per bucket instead of ~22 (benchmarks/metric_store.py) and read them
with an index-only scan.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25 10:00:00.000000
"""

from __future__ import annotations

from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None

AGGREGATES = ['count', 'value_count', 'min', 'max', 'sum', 'last_step', 'last_value']
NEW_WIDTHS = (64, 1024, 16384)  # 16, 256, 4096 and 65536 exist since 0003


def _rebuild_key(include: list[str]) -> None:
    covering = f" INCLUDE ({', '.join(include)})" if include else ""
    op.execute(
        "ALTER TABLE metric_rollups DROP CONSTRAINT pk_metric_rollups, "
        f"ADD CONSTRAINT pk_metric_rollups PRIMARY KEY (series_id, width, block){covering}"
    )


def upgrade() -> None:
    # SQLite keeps no rollups (it folds raw points): nothing to change there.
    if op.get_bind().dialect.name != 'postgresql':
        return
    for width in NEW_WIDTHS:
        op.execute(
            f"INSERT INTO metric_rollups SELECT series_id, {width}, floor(block::float8 / 4)::bigint, "
            "sum(count), sum(value_count), min(min), max(max), sum(sum), max(last_step), "
            "(array_agg(last_value ORDER BY last_step DESC))[1] "
            f"FROM metric_rollups WHERE width = {width // 4} GROUP BY 1, 2, 3"
        )
    _rebuild_key(AGGREGATES)


def downgrade() -> None:
    if op.get_bind().dialect.name != 'postgresql':
        return
    op.execute(f"DELETE FROM metric_rollups WHERE width IN {NEW_WIDTHS}")
    _rebuild_key([])

"""Metric rollups (block aggregates for downsampled reads); metric_points without a foreign key.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25 05:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('metric_rollups',
    sa.Column('series_id', sa.Integer(), nullable=False),
    sa.Column('width', sa.Integer(), nullable=False),
    sa.Column('block', sa.BigInteger(), nullable=False),
    sa.Column('count', sa.Integer(), nullable=False),
    sa.Column('value_count', sa.Integer(), nullable=False),
    sa.Column('min', sa.Float(precision=53), nullable=True),
    sa.Column('max', sa.Float(precision=53), nullable=True),
    sa.Column('sum', sa.Float(precision=53), nullable=True),
    sa.Column('last_step', sa.BigInteger(), nullable=False),
    sa.Column('last_value', sa.Float(precision=53), nullable=True),
    sa.PrimaryKeyConstraint('series_id', 'width', 'block', name=op.f('pk_metric_rollups')),
    sqlite_with_rowid=False
    )
    # SQLite rebuilds the table here; keep it WITHOUT ROWID as 0001 made it.
    with op.batch_alter_table('metric_points', schema=None, table_kwargs={'sqlite_with_rowid': False}) as batch_op:
        batch_op.drop_constraint('fk_metric_points_series_id_metric_series', type_='foreignkey')
    # Points written before this revision get their rollups (write_points keeps them from now on).
    if op.get_bind().dialect.name == 'postgresql':
        op.execute(
            "INSERT INTO metric_rollups SELECT series_id, 16, floor(step::float8 / 16)::bigint, count(*), "
            "count(value), min(value), max(value), sum(value), max(step), "
            "(array_agg(value ORDER BY step DESC))[1] FROM metric_points GROUP BY 1, 2, 3"
        )
        for width in (256, 4096, 65536):
            op.execute(
                f"INSERT INTO metric_rollups SELECT series_id, {width}, floor(block::float8 / 16)::bigint, "
                "sum(count), sum(value_count), min(min), max(max), sum(sum), max(last_step), "
                "(array_agg(last_value ORDER BY last_step DESC))[1] "
                f"FROM metric_rollups WHERE width = {width // 16} GROUP BY 1, 2, 3"
            )


def downgrade() -> None:
    with op.batch_alter_table('metric_points', schema=None, table_kwargs={'sqlite_with_rowid': False}) as batch_op:
        batch_op.create_foreign_key('fk_metric_points_series_id_metric_series', 'metric_series', ['series_id'], ['id'], ondelete='CASCADE')
    op.drop_table('metric_rollups')

"""Initial schema: experiments, runs, metric series and points, run events.

Revision ID: 0001
Revises: 
Create Date: 2026-11-25 03:48:00.439371
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('experiments',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=True),
    sa.Column('spec', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_experiments'))
    )
    op.create_table('runs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('experiment_id', sa.Integer(), nullable=False),
    sa.Column('index', sa.Integer(), nullable=False, comment="Position within its experiment's sweep."),
    sa.Column('spec', sa.JSON(), nullable=False, comment='The expanded engine RunSpec.'),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('step', sa.BigInteger(), nullable=False),
    sa.Column('total_steps', sa.BigInteger(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('worker', sa.String(length=200), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('cancel_requested', sa.Boolean(), nullable=False),
    sa.Column('latest_metrics', sa.JSON(), nullable=False, comment="name -> [step, value] of each series' last point."),
    sa.ForeignKeyConstraint(['experiment_id'], ['experiments.id'], name=op.f('fk_runs_experiment_id_experiments'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_runs'))
    )
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.create_index('ix_runs_experiment_id_id', ['experiment_id', 'id'], unique=False)
        batch_op.create_index('ix_runs_status_id', ['status', 'id'], unique=False)

    op.create_table('metric_series',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], name=op.f('fk_metric_series_run_id_runs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_metric_series')),
    sa.UniqueConstraint('run_id', 'name', name=op.f('uq_metric_series_run_id_name'))
    )
    op.create_table('run_events',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('message', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], name=op.f('fk_run_events_run_id_runs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_run_events'))
    )
    with op.batch_alter_table('run_events', schema=None) as batch_op:
        batch_op.create_index('ix_run_events_run_id_id', ['run_id', 'id'], unique=False)

    op.create_table('metric_points',
    sa.Column('series_id', sa.Integer(), nullable=False),
    sa.Column('step', sa.BigInteger(), nullable=False),
    sa.Column('value', sa.Float(precision=53), nullable=True, comment='NULL for NaN.'),
    sa.ForeignKeyConstraint(['series_id'], ['metric_series.id'], name=op.f('fk_metric_points_series_id_metric_series'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('series_id', 'step', name=op.f('pk_metric_points')),
    sqlite_with_rowid=False
    )


def downgrade() -> None:
    op.drop_table('metric_points')
    with op.batch_alter_table('run_events', schema=None) as batch_op:
        batch_op.drop_index('ix_run_events_run_id_id')

    op.drop_table('run_events')
    op.drop_table('metric_series')
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.drop_index('ix_runs_status_id')
        batch_op.drop_index('ix_runs_experiment_id_id')

    op.drop_table('runs')
    op.drop_table('experiments')

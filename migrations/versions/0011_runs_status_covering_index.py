"""The runs index by experiment also holds each run's status, so the experiments listing reads its
experiments' run ids and status counts from the index alone (issue #29: at 50,000 runs PostgreSQL
read them from the whole runs table, whose rows carry their spec: 24 ms; an index-only scan: 2.8 ms).

On PostgreSQL the index `ix_runs_experiment_id_id` (experiment_id, id) becomes (experiment_id, id)
INCLUDE (status): status rides in the leaf entries only, so the key and the order the run listings
read stay as they were. SQLite has no INCLUDE and keeps its index as it is: the model declares one
index for both databases, and a third key column there would make SQLite's schema differ from the
model's (tests/store/test_migrations.py); SQLite holds a one-machine lab, not the fleet's 50,000 runs.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-04 22:30:00.000000
"""

from __future__ import annotations

from alembic import op

revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name != 'postgresql':
        return
    op.drop_index('ix_runs_experiment_id_id', table_name='runs')
    op.create_index('ix_runs_experiment_id_id', 'runs', ['experiment_id', 'id'], postgresql_include=['status'])


def downgrade() -> None:
    if op.get_bind().dialect.name != 'postgresql':
        return
    op.drop_index('ix_runs_experiment_id_id', table_name='runs')
    op.create_index('ix_runs_experiment_id_id', 'runs', ['experiment_id', 'id'])

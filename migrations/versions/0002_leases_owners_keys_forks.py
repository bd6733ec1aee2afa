"""Run leases (fencing), forks, owners, API keys and idempotency keys.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 04:01:38.967808
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('api_keys',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('owner', sa.String(length=100), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=True),
    sa.Column('prefix', sa.String(length=16), nullable=False, comment='First characters, to recognise a key.'),
    sa.Column('key_hash', sa.String(length=64), nullable=False),
    sa.Column('scopes', sa.String(length=100), nullable=False, comment='Comma-separated: read, write.'),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_api_keys')),
    sa.UniqueConstraint('key_hash', name=op.f('uq_api_keys_key_hash'))
    )
    op.create_table('idempotency_keys',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('owner', sa.String(length=100), nullable=False),
    sa.Column('key', sa.String(length=200), nullable=False),
    sa.Column('request_hash', sa.String(length=64), nullable=False),
    sa.Column('experiment_id', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['experiment_id'], ['experiments.id'], name=op.f('fk_idempotency_keys_experiment_id_experiments'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_idempotency_keys')),
    sa.UniqueConstraint('owner', 'key', name=op.f('uq_idempotency_keys_owner_key'))
    )
    with op.batch_alter_table('experiments', schema=None) as batch_op:
        batch_op.add_column(sa.Column('owner', sa.String(length=100), server_default='local', nullable=False))
        batch_op.add_column(sa.Column('kind', sa.String(length=32), server_default='sweep', nullable=False))
        batch_op.create_index('ix_experiments_owner_id', ['owner', 'id'], unique=False)

    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('role', sa.String(length=32), nullable=True, comment='e.g. phase1 / phase2 / memorise.'))
        batch_op.add_column(sa.Column('parent_run_id', sa.Integer(), nullable=True, comment='The run whose final checkpoint this run continues from (a fork).'))
        batch_op.add_column(sa.Column('lease_token', sa.Integer(), server_default='0', nullable=False, comment='Fencing token: bumped by every claim.'))
        batch_op.add_column(sa.Column('lease_expires_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('attempts', sa.Integer(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('enqueued_at', sa.DateTime(timezone=True), nullable=True, comment='Last time a message for this run was sent to the broker.'))
        batch_op.create_foreign_key(batch_op.f('fk_runs_parent_run_id_runs'), 'runs', ['parent_run_id'], ['id'], ondelete='SET NULL')



def downgrade() -> None:
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('fk_runs_parent_run_id_runs'), type_='foreignkey')
        batch_op.drop_column('enqueued_at')
        batch_op.drop_column('attempts')
        batch_op.drop_column('lease_expires_at')
        batch_op.drop_column('lease_token')
        batch_op.drop_column('parent_run_id')
        batch_op.drop_column('role')
    with op.batch_alter_table('experiments', schema=None) as batch_op:
        batch_op.drop_index('ix_experiments_owner_id')
        batch_op.drop_column('kind')
        batch_op.drop_column('owner')

    op.drop_table('idempotency_keys')
    op.drop_table('api_keys')

"""outbox intents and attempts, voucher redeem error

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

from alembic import op
import sqlalchemy as sa

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # the first outbox table predated chain.outbox_store; intents + attempts mirror its Intent/Attempt
    op.create_table(
        'outbox_intents',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('key', sa.String(length=200), nullable=False),
        sa.Column('sender', sa.String(length=42), nullable=False),
        sa.Column('params', sa.JSON(), nullable=False),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('created_at', sa.Float(), nullable=False),
        sa.Column('nonce', sa.BigInteger(), nullable=True),
        sa.Column('sent_at', sa.Float(), nullable=True),
        sa.Column('tx_hash', sa.LargeBinary(), nullable=True),
        sa.Column('block_number', sa.BigInteger(), nullable=True),
        sa.Column('gas_used', sa.BigInteger(), nullable=True),
        sa.Column('error', sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_outbox_intents')),
        sa.UniqueConstraint('key', name=op.f('uq_outbox_intents_key')),
        sa.UniqueConstraint('sender', 'nonce', name=op.f('uq_outbox_intents_sender')),
    )
    with op.batch_alter_table('outbox_intents', schema=None) as batch_op:
        batch_op.create_index('ix_outbox_intents_open', ['sender', 'status'], unique=False)

    op.create_table(
        'outbox_attempts',
        sa.Column('intent_id', sa.Integer(), autoincrement=False, nullable=False),
        sa.Column('n', sa.Integer(), autoincrement=False, nullable=False),
        sa.Column('tx_hash', sa.LargeBinary(), nullable=False),
        sa.Column('raw', sa.LargeBinary(), nullable=False),
        sa.Column('max_fee_per_gas', sa.String(length=78), nullable=False),
        sa.Column('max_priority_fee_per_gas', sa.String(length=78), nullable=False),
        sa.Column('signed_at', sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(['intent_id'], ['outbox_intents.id'], name=op.f('fk_outbox_attempts_intent_id_outbox_intents')),
        sa.PrimaryKeyConstraint('intent_id', 'n', name=op.f('pk_outbox_attempts')),
        sa.UniqueConstraint('tx_hash', name=op.f('uq_outbox_attempts_tx_hash')),
    )
    with op.batch_alter_table('outbox_txs', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_outbox_txs_kind'))
        batch_op.drop_index(batch_op.f('ix_outbox_txs_status'))
        batch_op.drop_index(batch_op.f('ix_outbox_txs_tx_hash'))

    op.drop_table('outbox_txs')
    with op.batch_alter_table('vouchers', schema=None) as batch_op:
        batch_op.add_column(sa.Column('redeem_error', sa.Text(), nullable=True))


def downgrade() -> None:
    # the first outbox table predated chain.outbox_store; intents + attempts mirror its Intent/Attempt
    with op.batch_alter_table('vouchers', schema=None) as batch_op:
        batch_op.drop_column('redeem_error')

    op.create_table(
        'outbox_txs',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('kind', sa.String(length=32), nullable=False),
        sa.Column('key', sa.String(length=128), nullable=True),
        sa.Column('sender', sa.String(length=42), nullable=False),
        sa.Column('intent', sa.JSON(), nullable=False),
        sa.Column('nonce', sa.BigInteger(), nullable=True),
        sa.Column('raw_tx', sa.LargeBinary(), nullable=True),
        sa.Column('tx_hash', sa.String(length=66), nullable=True),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('attempts', sa.Integer(), nullable=False),
        sa.Column('error', sa.Text(), nullable=True),
        sa.Column('receipt', sa.JSON(), nullable=True),
        sa.Column('extra', sa.JSON(), nullable=True),
        sa.Column('created_at', sa.Float(), nullable=False),
        sa.Column('updated_at', sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_outbox_txs')),
        sa.UniqueConstraint('key', name=op.f('uq_outbox_txs_key')),
    )
    with op.batch_alter_table('outbox_txs', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_outbox_txs_tx_hash'), ['tx_hash'], unique=False)
        batch_op.create_index(batch_op.f('ix_outbox_txs_status'), ['status'], unique=False)
        batch_op.create_index(batch_op.f('ix_outbox_txs_kind'), ['kind'], unique=False)

    op.drop_table('outbox_attempts')
    with op.batch_alter_table('outbox_intents', schema=None) as batch_op:
        batch_op.drop_index('ix_outbox_intents_open')

    op.drop_table('outbox_intents')

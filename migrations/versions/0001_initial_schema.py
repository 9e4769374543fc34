"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

from alembic import op
import sqlalchemy as sa


revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    # uint256 columns are decimal strings (node.db.models.Uint256)
    op.create_table(
        'adapters',
        sa.Column('id', sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column('owner', sa.String(length=42), nullable=False),
        sa.Column('base_model', sa.Text(), nullable=False),
        sa.Column('cid', sa.Text(), nullable=False),
        sa.Column('rank', sa.Integer(), nullable=False),
        sa.Column('price_per_1k', sa.String(length=78), nullable=False),
        sa.Column('owner_bps', sa.Integer(), nullable=False),
        sa.Column('dataset_splits', sa.JSON(), nullable=False),
        sa.Column('previous_id', sa.BigInteger(), nullable=True),
        sa.Column('deprecated', sa.Boolean(), nullable=False),
        sa.Column('block_number', sa.BigInteger(), nullable=False),
        sa.Column('state', sa.String(length=16), nullable=False),
        sa.Column('failure_reason', sa.Text(), nullable=True),
        sa.Column('local_path', sa.Text(), nullable=True),
        sa.Column('attempts', sa.Integer(), nullable=False),
        sa.Column('updated_at', sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_adapters')),
    )
    with op.batch_alter_table('adapters', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_adapters_state'), ['state'], unique=False)

    op.create_table(
        'chain_blocks',
        sa.Column('number', sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column('hash', sa.String(length=66), nullable=False),
        sa.Column('parent_hash', sa.String(length=66), nullable=False),
        sa.PrimaryKeyConstraint('number', name=op.f('pk_chain_blocks')),
    )
    op.create_table(
        'chain_cursor',
        sa.Column('name', sa.String(length=64), nullable=False),
        sa.Column('block_number', sa.BigInteger(), nullable=False),
        sa.Column('block_hash', sa.String(length=66), nullable=False),
        sa.Column('updated_at', sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint('name', name=op.f('pk_chain_cursor')),
    )
    op.create_table(
        'chain_events',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('block_number', sa.BigInteger(), nullable=False),
        sa.Column('block_hash', sa.String(length=66), nullable=False),
        sa.Column('tx_hash', sa.String(length=66), nullable=False),
        sa.Column('log_index', sa.Integer(), nullable=False),
        sa.Column('address', sa.String(length=42), nullable=False),
        sa.Column('name', sa.String(length=64), nullable=False),
        sa.Column('entity', sa.String(length=96), nullable=False),
        sa.Column('args', sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_chain_events')),
        sa.UniqueConstraint('block_number', 'log_index', name=op.f('uq_chain_events_block_number')),
    )
    with op.batch_alter_table('chain_events', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_chain_events_block_number'), ['block_number'], unique=False)
        batch_op.create_index('ix_chain_events_entity', ['entity'], unique=False)

    op.create_table(
        'contributions',
        sa.Column('id', sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column('dataset_id', sa.BigInteger(), nullable=False),
        sa.Column('contributor', sa.String(length=42), nullable=False),
        sa.Column('content_cid', sa.Text(), nullable=False),
        sa.Column('size_tokens', sa.BigInteger(), nullable=False),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('weight', sa.String(length=78), nullable=False),
        sa.Column('block_number', sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_contributions')),
    )
    with op.batch_alter_table('contributions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_contributions_dataset_id'), ['dataset_id'], unique=False)

    op.create_table(
        'datasets',
        sa.Column('id', sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column('curator', sa.String(length=42), nullable=False),
        sa.Column('name', sa.Text(), nullable=False),
        sa.Column('license', sa.Text(), nullable=False),
        sa.Column('metadata_cid', sa.Text(), nullable=False),
        sa.Column('block_number', sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_datasets')),
    )
    op.create_table(
        'nodes',
        sa.Column('operator', sa.String(length=42), nullable=False),
        sa.Column('endpoint', sa.Text(), nullable=False),
        sa.Column('base_models', sa.JSON(), nullable=False),
        sa.Column('price_per_1k', sa.String(length=78), nullable=False),
        sa.Column('bond', sa.String(length=78), nullable=False),
        sa.Column('active', sa.Boolean(), nullable=False),
        sa.Column('block_number', sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint('operator', name=op.f('pk_nodes')),
    )
    op.create_table(
        'outbox_txs',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
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
        batch_op.create_index(batch_op.f('ix_outbox_txs_kind'), ['kind'], unique=False)
        batch_op.create_index(batch_op.f('ix_outbox_txs_status'), ['status'], unique=False)
        batch_op.create_index(batch_op.f('ix_outbox_txs_tx_hash'), ['tx_hash'], unique=False)

    op.create_table(
        'receipt_batches',
        sa.Column('seq', sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column('root', sa.String(length=66), nullable=False),
        sa.Column('count', sa.Integer(), nullable=False),
        sa.Column('cid', sa.Text(), nullable=False),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('outbox_id', sa.Integer(), nullable=True),
        sa.Column('created_at', sa.Float(), nullable=False),
        sa.Column('committed_block', sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint('seq', name=op.f('pk_receipt_batches')),
    )
    op.create_table(
        'vouchers',
        sa.Column('lane', sa.String(length=160), nullable=False),
        sa.Column('payer', sa.String(length=42), nullable=False),
        sa.Column('node', sa.String(length=42), nullable=False),
        sa.Column('adapter_id', sa.BigInteger(), nullable=False),
        sa.Column('compute_value', sa.String(length=78), nullable=False),
        sa.Column('adapter_value', sa.String(length=78), nullable=False),
        sa.Column('signature', sa.Text(), nullable=False),
        sa.Column('redeemed_compute', sa.String(length=78), nullable=False),
        sa.Column('redeemed_adapter', sa.String(length=78), nullable=False),
        sa.Column('redeeming_compute', sa.String(length=78), nullable=True),
        sa.Column('redeeming_adapter', sa.String(length=78), nullable=True),
        sa.Column('redeem_outbox_id', sa.Integer(), nullable=True),
        sa.Column('updated_at', sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint('lane', name=op.f('pk_vouchers')),
    )
    with op.batch_alter_table('vouchers', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_vouchers_payer'), ['payer'], unique=False)

    op.create_table(
        'receipts',
        sa.Column('seq', sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column('request_id', sa.String(length=66), nullable=False),
        sa.Column('lane', sa.String(length=160), nullable=False),
        sa.Column('receipt', sa.JSON(), nullable=False),
        sa.Column('digest', sa.String(length=66), nullable=False),
        sa.Column('batch_seq', sa.BigInteger(), nullable=True),
        sa.Column('leaf_index', sa.Integer(), nullable=True),
        sa.Column('created_at', sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(['batch_seq'], ['receipt_batches.seq'], name=op.f('fk_receipts_batch_seq_receipt_batches')),
        sa.PrimaryKeyConstraint('seq', name=op.f('pk_receipts')),
        sa.UniqueConstraint('request_id', name=op.f('uq_receipts_request_id')),
    )
    with op.batch_alter_table('receipts', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_receipts_batch_seq'), ['batch_seq'], unique=False)
        batch_op.create_index(batch_op.f('ix_receipts_lane'), ['lane'], unique=False)


def downgrade() -> None:
    # uint256 columns are decimal strings (node.db.models.Uint256)
    with op.batch_alter_table('receipts', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_receipts_lane'))
        batch_op.drop_index(batch_op.f('ix_receipts_batch_seq'))

    op.drop_table('receipts')
    with op.batch_alter_table('vouchers', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_vouchers_payer'))

    op.drop_table('vouchers')
    op.drop_table('receipt_batches')
    with op.batch_alter_table('outbox_txs', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_outbox_txs_tx_hash'))
        batch_op.drop_index(batch_op.f('ix_outbox_txs_status'))
        batch_op.drop_index(batch_op.f('ix_outbox_txs_kind'))

    op.drop_table('outbox_txs')
    op.drop_table('nodes')
    op.drop_table('datasets')
    with op.batch_alter_table('contributions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_contributions_dataset_id'))

    op.drop_table('contributions')
    with op.batch_alter_table('chain_events', schema=None) as batch_op:
        batch_op.drop_index('ix_chain_events_entity')
        batch_op.drop_index(batch_op.f('ix_chain_events_block_number'))

    op.drop_table('chain_events')
    op.drop_table('chain_cursor')
    op.drop_table('chain_blocks')
    with op.batch_alter_table('adapters', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_adapters_state'))

    op.drop_table('adapters')

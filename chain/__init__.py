"""web3.py side of LoRA Node: ABIs, contract wrappers, EIP-712 types, Merkle tree, outbox, dev chain.

Never imports `inference` or `node` (see tests/unit/test_import_direction.py).
"""

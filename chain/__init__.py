"""web3.py side of LoRA Node: ABIs, ABI-driven contract bindings, the blocking send path, EIP-712
types, Merkle tree, outbox, dev chain.

Never imports `inference` or `node` (see tests/unit/test_import_direction.py).
"""

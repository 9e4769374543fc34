"""The LoRA Node daemon and CLI: config, DB, IPFS, sync, fetch, HTTP API, metering, settlement.

May import `chain` and `inference`; they never import it.
"""

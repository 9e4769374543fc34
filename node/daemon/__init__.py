"""The node daemon: its parts (chain sync, adapter lifecycle, payments, settlement, attribution) and the
composition root that wires and supervises them (`root.py`)."""

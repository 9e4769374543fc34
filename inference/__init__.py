"""Multi-LoRA inference: base model, adapters, batched layers, scheduler, attribution.

Never imports `chain` or `node` (see tests/unit/test_import_direction.py).
"""

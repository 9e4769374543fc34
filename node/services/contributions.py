"""Dataset contributions: the on-chain list, and the check and token count of a contribution file."""

from __future__ import annotations

from pathlib import Path

from node.services.errors import InputError

MAX_CONTRIBUTION_BYTES = 64 << 20


def all_contributions(c):
    """Every contribution on chain, in id order (the registry has no per-dataset or per-address index)."""
    for i in range(1, c.datasets.contribution_count() + 1):
        yield c.datasets.get_contribution(i)


def count_tokens(path: Path) -> int:
    """Validate a JSONL/text contribution and count its tokens with the base model's tokenizer."""
    from transformers import AutoTokenizer

    from inference.base_model import resolve_model_folder
    from inference.training import TrainingDataError, read_records

    if not path.is_file():
        raise InputError(f"{path} is not a file")
    size = path.stat().st_size
    if size > MAX_CONTRIBUTION_BYTES:
        raise InputError(f"{path} is {size} bytes, above the {MAX_CONTRIBUTION_BYTES}-byte cap")
    try:
        records = read_records(path)
    except TrainingDataError as e:
        raise InputError(str(e)) from None
    tok = AutoTokenizer.from_pretrained(str(resolve_model_folder(None)))
    text = "\n".join(" ".join(r.values()) for r in records)
    return len(tok(text, add_special_tokens=False)["input_ids"])

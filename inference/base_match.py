"""Is a local model folder the same base model as the one served? By content, never by name.

PEFT writes whatever path the trainer loaded the base from into `base_model_name_or_path`, so an
adapter trained on a local copy names a folder of the trainer's machine. Such an adapter is fine
when that folder holds the served base: the same architecture config and the same weights. Both are
compared here: the config as a dict (minus keys that do not change the model's function), the
weights by a fingerprint (sha256 over every tensor's name, shape and fp32 value bytes, in name
order), so a copy re-saved in another dtype or shard layout still matches, and a fine-tune with the
same architecture does not.

The candidate folder is untrusted (it is named in an untrusted adapter_config.json): only regular
files are read, config.json is size-capped, weights are read with `safetensors.safe_open` only.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from inference.adapters import MAX_CONFIG_DEPTH, _json_depth  # the same bounded JSON reading as adapter configs
from inference.errors import BaseModelError

MAX_CONFIG_BYTES = 1 << 20  # a real config.json is a few KB
# Keys that say how a checkpoint was saved or run, not what it computes.
IGNORED_CONFIG_KEYS = frozenset(
    {
        "_name_or_path",
        "torch_dtype",
        "dtype",
        "transformers_version",
        "use_cache",
        "quantization_config",
        "_commit_hash",
        "architectures",
        "_attn_implementation_autoset",
    }
)


class BaseMismatch(BaseModelError):
    """The folder is not the served base model; `reason` says what differs."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class BaseIdentity:
    """What makes two base model folders the same model."""

    config: dict
    weights_sha256: str
    tensors: int


def _regular(path: Path) -> Path:
    # Links are followed (hub snapshots are links to blobs), but only to regular files: never a
    # device or a FIFO that would block or never end.
    if not path.is_file():
        raise BaseMismatch(f"{path} is not a regular file")
    return path


def read_model_config(folder: Path) -> dict:
    """config.json of a model folder as a dict (size-capped, regular file only)."""
    path = folder / "config.json"
    if not path.exists():
        raise BaseMismatch(f"{folder} has no config.json: not a model folder")
    _regular(path)
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise BaseMismatch(f"{path} is larger than {MAX_CONFIG_BYTES} bytes")
    try:
        text = path.read_bytes()[: MAX_CONFIG_BYTES + 1].decode("utf-8")
        if _json_depth(text) > MAX_CONFIG_DEPTH:  # json.loads' recursion guard is not a bound
            raise ValueError(f"nested more than {MAX_CONFIG_DEPTH} levels deep")
        config = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise BaseMismatch(f"{path} is not valid JSON: {str(e)[:120]}") from None
    if not isinstance(config, dict):
        raise BaseMismatch(f"{path} is not a JSON object")
    return {k: v for k, v in config.items() if k not in IGNORED_CONFIG_KEYS}


def weights_fingerprint(folder: Path) -> tuple[str, int]:
    """(sha256 hex, tensor count) over every tensor of the folder's *.safetensors files."""
    import torch
    from safetensors import safe_open

    files = sorted(p for p in folder.glob("*.safetensors"))
    if not files:
        raise BaseMismatch(f"{folder} has no *.safetensors weights")
    handles, where = [], {}
    try:
        for path in files:
            _regular(path)
            try:
                h = safe_open(str(path), framework="pt", device="cpu")
            except Exception as e:  # noqa: BLE001 - safetensors raises several types for a malformed header
                raise BaseMismatch(f"{path.name} is not a valid safetensors file: {str(e)[:120]}") from None
            handles.append(h)
            for name in h.keys():
                if name in where:
                    raise BaseMismatch(f"tensor {name[:80]!r} appears in two weight files")
                where[name] = h
        digest = hashlib.sha256()
        for name in sorted(where):
            t = where[name].get_tensor(name)
            digest.update(name.encode() + b"\0" + repr(tuple(t.shape)).encode() + b"\0")
            if t.is_floating_point():
                t = t.to(torch.float32)
            digest.update(t.contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        return digest.hexdigest(), len(where)
    except BaseMismatch:
        raise
    except Exception as e:  # noqa: BLE001 - a truncated file fails while reading a tensor
        raise BaseMismatch(f"cannot read the weights of {folder}: {str(e)[:160]}") from None


def base_identity(folder: str | os.PathLike) -> BaseIdentity:
    folder = Path(folder)
    if not folder.is_dir():
        raise BaseMismatch(f"{folder} is not a folder")
    config = read_model_config(folder)
    sha, count = weights_fingerprint(folder)
    return BaseIdentity(config=config, weights_sha256=sha, tensors=count)


def check_same_base(candidate: str | os.PathLike, served: str | os.PathLike) -> None:
    """Return if `candidate` holds the same model as `served`; raise `BaseMismatch` saying what differs.

    The served folder is trusted; the candidate is not. The same folder (after resolving links)
    is accepted without reading weights."""
    cand, serv = Path(candidate), Path(served)
    if not cand.is_dir():
        raise BaseMismatch(f"{candidate} does not exist on this machine or is not a folder")
    if cand.resolve() == serv.resolve():
        return
    cand_cfg, serv_cfg = read_model_config(cand), read_model_config(serv)
    differing = sorted(k for k in cand_cfg.keys() | serv_cfg.keys() if cand_cfg.get(k) != serv_cfg.get(k))
    if differing:
        shown = ", ".join(f"{k} ({cand_cfg.get(k)!r:.40} vs {serv_cfg.get(k)!r:.40})" for k in differing[:5])
        raise BaseMismatch(f"its config.json differs from the served model's: {shown}")
    cand_sha, cand_n = weights_fingerprint(cand)
    serv_sha, serv_n = weights_fingerprint(serv)
    if (cand_sha, cand_n) != (serv_sha, serv_n):
        raise BaseMismatch(
            f"its weights differ from the served model's (fingerprint {cand_sha[:12]}… vs {serv_sha[:12]}…, "
            f"{cand_n} vs {serv_n} tensors): a fine-tuned or differently quantised model"
        )

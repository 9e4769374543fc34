"""Make valid PEFT LoRA folders with random weights, for tests and benchmarks.

The folder is byte-for-byte what PEFT's `save_pretrained` writes for a LoRA on a Llama-family
model: `adapter_config.json` (PEFT's LoraConfig fields) and `adapter_model.safetensors` with keys
`base_model.model.model.layers.{i}.{self_attn|mlp}.{module}.lora_{A|B}.weight` and metadata
`{"format": "pt"}`. tests/unit/test_adapters.py loads such folders with PEFT itself.

Unlike PEFT's default init (B = 0, a no-op adapter), both A and B are random so the adapter
really changes the model's outputs; `init_scale` sets their size (the delta is ~
scaling · init_scale² · sqrt(r · in) per unit input, small enough to keep generations sensible).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch

from inference.adapters import _PARENT, CONFIG_NAME, SUPPORTED_MODULES, WEIGHTS_NAME, base_linear_shapes

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


def peft_lora_config(
    base_model: str,
    rank: int,
    target_modules: Iterable[str],
    alpha: float | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """The adapter_config.json content PEFT 0.2x writes for a plain LoRA (inference mode)."""
    config: dict[str, Any] = {
        "alpha_pattern": {},
        "auto_mapping": None,
        "base_model_name_or_path": base_model,
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "init_lora_weights": True,
        "layer_replication": None,
        "layers_pattern": None,
        "layers_to_transform": None,
        "loftq_config": {},
        "lora_alpha": alpha if alpha is not None else 2 * rank,
        "lora_bias": False,
        "lora_dropout": 0.0,
        "megatron_config": None,
        "megatron_core": "megatron.core",
        "modules_to_save": None,
        "peft_type": "LORA",
        "r": rank,
        "rank_pattern": {},
        "revision": None,
        "target_modules": sorted(set(target_modules)),
        "task_type": "CAUSAL_LM",
        "use_dora": False,
        "use_rslora": False,
    }
    config.update(overrides)
    return config


def random_lora_tensors(
    base_config: Any,
    rank: int,
    target_modules: Iterable[str],
    *,
    seed: int = 0,
    init_scale: float = 0.02,
    dtype: torch.dtype = torch.float32,
    rank_pattern: Mapping[str, int] | None = None,
) -> dict[str, torch.Tensor]:
    """PEFT-keyed random LoRA tensors for every layer and target module. rank_pattern keys are
    leaf module names here (e.g. {"v_proj": 4})."""
    shapes = base_linear_shapes(base_config)
    cfg = getattr(base_config, "config", base_config)
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    targets = [m for m in SUPPORTED_MODULES if m in set(target_modules)]
    for layer in range(int(cfg.num_hidden_layers)):
        for module in targets:
            r = (rank_pattern or {}).get(module, rank)
            in_f, out_f = shapes[module]
            prefix = f"base_model.model.model.layers.{layer}.{_PARENT[module]}.{module}"
            out[f"{prefix}.lora_A.weight"] = (torch.randn(r, in_f, generator=gen) * init_scale).to(dtype)  # [r, in]
            out[f"{prefix}.lora_B.weight"] = (torch.randn(out_f, r, generator=gen) * init_scale).to(dtype)  # [out, r]
    return out


def make_random_adapter(
    folder: str | os.PathLike,
    base_model: Any,
    rank: int,
    target_modules: Iterable[str] = DEFAULT_TARGETS,
    alpha: float | None = None,
    seed: int = 0,
    init_scale: float = 0.02,
    *,
    base_model_id: str | None = None,
    dtype: torch.dtype = torch.float32,
    rank_pattern: Mapping[str, int] | None = None,
    alpha_pattern: Mapping[str, float] | None = None,
    use_rslora: bool = False,
) -> Path:
    """Write a random, valid PEFT LoRA folder and return its path.

    base_model: a `LoadedBaseModel`, a transformers model or its config (for the shapes).
    base_model_id: the name written as `base_model_name_or_path` (default: `base_model.model_id`
    when it has one, else the embedded model's hub id).
    """
    from safetensors.torch import save_file

    from inference.base_model import EMBEDDED_MODEL_ID

    model_or_config = getattr(base_model, "model", base_model)
    name = base_model_id or getattr(base_model, "model_id", None) or EMBEDDED_MODEL_ID
    targets = list(target_modules)
    tensors = random_lora_tensors(
        model_or_config, rank, targets, seed=seed, init_scale=init_scale, dtype=dtype, rank_pattern=rank_pattern
    )
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = peft_lora_config(
        name,
        rank,
        targets,
        alpha,
        rank_pattern=dict(rank_pattern or {}),
        alpha_pattern=dict(alpha_pattern or {}),
        use_rslora=use_rslora,
    )
    (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    save_file(tensors, str(folder / WEIGHTS_NAME), metadata={"format": "pt"})
    return folder

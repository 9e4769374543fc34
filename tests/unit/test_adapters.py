"""PEFT adapter folders: the factory writes what PEFT reads, validation refuses bad and hostile
input with a clear reason, loading folds the scaling into B. Uses the real embedded model's
config (no weights needed) and PEFT itself for the round trip."""

from __future__ import annotations

import copy
import json
import math
import os
import pickle
import struct
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from inference.adapter_factory import make_random_adapter, peft_lora_config, random_lora_tensors
from inference.adapters import CONFIG_NAME, WEIGHTS_NAME, load_adapter_weights, validate_adapter
from inference.base_model import EMBEDDED_MODEL_ID, resolve_model_folder
from inference.errors import AdapterValidationError, InferenceError

QKVO = ["q_proj", "k_proj", "v_proj", "o_proj"]


@pytest.fixture(scope="module")
def config():
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(str(resolve_model_folder(None)), local_files_only=True)


def validate(folder, config, **kw):
    kw.setdefault("max_rank", 64)
    return validate_adapter(folder, config, base_model_id=EMBEDDED_MODEL_ID, **kw)


def refused(folder, config, match, **kw):
    with pytest.raises(AdapterValidationError, match=match) as e:
        validate(folder, config, **kw)
    assert e.value.reason == str(e.value)
    assert isinstance(e.value, InferenceError)
    return e.value.reason


def write(folder, config_dict, tensors):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CONFIG_NAME).write_text(json.dumps(config_dict))
    save_file(tensors, str(folder / WEIGHTS_NAME), metadata={"format": "pt"})
    return folder


def small(tmp_path, config, name="a", rank=2, targets=("q_proj",), **cfg):
    """A valid small adapter (rank 2 on q_proj) whose config/tensors tests then spoil."""
    tensors = random_lora_tensors(config, rank, targets, seed=1)
    return write(tmp_path / name, peft_lora_config(EMBEDDED_MODEL_ID, rank, targets, **cfg), tensors), tensors


def test_factory_folder_is_what_peft_reads(base_model, tmp_path):
    from peft import LoraConfig, PeftModel
    from safetensors import safe_open

    folder = make_random_adapter(tmp_path / "ad", base_model, 4, ["q_proj", "down_proj"], alpha=12, seed=3)
    peft_cfg = LoraConfig.from_pretrained(str(folder))
    assert (peft_cfg.r, peft_cfg.lora_alpha, set(peft_cfg.target_modules)) == (4, 12, {"q_proj", "down_proj"})
    model = PeftModel.from_pretrained(copy.deepcopy(base_model.model), str(folder))
    layer = model.base_model.model.model.layers[7].mlp.down_proj
    with safe_open(str(folder / WEIGHTS_NAME), "pt") as f:
        assert f.metadata() == {"format": "pt"}
        a = f.get_tensor("base_model.model.model.layers.7.mlp.down_proj.lora_A.weight")
        b = f.get_tensor("base_model.model.model.layers.7.mlp.down_proj.lora_B.weight")
    assert torch.equal(layer.lora_A["default"].weight, a) and torch.equal(layer.lora_B["default"].weight, b)
    assert layer.scaling["default"] == 3.0
    assert b.abs().sum() > 0  # unlike PEFT's init, B is random: the adapter changes outputs


def test_valid_adapter_spec(config, tmp_path):
    folder = make_random_adapter(tmp_path / "ad", config, 8, QKVO, alpha=4, seed=0)
    spec = validate(folder, config)
    assert spec.rank == 8 and spec.alpha == 4 and spec.scaling == 0.5 and not spec.use_rslora
    assert spec.target_modules == tuple(QKVO)
    assert len(spec.modules) == config.num_hidden_layers * 4
    q = next(m for m in spec.modules if m.module == "k_proj")
    assert (q.rank, q.in_features, q.out_features) == (8, 576, 192)
    assert spec.base_model == EMBEDDED_MODEL_ID and spec.weights_bytes == (folder / WEIGHTS_NAME).stat().st_size
    assert spec.num_params == config.num_hidden_layers * 8 * (576 * 2 + 192 * 2 + 576 * 4)


def test_load_folds_scaling_and_casts(config, tmp_path):
    folder = make_random_adapter(tmp_path / "ad", config, 4, ["v_proj"], alpha=10, seed=0)
    spec = validate(folder, config)
    w = load_adapter_weights(folder, spec)
    raw = random_lora_tensors(config, 4, ["v_proj"], seed=0)
    pair = w.pairs[(5, "v_proj")]
    assert torch.equal(pair.a, raw["base_model.model.model.layers.5.self_attn.v_proj.lora_A.weight"])
    assert torch.allclose(pair.b, raw["base_model.model.model.layers.5.self_attn.v_proj.lora_B.weight"] * 2.5)
    half = load_adapter_weights(folder, spec, torch.bfloat16)
    assert half.pairs[(5, "v_proj")].a.dtype == torch.bfloat16 and half.nbytes * 2 == w.nbytes


def test_rslora_and_patterns(config, tmp_path):
    folder = make_random_adapter(tmp_path / "rs", config, 16, ["q_proj"], alpha=8, use_rslora=True)
    assert validate(folder, config).scaling == pytest.approx(8 / math.sqrt(16))
    folder = make_random_adapter(
        tmp_path / "pat", config, 8, ["q_proj", "v_proj"], alpha=16, rank_pattern={"v_proj": 4}, alpha_pattern={"v_proj": 2}
    )
    spec = validate(folder, config)
    v = next(m for m in spec.modules if m.module == "v_proj")
    q = next(m for m in spec.modules if m.module == "q_proj")
    assert (v.rank, v.scaling, q.rank, q.scaling) == (4, 0.5, 8, 2.0)


def test_rank_pattern_matches_peft(base_model, tmp_path):
    """Our per-module rank/alpha from the patterns is what PEFT applies."""
    from peft import PeftModel

    folder = make_random_adapter(
        tmp_path / "pat", base_model, 8, ["q_proj", "v_proj"], alpha=16, rank_pattern={"v_proj": 4}, alpha_pattern={"v_proj": 2}
    )
    spec = validate(folder, base_model.model.config)
    model = PeftModel.from_pretrained(copy.deepcopy(base_model.model), str(folder))
    v = model.base_model.model.model.layers[0].self_attn.v_proj
    ours = next(m for m in spec.modules if (m.layer, m.module) == (0, "v_proj"))
    assert (v.r["default"], v.scaling["default"]) == (ours.rank, ours.scaling)


def test_layers_to_transform(config, tmp_path):
    tensors = {k: v for k, v in random_lora_tensors(config, 2, ["q_proj"]).items() if ".layers.3." in k}
    folder = write(tmp_path / "l", peft_lora_config(EMBEDDED_MODEL_ID, 2, ["q_proj"], layers_to_transform=[3]), tensors)
    assert [m.layer for m in validate(folder, config).modules] == [3]
    tensors = random_lora_tensors(config, 2, ["q_proj"])
    folder = write(tmp_path / "l2", peft_lora_config(EMBEDDED_MODEL_ID, 2, ["q_proj"], layers_to_transform=[3]), tensors)
    refused(folder, config, "outside layers_to_transform")


# ---------------------------------------------------------------- refusals


def test_missing_folder_and_files(config, tmp_path):
    refused(tmp_path / "nope", config, "does not exist")
    (tmp_path / "empty").mkdir()
    refused(tmp_path / "empty", config, "missing adapter_config.json")
    folder, _ = small(tmp_path, config)
    (folder / WEIGHTS_NAME).unlink()
    refused(folder, config, "missing adapter_model.safetensors")


def test_pickle_weights_are_never_loaded(config, tmp_path):
    folder, _ = small(tmp_path, config)
    (folder / WEIGHTS_NAME).unlink()
    marker = tmp_path / "pwned"

    class Exploit:  # unpickling this would create the marker file
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (folder / "adapter_model.bin").write_bytes(pickle.dumps(Exploit()))
    reason = refused(folder, config, "pickle")
    assert "adapter_model.bin" in reason and "never loaded" in reason
    assert not marker.exists()


@pytest.mark.parametrize(
    "text, match",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "JSON object"),
        ("[" * 50_000 + "]" * 50_000, "not valid JSON"),  # nesting bomb: RecursionError inside the cap
        ("\xff\xfe", "not valid JSON"),
    ],
)
def test_bad_json(config, tmp_path, text, match):
    folder, _ = small(tmp_path, config)
    (folder / CONFIG_NAME).write_bytes(text.encode("latin-1"))
    refused(folder, config, match)


def test_oversized_config_is_not_parsed(config, tmp_path):
    folder, _ = small(tmp_path, config)
    bomb = {"peft_type": "LORA", "padding": "x" * 300_000}
    (folder / CONFIG_NAME).write_text(json.dumps(bomb))
    refused(folder, config, "above the 262144-byte limit")


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"peft_type": "PREFIX_TUNING"}, "only LORA"),
        ({"base_model_name_or_path": "meta-llama/Llama-3-8B"}, "base model mismatch"),
        ({"base_model_name_or_path": None}, "does not name its base model"),
        ({"base_model_name_or_path": "../../../etc/HuggingFaceTB/SmolLM2-135M-Instruct"}, r"'\.\.' path component"),
        ({"use_dora": True}, "DoRA"),
        ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
        ({"bias": "all"}, "bias"),
        ({"fan_in_fan_out": True}, "fan_in_fan_out"),
        ({"layer_replication": [[0, 4]]}, "layer_replication"),
        ({"r": 1_000_000_000}, "rank 1000000000 is above this node's maximum rank 64"),
        ({"r": 0}, "positive integer"),
        ({"r": "8"}, "positive integer"),
        ({"lora_alpha": float("nan")}, "finite"),
        ({"target_modules": ["lm_head"]}, "lm_head"),
        ({"target_modules": ["embed_tokens"]}, "embedding"),
        ({"target_modules": ["foo_proj"]}, "does not exist in the base model"),
        ({"target_modules": ".*q_proj"}, "not a plain module name"),
        ({"target_modules": []}, "empty"),
        ({"rank_pattern": {"(a+)+$": 2}}, "not a plain module name"),
        ({"alpha_pattern": {"q_proj": "big"}}, "finite number"),
        ({"layers_to_transform": "all"}, "layers_to_transform"),
    ],
)
def test_config_refusals(config, tmp_path, overrides, match):
    folder, tensors = small(tmp_path, config)
    cfg = peft_lora_config(EMBEDDED_MODEL_ID, 2, ["q_proj"])
    cfg.update(overrides)
    (folder / CONFIG_NAME).write_text(json.dumps(cfg))
    refused(folder, config, match)


def test_base_model_aliases(config, tmp_path):
    folder, _ = small(tmp_path, config, base_model_name_or_path="smollm2-135m-instruct")
    assert validate(folder, config).base_model == "smollm2-135m-instruct"
    folder, _ = small(tmp_path, config, name="b", base_model_name_or_path="my/local-copy")
    refused(folder, config, "mismatch")
    assert validate(folder, config, aliases=["my/local-copy"]).rank == 2


def test_targets_not_served_and_rank_limit(config, tmp_path):
    folder, _ = small(tmp_path, config, rank=8, targets=("q_proj", "gate_proj"))
    refused(folder, config, "not served by this node", allowed_targets=QKVO)
    refused(folder, config, "rank 8 is above this node's maximum rank 4", max_rank=4)


def spoil(folder, tensors, key_part, new):
    key = next(k for k in tensors if key_part in k)
    tensors = dict(tensors)
    if new is None:
        del tensors[key]
    else:
        tensors[key] = new
    save_file(tensors, str(folder / WEIGHTS_NAME), metadata={"format": "pt"})


def test_tensor_refusals(config, tmp_path):
    folder, t = small(tmp_path, config)
    a_key = "layers.4.self_attn.q_proj.lora_A"
    spoil(folder, t, a_key, torch.zeros(3, 576))
    refused(folder, config, r"lora_A has shape \[3, 576\], expected \[2, 576\]")
    spoil(folder, t, "layers.4.self_attn.q_proj.lora_B", torch.zeros(576, 3))
    refused(folder, config, "lora_B has shape")
    spoil(folder, t, a_key, torch.full((2, 576), float("nan")))
    refused(folder, config, "NaN or infinite")
    spoil(folder, t, a_key, torch.full((2, 576), float("inf")))
    refused(folder, config, "NaN or infinite")
    spoil(folder, t, a_key, torch.zeros(2, 576, dtype=torch.int32))
    refused(folder, config, "must be floating point")
    spoil(folder, t, "layers.4.self_attn.q_proj.lora_B", None)
    refused(folder, config, "lora_B weight is missing")
    extra = dict(t)
    extra["base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector"] = torch.ones(576)
    save_file(extra, str(folder / WEIGHTS_NAME))
    refused(folder, config, "DoRA")
    extra = dict(t)
    extra["base_model.model.lm_head.lora_A.weight"] = torch.ones(2, 576)
    save_file(extra, str(folder / WEIGHTS_NAME))
    refused(folder, config, "lm_head")
    extra = dict(t)
    extra["base_model.model.model.layers.0.self_attn.k_proj.lora_A.weight"] = torch.ones(2, 576)
    save_file(extra, str(folder / WEIGHTS_NAME))
    refused(folder, config, "not in target_modules")
    extra = dict(t)
    extra["base_model.model.model.layers.99.self_attn.q_proj.lora_A.weight"] = torch.ones(2, 576)
    save_file(extra, str(folder / WEIGHTS_NAME))
    refused(folder, config, "layer 99")
    extra = dict(t)
    extra["__evil__"] = torch.ones(1)
    save_file(extra, str(folder / WEIGHTS_NAME))
    refused(folder, config, "unexpected tensor")
    save_file({}, str(folder / WEIGHTS_NAME))
    refused(folder, config, "no tensors")


def test_truncated_and_garbage_safetensors(config, tmp_path):
    folder, _ = small(tmp_path, config)
    path = folder / WEIGHTS_NAME
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    refused(folder, config, "not a valid safetensors file")
    path.write_bytes(struct.pack("<Q", 1 << 40) + b"{}")  # header length far beyond the file
    refused(folder, config, "not a valid safetensors file")
    path.write_bytes(b"")
    refused(folder, config, "not a valid safetensors file")


def test_oversized_weights_and_symlinks(config, tmp_path):
    folder, _ = small(tmp_path, config)
    refused(folder, config, "above the 1000-byte limit", max_weights_bytes=1000)
    outside = tmp_path / "outside.safetensors"
    os.replace(folder / WEIGHTS_NAME, outside)
    os.symlink(outside, folder / WEIGHTS_NAME)
    refused(folder, config, "symbolic link")


def test_load_rechecks_the_file(config, tmp_path):
    folder, t = small(tmp_path, config)
    spec = validate(folder, config)
    spoil(folder, t, "layers.2.self_attn.q_proj.lora_A", torch.full((2, 576), float("nan")))
    with pytest.raises(AdapterValidationError, match="NaN"):
        load_adapter_weights(folder, spec)
    (folder / WEIGHTS_NAME).write_bytes(b"garbage")
    with pytest.raises(AdapterValidationError, match="could not be read"):
        load_adapter_weights(folder, spec)


def test_loaded_weights_survive_the_file_being_truncated(config, tmp_path):
    """safetensors may hand out mmap-backed tensors; cached weights must not crash the node
    (SIGBUS) when the disk cache later truncates or rewrites the file. In a subprocess, so a
    regression fails this test instead of killing the test run."""
    folder, _ = small(tmp_path, config)
    code = f"""
import sys, torch
from transformers import AutoConfig
from inference.adapters import load_adapter_weights, validate_adapter
cfg = AutoConfig.from_pretrained({str(resolve_model_folder(None))!r}, local_files_only=True)
spec = validate_adapter({str(folder)!r}, cfg, base_model_id={EMBEDDED_MODEL_ID!r}, max_rank=64)
w = load_adapter_weights({str(folder)!r}, spec)
before = sum(float(p.a.sum() + p.b.sum()) for p in w.pairs.values())
open({str(folder / WEIGHTS_NAME)!r}, "wb").close()
after = sum(float(p.a.sum() + p.b.sum()) for p in w.pairs.values())
sys.exit(0 if before == after else 3)
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=os.getcwd(), capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()[-500:]


@pytest.mark.parametrize(
    "text, depth",
    [
        ('{"a": [1, {"b": "[[[["}]}', 3),  # brackets inside strings do not count
        (r'["\\", ["x"]]', 2),  # an escaped backslash ends before the closing quote
        (r'["\"[[[", [1]]', 2),  # an escaped quote does not end the string
        ('"plain"', 0),
        ("[" * 40 + "]" * 40, 40),
    ],
)
def test_json_depth_is_measured_without_parsing(text, depth):
    from inference.adapters import _json_depth

    assert _json_depth(text) == depth


def test_config_nested_past_the_cap_is_refused_before_parsing(config, tmp_path):
    from inference.adapters import MAX_CONFIG_DEPTH

    folder = tmp_path / "deep"
    folder.mkdir()
    (folder / "adapter_config.json").write_text("[" * (MAX_CONFIG_DEPTH + 1) + "]" * (MAX_CONFIG_DEPTH + 1))
    with pytest.raises(AdapterValidationError, match="nested 33 levels deep"):
        validate_adapter(folder, config, base_model_id=EMBEDDED_MODEL_ID, max_rank=64)

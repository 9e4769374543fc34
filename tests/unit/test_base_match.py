"""inference.base_match: a local model folder is the served base by content (config + weights
fingerprint), never by name; hostile folders are refused with a reason, never read unbounded."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import save_file

from inference.base_match import BaseMismatch, base_identity, check_same_base

CONFIG = {
    "model_type": "llama",
    "hidden_size": 8,
    "num_hidden_layers": 2,
    "vocab_size": 16,
    "_name_or_path": "/somewhere/else",
    "torch_dtype": "float32",
    "transformers_version": "4.0",
}


def _model(folder, tensors: dict, config=CONFIG, shards=1):
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config))
    names = sorted(tensors)
    for i in range(shards):
        save_file({n: tensors[n] for n in names[i::shards]}, str(folder / f"model-{i}.safetensors"))
    return folder


@pytest.fixture
def weights():
    g = torch.Generator().manual_seed(0)
    return {"a.weight": torch.randn(8, 8, generator=g).half(), "b.weight": torch.randn(16, 8, generator=g).half()}


def test_same_weights_in_another_dtype_and_shard_layout_match(tmp_path, weights):
    served = _model(tmp_path / "served", {k: v.float() for k, v in weights.items()})
    copy = _model(tmp_path / "copy", weights, config={**CONFIG, "_name_or_path": "x", "torch_dtype": "float16"}, shards=2)
    check_same_base(copy, served)
    assert base_identity(copy).weights_sha256 == base_identity(served).weights_sha256
    check_same_base(served, served)  # the same folder: accepted without reading weights
    os.symlink(served, tmp_path / "link")
    check_same_base(tmp_path / "link", served)


def test_fine_tune_with_same_architecture_is_refused(tmp_path, weights):
    served = _model(tmp_path / "served", weights)
    tuned = dict(weights)
    tuned["b.weight"] = tuned["b.weight"].clone()
    tuned["b.weight"][3, 4] += 1
    with pytest.raises(BaseMismatch, match="weights differ"):
        check_same_base(_model(tmp_path / "tuned", tuned), served)
    fewer = {"a.weight": weights["a.weight"]}
    with pytest.raises(BaseMismatch, match="weights differ"):
        check_same_base(_model(tmp_path / "fewer", fewer), served)


def test_config_difference_is_named(tmp_path, weights):
    served = _model(tmp_path / "served", weights)
    other = _model(tmp_path / "other", weights, config={**CONFIG, "num_hidden_layers": 3})
    with pytest.raises(BaseMismatch, match="num_hidden_layers"):
        check_same_base(other, served)


def test_hostile_candidates_are_refused_with_a_reason(tmp_path, weights):
    served = _model(tmp_path / "served", weights)
    with pytest.raises(BaseMismatch, match="does not exist"):
        check_same_base(tmp_path / "nowhere", served)
    with pytest.raises(BaseMismatch, match="not a folder"):
        check_same_base("/dev/null", served)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(BaseMismatch, match="no config.json"):
        check_same_base(empty, served)
    fifo = tmp_path / "fifo"
    fifo.mkdir()
    os.mkfifo(fifo / "config.json")  # reading it would block forever
    with pytest.raises(BaseMismatch, match="not a regular file"):
        check_same_base(fifo, served)
    huge = tmp_path / "huge"
    huge.mkdir()
    with open(huge / "config.json", "wb") as f:
        f.truncate(8 << 20)
    with pytest.raises(BaseMismatch, match="larger than"):
        check_same_base(huge, served)
    bomb = tmp_path / "bomb"
    bomb.mkdir()
    (bomb / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(BaseMismatch, match="not valid JSON"):
        check_same_base(bomb, served)
    (bomb / "config.json").write_text("[1, 2]")
    with pytest.raises(BaseMismatch, match="not a JSON object"):
        check_same_base(bomb, served)
    garbage = _model(tmp_path / "garbage", weights)
    for f in garbage.glob("*.safetensors"):
        f.write_bytes(b"\xff" * 64)
    with pytest.raises(BaseMismatch, match="not a valid safetensors"):
        check_same_base(garbage, served)
    noweights = tmp_path / "noweights"
    noweights.mkdir()
    (noweights / "config.json").write_text(json.dumps(CONFIG))
    with pytest.raises(BaseMismatch, match="no \\*.safetensors"):
        check_same_base(noweights, served)
    dup = _model(tmp_path / "dup", weights)
    save_file({"a.weight": weights["a.weight"]}, str(dup / "model-9.safetensors"))
    with pytest.raises(BaseMismatch, match="two weight files"):
        check_same_base(dup, served)

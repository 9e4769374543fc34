"""LoRA training on CPU (`inference.training`): input validation, and a tiny real run whose output
the engine's own validator accepts, leaving the base model untouched."""

from __future__ import annotations

import json

import pytest
import torch

from inference.adapters import validate_adapter
from inference.base_model import EMBEDDED_MODEL_ID
from inference.training import TrainConfig, TrainingDataError, read_records, train_lora, validate_record


@pytest.mark.parametrize(
    "content,msg",
    [
        (b'{"prompt": "a"}\n', "either 'text' or both"),
        (b'[1, 2]\n', "expected a JSON object"),
        (b'{"text": ""}\n', "non-empty string"),
        (b'{"text": 5}\n', "non-empty string"),
        (b'{broken\n', "invalid JSON"),
        (b"\xff\xfe\x00", "not UTF-8"),
        (b"\n\n", "no training records"),
    ],
)
def test_bad_jsonl_is_refused_with_the_line(tmp_path, content, msg):
    p = tmp_path / "d.jsonl"
    p.write_bytes(content)
    with pytest.raises(TrainingDataError, match=msg):
        read_records(p)


def test_oversized_record_and_text_paragraphs(tmp_path):
    with pytest.raises(TrainingDataError, match="longer than"):
        validate_record({"text": "x" * 30_000}, "r")
    p = tmp_path / "d.txt"
    p.write_text("first paragraph\n\nsecond one\n")
    assert read_records(p) == [{"text": "first paragraph"}, {"text": "second one"}]
    with pytest.raises(TrainingDataError, match="cannot read"):
        read_records(tmp_path / "missing.jsonl")


def test_tiny_training_run_writes_a_valid_adapter_and_restores_the_base(base_model, tmp_path):
    model, tok = base_model.model, base_model.tokenizer
    ids = tok("The sky is", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        before = model(ids).logits
    records = [{"prompt": "What color is the sky?", "response": "Arr matey, blue!"}] * 4
    cfg = TrainConfig(rank=4, alpha=8, steps=2, batch_size=2, max_length=64, last_layers=2, learning_rate=1e-2)
    rep = train_lora(base_model, records, tmp_path / "out", cfg)
    assert rep.steps == 2 and all(map(lambda x: x == x, rep.losses))  # finite losses
    conf = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    assert conf["base_model_name_or_path"] == EMBEDDED_MODEL_ID  # not the local cache path
    n = model.config.num_hidden_layers
    assert conf["layers_to_transform"] == [n - 2, n - 1]
    spec = validate_adapter(tmp_path / "out", model.config, base_model_id=EMBEDDED_MODEL_ID, max_rank=64)
    assert spec.rank == 4
    # the shared base model is handed back without LoRA layers and with the same outputs
    assert not any("lora" in name for name, _ in model.named_modules())
    with torch.no_grad():
        assert torch.equal(model(ids).logits, before)


def test_training_refuses_empty_data_and_bad_layer_count(base_model, tmp_path):
    with pytest.raises(TrainingDataError):
        train_lora(base_model, [], tmp_path / "o")
    from inference.errors import InferenceError

    with pytest.raises(InferenceError, match="last_layers"):
        train_lora(base_model, [{"text": "hello there"}], tmp_path / "o", TrainConfig(last_layers=999, steps=1))

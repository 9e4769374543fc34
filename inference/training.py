"""Fine-tune a LoRA adapter with PEFT on a small text dataset, on CPU, against the base model.

Input records are either chat pairs ``{"prompt": ..., "response": ...}`` (trained through the
tokenizer's chat template, loss on the response only) or plain ``{"text": ...}`` (loss on all
tokens). The output is a PEFT folder (`adapter_config.json` + `adapter_model.safetensors`) whose
`base_model_name_or_path` is the base model id, ready for `loranode adapter publish`.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import torch

from inference.base_model import LoadedBaseModel
from inference.errors import InferenceError

MAX_RECORDS = 100_000
MAX_RECORD_CHARS = 20_000


class TrainingDataError(InferenceError):
    """The training data is malformed; the message names the line and the problem."""


@dataclass(frozen=True)
class TrainConfig:
    rank: int = 8
    """LoRA rank r."""
    alpha: int = 16
    """LoRA alpha (scaling = alpha / rank)."""
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    """Linear modules of the base model that get a LoRA delta."""
    steps: int = 60
    """Optimizer steps."""
    batch_size: int = 4
    """Examples per step."""
    learning_rate: float = 2e-3
    """AdamW learning rate (LoRA tolerates a high one)."""
    max_length: int = 96
    """Tokens per example after truncation."""
    seed: int = 0
    """Seed for data order and LoRA init: same data + seed = same adapter."""
    time_limit_s: float | None = None
    """Stop early after this many seconds (the adapter is still written)."""
    last_layers: int | None = None
    """Adapt only the last N decoder layers (None = all). Backward then stops at the first adapted
    layer, which makes CPU training several times cheaper."""


@dataclass
class TrainReport:
    steps: int
    seconds: float
    first_loss: float
    last_loss: float
    examples: int
    losses: list[float] = field(default_factory=list)


def read_records(path: Path) -> list[dict]:
    """Read JSONL (one object per line) or plain text (one `text` record per non-empty paragraph)."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise TrainingDataError(f"cannot read {path}: {e}") from e
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise TrainingDataError(f"{path}: not UTF-8 text (byte {e.start})") from e
    if path.suffix == ".jsonl":
        records = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise TrainingDataError(f"{path}:{n}: invalid JSON: {e.msg}") from e
            records.append(validate_record(obj, f"{path}:{n}"))
    else:
        records = [{"text": p.strip()} for p in text.split("\n\n") if p.strip()]
    if not records:
        raise TrainingDataError(f"{path}: no training records")
    if len(records) > MAX_RECORDS:
        raise TrainingDataError(f"{path}: {len(records)} records, more than the cap of {MAX_RECORDS}")
    return records


def validate_record(obj: object, where: str) -> dict:
    if not isinstance(obj, dict):
        raise TrainingDataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    fields: tuple[str, ...]
    if "text" in obj:
        fields = ("text",)
    elif "prompt" in obj and "response" in obj:
        fields = ("prompt", "response")
    else:
        raise TrainingDataError(f"{where}: need either 'text' or both 'prompt' and 'response'")
    for f in fields:
        v = obj[f]
        if not isinstance(v, str) or not v.strip():
            raise TrainingDataError(f"{where}: '{f}' must be a non-empty string")
        if len(v) > MAX_RECORD_CHARS:
            raise TrainingDataError(f"{where}: '{f}' is longer than {MAX_RECORD_CHARS} characters")
    return {f: obj[f] for f in fields}


def _encode(tokenizer, record: dict, max_length: int) -> tuple[list[int], list[int]]:
    """Token ids and labels (-100 where no loss is taken)."""
    if "text" in record:
        ids = tokenizer(record["text"], add_special_tokens=False)["input_ids"][:max_length]
        return ids, list(ids)
    prompt_ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": record["prompt"]}], add_generation_prompt=True, tokenize=True
    )
    if not isinstance(prompt_ids, list):  # transformers 5 may return a BatchEncoding
        prompt_ids = list(prompt_ids["input_ids"])
    end = tokenizer.eos_token or ""
    resp_ids = tokenizer(record["response"] + end, add_special_tokens=False)["input_ids"]
    ids = (prompt_ids + resp_ids)[:max_length]
    labels = ([-100] * len(prompt_ids) + resp_ids)[:max_length]
    return ids, labels


def _batches(examples: list, batch_size: int, rng: random.Random) -> Iterable[list]:
    while True:
        order = list(range(len(examples)))
        rng.shuffle(order)
        for i in range(0, len(order), batch_size):
            yield [examples[j] for j in order[i : i + batch_size]]


def train_lora(
    base: LoadedBaseModel,
    records: list[dict],
    out_dir: Path,
    config: TrainConfig = TrainConfig(),
    progress: Callable[[int, float], None] | None = None,
) -> TrainReport:
    """Train a LoRA on `records` and write a PEFT folder to `out_dir`. The base model is left
    unchanged (PEFT wraps it; the wrapper is unloaded afterwards)."""
    from peft import LoraConfig, get_peft_model

    if not records:
        raise TrainingDataError("no training records")
    records = [validate_record(r, f"record {i}") for i, r in enumerate(records)]
    tok = base.tokenizer
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    examples = [_encode(tok, r, config.max_length) for r in records]
    examples = [e for e in examples if any(label != -100 for label in e[1][1:])]
    if not examples:
        raise TrainingDataError("every record is empty after tokenisation and truncation")

    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    n_layers = base.model.config.num_hidden_layers
    if config.last_layers is not None and not 1 <= config.last_layers <= n_layers:
        raise InferenceError(f"last_layers must be between 1 and {n_layers}, got {config.last_layers}")
    layers = list(range(n_layers - config.last_layers, n_layers)) if config.last_layers else None
    lcfg = LoraConfig(
        r=config.rank,
        lora_alpha=config.alpha,
        target_modules=list(config.target_modules),
        lora_dropout=0.0,
        bias="none",
        task_type="CAUSAL_LM",
        base_model_name_or_path=base.model_id,
        layers_to_transform=layers,
    )
    model = get_peft_model(base.model, lcfg)
    # PEFT records the model's local folder as its base; publish the base model id instead, which
    # is what nodes check adapters against.
    model.peft_config["default"].base_model_name_or_path = base.model_id
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.learning_rate)
    losses: list[float] = []
    t0 = time.monotonic()
    try:
        batches = _batches(examples, config.batch_size, rng)  # endless: the step count ends the loop
        for step, batch in zip(range(config.steps), batches, strict=False):
            width = max(len(ids) for ids, _ in batch)
            # input_ids, labels, attention: [batch, width], right-padded
            input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            labels = torch.full((len(batch), width), -100, dtype=torch.long)
            attn = torch.zeros((len(batch), width), dtype=torch.long)
            for i, (ids, lab) in enumerate(batch):
                input_ids[i, : len(ids)] = torch.tensor(ids)
                labels[i, : len(lab)] = torch.tensor(lab)
                attn[i, : len(ids)] = 1
            out = model(input_ids=input_ids.to(base.device), attention_mask=attn.to(base.device), labels=labels.to(base.device))
            loss = out.loss
            if not math.isfinite(loss.item()):
                raise InferenceError(f"training diverged at step {step} (loss {loss.item()})")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
            if progress:
                progress(step + 1, losses[-1])
            if config.time_limit_s is not None and time.monotonic() - t0 > config.time_limit_s:
                break
        out_dir.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(str(out_dir), safe_serialization=True)
    finally:
        model.eval()
        model.unload()  # give the caller its base model back, without LoRA layers
    return TrainReport(
        steps=len(losses),
        seconds=time.monotonic() - t0,
        first_loss=losses[0],
        last_loss=losses[-1],
        examples=len(examples),
        losses=losses,
    )

"""The vLLM gateway's pure parts: config validation, the node's own token count against what a
vLLM server reports (honest, inflated, inconsistent, oversized), and routing. The real vLLM
server path is tests/integration/test_vllm_gateway.py."""

from __future__ import annotations

import pytest

from node.config import load_config
from node.errors import ConfigError
from node.gateway.upstream import AFFINITY_SLACK, Router, Upstream
from node.gateway.usage import meter


@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer

    from inference.base_model import resolve_model_folder

    return AutoTokenizer.from_pretrained(str(resolve_model_folder(None)), local_files_only=True)


# ---- config --------------------------------------------------------------------------------------


def test_vllm_backend_needs_urls_and_valid_ones():
    with pytest.raises(ConfigError, match="vllm_urls"):
        load_config(None, {}, dev_mode=True, engine_backend="vllm")
    cfg = load_config(
        None, {"LORANODE_VLLM_URLS": "http://127.0.0.1:8000/v1/, http://10.0.0.2:8000"}, dev_mode=True, engine_backend="vllm"
    )
    assert cfg.vllm_urls == ["http://127.0.0.1:8000", "http://10.0.0.2:8000"]  # /v1 is the node's to add
    for bad, why in [
        ("ftp://h:1", "http"),
        ("http://", "host"),
        ("http://u:p@h:1", "credentials"),
        ("http://h:1/?x=1", "query"),
        ("http://h:99999", "(?i)port"),
        ("h:8000", "http"),
    ]:
        with pytest.raises(ConfigError, match=why):
            load_config(None, {}, dev_mode=True, engine_backend="vllm", vllm_urls=[bad])
    with pytest.raises(ConfigError, match="twice"):
        load_config(None, {}, dev_mode=True, engine_backend="vllm", vllm_urls=["http://h:1", "http://h:1/"])
    with pytest.raises(ConfigError, match="engine_backend"):
        load_config(None, {}, dev_mode=True, engine_backend="tgi")


# ---- the node's count against vLLM's ------------------------------------------------------------


def _answer(tok, text="The capital of France is Paris."):
    ids = tok(text, add_special_tokens=False).input_ids
    return text, ids


def test_honest_usage_bills_sampled_tokens_with_eos(tok):
    text, ids = _answer(tok)
    eos = tok.eos_token_id
    prompt = [1, 2, 3]
    m = meter(tok, {eos}, prompt, text, ids + [eos], "stop", {"prompt_tokens": 3, "completion_tokens": len(ids) + 1}, 64)
    assert m.mismatches == []
    assert m.token_ids == ids and m.completion_tokens == len(ids) + 1 and m.prompt_tokens == 3


def test_inflated_usage_is_flagged_and_not_billed(tok):
    text, ids = _answer(tok)
    m = meter(tok, set(), [1, 2], text, ids, "length", {"prompt_tokens": 900, "completion_tokens": 500}, 64)
    assert m.completion_tokens == len(ids) and m.prompt_tokens == 2
    assert any("prompt_tokens" in p for p in m.mismatches) and any("completion_tokens" in p for p in m.mismatches)


def test_ids_that_do_not_spell_the_text_fall_back_to_the_nodes_tokenizer(tok):
    text, ids = _answer(tok)
    padded = ids * 5  # a server claiming five times the tokens for the same text
    m = meter(tok, set(), [1], text, padded, "length", {"prompt_tokens": 1, "completion_tokens": len(padded)}, 64)
    assert m.token_ids == ids and m.completion_tokens == len(ids)
    assert any("do not decode" in p for p in m.mismatches)
    for junk in ([-1], [len(tok) + 5], ["7"], [True], None):
        m = meter(tok, set(), [1], text, junk, "length", None, 64)
        assert m.token_ids == ids and any("no valid" in p for p in m.mismatches)


def test_never_more_than_max_tokens_billed(tok):
    text, ids = _answer(tok)
    m = meter(tok, set(), [1], text, ids, "length", {"prompt_tokens": 1, "completion_tokens": len(ids)}, 3)
    assert m.completion_tokens == 3 and len(m.token_ids) == 3
    assert any("max_tokens" in p for p in m.mismatches)


def test_stop_string_cut_text_keeps_the_sampled_ids(tok):
    # vLLM cuts the stop string from the text but the tokens that formed it were sampled (and cost)
    full, ids = _answer(tok, "Paris. END")
    m = meter(tok, set(), [1], "Paris.", ids, "stop", {"prompt_tokens": 1, "completion_tokens": len(ids)}, 64, stop=(" END",))
    assert m.mismatches == [] and m.completion_tokens == len(ids)
    # but tokens padded after the stop string, or a "stop" the request never asked for, are not billed
    padded = ids + tok(" more words", add_special_tokens=False).input_ids
    for extra, stop in ((padded, (" END",)), (ids, ())):
        m = meter(tok, set(), [1], "Paris.", extra, "stop", None, 64, stop=stop)
        assert any("do not decode" in p for p in m.mismatches)
        assert m.token_ids == tok("Paris.", add_special_tokens=False).input_ids


# ---- routing ---------------------------------------------------------------------------------------


def test_router_affinity_then_least_outstanding():
    a, b, c = Upstream("http://a", in_rotation=True), Upstream("http://b", in_rotation=True), Upstream("http://c")
    for s in (a, b, c):
        s.loaded = {"x", "y"}
    r = Router([a, b, c])
    first = r.pick("x")
    assert first in (a, b)
    first.outstanding = AFFINITY_SLACK  # busy but within the slack: stays affine
    assert r.pick("x") is first
    first.outstanding = AFFINITY_SLACK + 1  # beyond it: the least loaded takes over
    other = b if first is a else a
    assert r.pick("x") is other and r.pick("x") is other
    assert r.pick("x", exclude={other.url}) is first  # failover
    other.take_out("boom")
    assert other.loaded == set() and r.pick("x") is first
    assert r.pick("z") is None  # no server holds it
    first.in_rotation = False
    assert r.pick("x") is None and r.in_rotation() == 0

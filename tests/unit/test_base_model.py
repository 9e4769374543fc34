import pytest

from inference.base_model import (
    EMBEDDED_GGUF_NAME,
    BaseModelError,
    converted_gguf_dir,
    embedded_gguf_path,
    resolve_model_folder,
)


def test_embedded_gguf_found_by_path():
    p = embedded_gguf_path()
    assert p.name == EMBEDDED_GGUF_NAME and p.stat().st_size > 50_000_000


def test_embedded_model_answers_a_factual_question(base_model):
    tok, model = base_model.tokenizer, base_model.model
    enc = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    out = model.generate(**enc, max_new_tokens=24, do_sample=False)
    answer = tok.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer, answer


def test_conversion_is_cached(base_model):
    folder = converted_gguf_dir(embedded_gguf_path())
    assert (folder / "model.safetensors").is_file()
    assert (folder / "tokenizer.json").is_file()
    assert resolve_model_folder(None) == folder


def test_missing_and_non_safetensors_sources_refused(tmp_path):
    with pytest.raises(BaseModelError, match="not found"):
        resolve_model_folder(tmp_path / "nope")
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04pickle")
    with pytest.raises(BaseModelError, match="safetensors"):
        resolve_model_folder(tmp_path)


def test_corrupt_gguf_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("LORANODE_CACHE_DIR", str(tmp_path / "cache"))
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 100)
    with pytest.raises(BaseModelError, match="cannot read GGUF"):
        resolve_model_folder(bad)
    assert not any((tmp_path / "cache" / "models").glob("bad-*")), "nothing half-written in the cache"


def test_converted_checkpoint_has_standard_hf_layout(base_model):
    """Loaders other than ours (vLLM, llama.cpp's converter) read the tied embedding from
    `model.embed_tokens.weight` and re-tie `lm_head`; a file holding only `lm_head.weight` made
    vLLM generate token 0 forever. Checked against the names a fresh transformers model of the
    same config declares, and the stored embedding against the loaded model's output head."""
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = converted_gguf_dir(embedded_gguf_path())
    assert folder.name.endswith("-v2"), "layout version in the cache key: old caches are never reused"
    config = AutoConfig.from_pretrained(folder, local_files_only=True)
    assert config.tie_word_embeddings
    with safe_open(folder / "model.safetensors", "pt") as f:
        keys = set(f.keys())
        emb = f.get_tensor("model.embed_tokens.weight")
    fresh = AutoModelForCausalLM.from_config(config)
    expected = set(fresh.state_dict()) - {"lm_head.weight"}
    assert keys == expected
    assert emb.shape == (config.vocab_size, config.hidden_size)
    assert emb.equal(base_model.model.get_output_embeddings().weight.detach().cpu())

"""Packed adapter files (inference.packed): same slot contents as the PEFT path, never trusted.

A tiny real 3-layer `LlamaForCausalLM` and real PEFT folders (mixed ranks per module kind, a
layers_to_transform subset), real files on disk; attacks on the packed file (bit flips, NaN
rewrites, truncation, symlinks, hostile headers) must end in a rebuild or a clear error.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file

from inference.adapter_factory import make_random_adapter
from inference.adapters import WEIGHTS_NAME, AdapterValidationError, load_adapter_weights, validate_adapter
from inference.lora import inject_multi_lora
from inference.packed import PackedFileError, PackedStore, _from_buffer, read_packed

MODEL_ID = "tiny-llama"
ALL7 = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def tiny_model():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=64,
        max_position_embeddings=64,
    )
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("packed")
    model = tiny_model()
    out = {
        "big": make_random_adapter(root / "big", model, rank=8, target_modules=ALL7, seed=1, base_model_id=MODEL_ID),
        "mixed": make_random_adapter(
            root / "mixed",
            model,
            rank=4,
            target_modules=("q_proj", "v_proj", "down_proj"),
            seed=2,
            base_model_id=MODEL_ID,
            rank_pattern={"v_proj": 2},
        ),
    }
    # layers 0 and 2 only (layers_to_transform): layer 1 must hold zeros in the slot
    part = make_random_adapter(root / "part", model, rank=3, target_modules=("k_proj", "up_proj"), seed=3, base_model_id=MODEL_ID)
    tensors = {k: v for k, v in load_file(str(part / WEIGHTS_NAME)).items() if ".layers.1." not in k}
    save_file(tensors, str(part / WEIGHTS_NAME), metadata={"format": "pt"})
    cfg = json.loads((part / "adapter_config.json").read_text())
    cfg["layers_to_transform"] = [0, 2]
    (part / "adapter_config.json").write_text(json.dumps(cfg))
    out["part"] = part
    return out


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def spec_of(model, folder):
    return validate_adapter(folder, model.config, base_model_id=MODEL_ID, max_rank=8)


@pytest.fixture
def store(tmp_path):
    s = PackedStore(torch.float32, tmp_path / "packed")
    yield s
    s.close()


def stores_equal(bank_a, bank_b):
    for kind in bank_a.stores:
        for x, y in zip(bank_a.stores[kind], bank_b.stores[kind], strict=True):
            assert torch.equal(x, y), kind


def test_packed_slots_equal_the_peft_path(folders, store):
    """Every adapter shape, loaded over a larger-rank occupant and into an empty slot, fills the
    bank exactly as the per-tensor PEFT path does (ranks, zero tails, layers without weights)."""
    peft_bank = inject_multi_lora(tiny_model(), ALL7, num_slots=3, max_rank=8)
    packed_bank = inject_multi_lora(tiny_model(), ALL7, num_slots=3, max_rank=8)
    m = tiny_model()
    for name in ("big", "mixed", "part"):
        spec = spec_of(m, folders[name])
        store.register(folders[name], spec)
    order = [(0, "big"), (1, "mixed"), (0, "mixed"), (2, "part"), (1, "big"), (1, "part")]
    for slot, name in order:
        spec = spec_of(m, folders[name])
        peft_bank.load_slot(slot, load_adapter_weights(folders[name], spec))
        packed = store.load(folders[name], spec)
        assert packed.nbytes == sum(k.a.nbytes + k.bt.nbytes for k in packed.kinds.values())
        packed_bank.load_slot(slot, packed)
        stores_equal(peft_bank, packed_bank)
        assert peft_bank._slot_ranks == packed_bank._slot_ranks
    assert store.rebuilds == 0
    # a part adapter's missing layer really is zero, and the rank padding too
    k_a = packed_bank.stores["k_proj"][0]  # [L, S, R, in]
    assert not k_a[1, 1].any() and k_a[0, 1, :3].any() and not k_a[0, 1, 3:].any()
    packed_bank.clear_slot(1)
    peft_bank.clear_slot(1)
    stores_equal(peft_bank, packed_bank)


def test_register_writes_once_and_release_removes(folders, store, model):
    spec = spec_of(model, folders["big"])
    ref = store.register(folders["big"], spec)
    assert ref.path.parent == store.root and ref.path.stat().st_size == ref.size
    written = ref.path.stat().st_ctime_ns
    again = store.register(folders["big"], spec)  # the same unchanged content: the file is shared
    assert again == ref and ref.path.stat().st_ctime_ns == written
    assert list(store.root.glob("*.safetensors")) == [ref.path]
    store.release(folders["big"], spec)
    assert list(store.root.glob("*.safetensors")) == [ref.path]  # still one user
    store.release(folders["big"], spec)
    assert not list(store.root.glob("*.safetensors"))


def test_a_folder_changed_in_place_is_packed_again_on_registration(folders, store, model, tmp_path):
    """Sharing is by the weights file's identity: rewriting it in place (other weights, same
    shapes, so the same spec) makes the next registration pack the new content."""
    folder = tmp_path / "inplace"
    shutil.copytree(folders["big"], folder)
    spec = spec_of(model, folder)
    ref = store.register(folder, spec)
    weights = folder / WEIGHTS_NAME
    tensors = load_file(str(weights))
    save_file({k: v * 2 for k, v in tensors.items()}, str(weights), metadata={"format": "pt"})
    new = store.register(folder, spec)
    assert new.path != ref.path and not ref.path.exists()
    packed = store.load(folder, spec)
    reference = load_adapter_weights(folder, spec)
    for (layer, kind), pair in reference.pairs.items():
        assert torch.equal(packed.kinds[kind].bt[layer], pair.b.T)


def _file(store):
    (path,) = store.root.glob("*.safetensors")
    return path


@pytest.mark.parametrize("attack", ["flip", "nan", "truncate", "grow", "delete", "symlink", "swap"])
def test_a_tampered_packed_file_is_rebuilt_never_used(folders, store, model, caplog, attack):
    spec = spec_of(model, folders["big"])
    store.register(folders["big"], spec)
    path = _file(store)
    data = bytearray(path.read_bytes())
    if attack == "flip":
        data[-5] ^= 0x40
        path.write_bytes(data)
    elif attack == "nan":  # same size, valid safetensors, poisoned values
        tensors = load_file(str(path))
        tensors["q_proj.A"][0, 0, 0] = float("nan")
        save_file(tensors, str(path), metadata={"format": "loranode-packed-v1", "dtype": "F32"})
    elif attack == "truncate":
        os.truncate(path, len(data) // 2)
    elif attack == "grow":
        path.write_bytes(bytes(data) + b"\0" * 64)
    elif attack == "delete":
        path.unlink()
    elif attack == "symlink":  # same bytes behind a link: links are never followed
        copy = store.root.parent / "elsewhere.safetensors"
        copy.write_bytes(data)
        path.unlink()
        path.symlink_to(copy)
    elif attack == "swap":  # another adapter's valid packed file under this one's name
        other = PackedStore(torch.float32, store.root.parent / "other")
        other_ref = other.register(folders["mixed"], spec_of(model, folders["mixed"]))
        path.write_bytes(other_ref.path.read_bytes())
        other.close()
    with caplog.at_level(logging.WARNING, logger="inference.packed"):
        packed = store.load(folders["big"], spec)
    assert store.rebuilds == 1 and "rebuilt" in caplog.text
    reference = load_adapter_weights(folders["big"], spec)
    for (layer, kind), pair in reference.pairs.items():
        assert torch.equal(packed.kinds[kind].a[layer], pair.a)
        assert torch.equal(packed.kinds[kind].bt[layer], pair.b.T)
    assert store.load(folders["big"], spec) is not None and store.rebuilds == 1  # the rebuilt file verifies


def test_loaded_weights_survive_what_the_store_does_to_its_files(folders, store, model):
    """Loaded weights are copy-on-write views of the mapped file. The store never writes a file in
    place: it unlinks on release and writes a new file under a new name on a rebuild, and neither
    reaches a mapping already made. (An in-place rewrite or a truncation by another process of the
    node's user would: out of scope, see inference.packed.)"""
    spec = spec_of(model, folders["big"])
    ref = store.register(folders["big"], spec)
    packed, _, hashed = read_packed(ref, spec)
    assert hashed  # no identity given: the bytes are hashed
    before = {k: (v.a.clone(), v.bt.clone()) for k, v in packed.kinds.items()}
    for v in packed.kinds.values():
        v.a.add_(1.0)  # copy-on-write: a write to the tensors never reaches the file
    written = {k: v.a.clone() for k, v in packed.kinds.items()}
    again = store.load(folders["big"], spec)
    assert store.rebuilds == 0
    for k, v in again.kinds.items():
        assert torch.equal(v.a, before[k][0]) and torch.equal(v.bt, before[k][1])
    store.release(folders["big"], spec)  # the file is unlinked
    assert not ref.path.exists()
    ref2 = store.register(folders["big"], spec)  # a new file, under a new name
    assert ref2.path != ref.path
    for k, v in packed.kinds.items():
        assert torch.equal(v.a, written[k]) and torch.equal(v.bt, before[k][1])


def test_rebuild_rechecks_the_source_folder(folders, store, model, tmp_path):
    """A rebuild reads the PEFT folder again with its checks: a source poisoned since
    registration is refused, not packed."""
    import shutil

    folder = tmp_path / "src"
    shutil.copytree(folders["big"], folder)
    spec = spec_of(model, folder)
    ref = store.register(folder, spec)
    tensors = load_file(str(folder / WEIGHTS_NAME))
    key = next(iter(tensors))
    tensors[key][0, 0] = float("inf")
    save_file(tensors, str(folder / WEIGHTS_NAME), metadata={"format": "pt"})
    assert read_packed(ref, spec)[0] is not None  # the verified packed copy still serves
    ref.path.unlink()
    with pytest.raises(AdapterValidationError, match="NaN or infinite"):
        store.load(folder, spec)


def test_unregistered_content_is_packed_on_first_load(folders, store, model):
    spec = spec_of(model, folders["mixed"])
    packed = store.load(folders["mixed"], spec)
    assert store.rebuilds == 1 and set(packed.kinds) == {"q_proj", "v_proj", "down_proj"}
    assert packed.kinds["v_proj"].rank == 2 and packed.kinds["q_proj"].rank == 4


def _buffer(header: dict, payload: bytes = b"") -> torch.Tensor:
    raw = json.dumps(header).encode()
    data = struct.pack("<Q", len(raw)) + raw + payload
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


META = {"format": "loranode-packed-v1", "dtype": "F32"}


@pytest.mark.parametrize(
    "header,payload,match",
    [
        (None, b"\x01\x02", "too short"),
        ({"__metadata__": META}, None, "header length"),
        ({"__metadata__": {"format": "other", "dtype": "F32"}}, b"", "not a packed adapter"),
        ({"__metadata__": {**META, "dtype": "U8"}}, b"", "not a packed adapter"),
        (
            {"__metadata__": META, "q_proj.A": {"dtype": "F32", "shape": [1, 1, 4], "data_offsets": [0, 64]}},
            b"\0" * 16,
            "out of bounds",
        ),
        ({"__metadata__": META, "q_proj.A": {"dtype": "F32", "shape": [-1, 4], "data_offsets": [0, 16]}}, b"\0" * 16, "negative"),
        (
            {"__metadata__": META, "q_proj.A": {"dtype": "F32", "shape": [2, 4], "data_offsets": [0, 16]}},
            b"\0" * 16,
            "out of bounds",
        ),
        (
            {"__metadata__": META, "q_proj.A": {"dtype": "X9", "shape": [1], "data_offsets": [0, 4]}},
            b"\0" * 4,
            "bad header entry",
        ),
        ({"__metadata__": META, "q_proj.A": "nope"}, b"", "bad header entry"),
        ({"__metadata__": META}, b"", "lacks"),
    ],
)
def test_hostile_headers_are_refused(folders, model, header, payload, match):
    """The parser only ever sees bytes whose hash matched, but it is strict on its own too."""
    spec = spec_of(model, folders["mixed"])
    if header is None:
        buf = torch.frombuffer(bytearray(payload), dtype=torch.uint8)
    elif payload is None:  # a header length far beyond the file
        buf = torch.frombuffer(bytearray(struct.pack("<Q", 1 << 40) + b"{}"), dtype=torch.uint8)
    else:
        buf = _buffer(header, payload)
    with pytest.raises(PackedFileError, match=match):
        _from_buffer(buf, spec)


def test_shape_mismatch_with_spec_is_refused(folders, store, model):
    """A well-formed packed file of another adapter does not parse under this one's spec."""
    ref = store.register(folders["mixed"], spec_of(model, folders["mixed"]))
    with pytest.raises(PackedFileError):
        read_packed(ref, spec_of(model, folders["big"]))


def _flip_keeping_mtime(path):
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x40
    with open(path, "r+b") as f:  # same inode, same size, mtime put back: only the ctime tells
        f.write(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_verified_once_then_identity_checked_and_a_later_change_still_rebuilds(folders, store, model, monkeypatch):
    """The store wrote the file, so a file whose (device, inode, size, mtime, ctime) is unchanged
    since is read without hashing, from the first load on; so is it after a hashed load. Any change
    to it (even with its mtime put back) moves the ctime, so it is hashed, fails and is rebuilt."""
    import inference.packed as packed_mod

    monkeypatch.setattr(packed_mod, "CTIME_SETTLED_NS", 0)  # this kernel's ctimes are fine-grained
    spec = spec_of(model, folders["big"])
    store.register(folders["big"], spec)
    assert store.trust_identity
    first = store.load(folders["big"], spec)
    second = store.load(folders["big"], spec)
    assert store.hashed_loads == 0 and store.rebuilds == 0  # both identity-checked: unchanged since written
    for k in first.kinds:
        assert torch.equal(first.kinds[k].a, second.kinds[k].a) and torch.equal(first.kinds[k].bt, second.kinds[k].bt)
    _flip_keeping_mtime(_file(store))
    packed = store.load(folders["big"], spec)
    assert store.hashed_loads == 1 and store.rebuilds == 1  # the changed ctime: hashed, failed, rebuilt
    reference = load_adapter_weights(folders["big"], spec)
    for (layer, kind), pair in reference.pairs.items():
        assert torch.equal(packed.kinds[kind].bt[layer], pair.b.T)
    # the rebuilt file is our own write again: identity-checked; after a hashed load too
    store.load(folders["big"], spec)
    assert store.hashed_loads == 1


def test_a_file_changed_after_a_hashed_load_is_rebuilt(folders, store, model, monkeypatch):
    """After one hashed load (the write-time identity forgotten), a file whose identity is unchanged
    is read without hashing; a change afterwards moves the ctime, so it is hashed again and rebuilt."""
    import inference.packed as packed_mod

    monkeypatch.setattr(packed_mod, "CTIME_SETTLED_NS", 0)
    spec = spec_of(model, folders["big"])
    store.register(folders["big"], spec)
    store._verified.clear()  # as if written by another process: the first load must hash
    first = store.load(folders["big"], spec)
    second = store.load(folders["big"], spec)
    assert store.hashed_loads == 1 and store.rebuilds == 0
    for k in first.kinds:
        assert torch.equal(first.kinds[k].a, second.kinds[k].a) and torch.equal(first.kinds[k].bt, second.kinds[k].bt)
    _flip_keeping_mtime(_file(store))
    packed = store.load(folders["big"], spec)
    assert store.hashed_loads == 2 and store.rebuilds == 1
    reference = load_adapter_weights(folders["big"], spec)
    for (layer, kind), pair in reference.pairs.items():
        assert torch.equal(packed.kinds[kind].bt[layer], pair.b.T)


def test_identity_is_not_trusted_before_the_ctime_settled_or_in_a_shared_folder(folders, model, tmp_path):
    spec = spec_of(model, folders["big"])
    fresh = PackedStore(torch.float32, tmp_path / "fresh")
    try:
        fresh.register(folders["big"], spec)
        fresh.load(folders["big"], spec)
        fresh.load(folders["big"], spec)
        assert fresh.hashed_loads == 2  # written < 2 s ago: a change in the same timestamp tick could hide
    finally:
        fresh.close()
    shared_root = tmp_path / "shared"
    shared_root.mkdir()
    shared_root.chmod(0o777)
    shared = PackedStore(torch.float32, shared_root)
    try:
        assert not shared.trust_identity  # another user could rewrite files there: always hash
    finally:
        shared.close()

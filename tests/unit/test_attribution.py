"""Attribution over real tokenized text (the embedded SmolLM2 tokenizer), real on-disk caches."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from inference.attribution import (
    AttributionConfig,
    Attributor,
    ContributionTooLargeError,
    EmptyContributionError,
    IndexStore,
    NotUtf8Error,
    UnknownContributionError,
)


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from inference.base_model import resolve_model_folder

    return AutoTokenizer.from_pretrained(str(resolve_model_folder(None)), local_files_only=True)


@pytest.fixture(scope="module")
def words(tokenizer):
    """Real words the tokenizer knows, in a fixed shuffled order (Zipf ranks follow it)."""
    vocab = sorted(t[1:] for t in tokenizer.get_vocab() if t.startswith("Ġ") and t[1:].isalpha() and len(t) > 4)
    np.random.default_rng(7).shuffle(vocab)
    return vocab


def prose(words: list[str], n_words: int, seed: int) -> str:
    """Sentences of Zipf-distributed words: text with realistic repetition of common words."""
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, len(words) + 1) ** 1.1
    picks = rng.choice(len(words), n_words, p=p / p.sum())
    out, i = [], 0
    while i < n_words:
        n = int(rng.integers(6, 18))
        sent = [words[j] for j in picks[i : i + n]]
        out.append(" ".join(sent).capitalize() + ".")
        i += n
    return " ".join(out)


@pytest.fixture(scope="module")
def corpus(words):
    """Three contributions: ids 10, 11 in dataset 1, id 12 in dataset 2."""
    common = words[: len(words) // 2]  # contributions and answers share this vocabulary
    return {
        10: (1, "bafkcontribten", prose(common, 3000, 1)),
        11: (1, "bafkcontribeleven", prose(common, 3000, 2)),
        12: (2, "bafkcontribtwelve", prose(common, 3000, 3)),
    }


def make(tmp: Path, tokenizer, corpus, **cfg) -> Attributor:
    att = Attributor(IndexStore(tmp, tokenizer), AttributionConfig(**cfg))
    for cid, (ds, content_id, text) in corpus.items():
        att.add(cid, ds, content_id, text.encode())
    return att


def ids(tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False)


def planted_answer(words, corpus, source: int, seed: int) -> str:
    """Novel text around ~60 words copied verbatim from one contribution."""
    src = corpus[source][2].split(" ")
    start = 200 + 37 * seed
    novel = words[: len(words) // 2]
    return f"{prose(novel, 15, 100 + seed)} {' '.join(src[start : start + 60])} {prose(novel, 10, 200 + seed)}"


@pytest.mark.parametrize("source", [10, 11, 12])
def test_planted_span_gets_most_of_the_weight(tmp_path, tokenizer, words, corpus, source):
    att = make(tmp_path, tokenizer, corpus)
    answer = planted_answer(words, corpus, source, seed=source)
    res = att.attribute(ids(tokenizer, answer), tokenizer)
    assert sum(res.weights_bps.values()) == 10_000
    assert res.weights_bps.get(source, 0) >= 9_000, res.weights_bps
    assert sum(res.dataset_weights.values()) == 10_000
    assert res.dataset_weights[corpus[source][0]] >= 9_000
    longest = max(res.spans, key=lambda s: s.end - s.start)
    assert longest.contribution_id == source and longest.end - longest.start >= 40
    # The span's text really is in the source contribution (span text = decoded output tokens).
    assert longest.text.strip() in corpus[source][2]
    assert res.covered_tokens >= 40


def test_answer_without_overlap_attributes_nothing(tmp_path, tokenizer, words, corpus):
    att = make(tmp_path, tokenizer, corpus)
    unrelated = prose(words[len(words) // 2 :], 120, 99)  # a disjoint vocabulary
    res = att.attribute(ids(tokenizer, unrelated), tokenizer)
    assert res.empty and res.weights_bps == {} and res.spans == [] and res.dataset_weights == {}
    assert res.ids_and_weights() == ([], [])
    # Shorter than k, or no tokens at all: nothing either.
    assert att.attribute([]).empty
    assert att.attribute(ids(tokenizer, corpus[10][2])[:7]).empty


def test_span_shorter_than_k_does_not_count(tmp_path, tokenizer, words, corpus):
    src = ids(tokenizer, corpus[11][2])
    novel = ids(tokenizer, prose(words[len(words) // 2 :], 30, 5))
    answer = novel[:20] + src[500:506] + novel[20:]
    assert make(tmp_path, tokenizer, corpus, min_span_tokens=8).attribute(answer).empty
    assert make(tmp_path, tokenizer, corpus, min_span_tokens=4).attribute(answer).weights_bps == {11: 10_000}


def test_copy_from_two_contributions_splits_by_tokens(tmp_path, tokenizer, corpus):
    a = ids(tokenizer, corpus[10][2])[100:160]  # 60 tokens
    b = ids(tokenizer, corpus[12][2])[300:320]  # 20 tokens
    res = make(tmp_path, tokenizer, corpus).attribute(a + b)
    assert set(res.weights_bps) == {10, 12}
    assert 7_000 <= res.weights_bps[10] <= 8_000  # ~60 / 80 of the covered tokens
    assert res.dataset_weights == {1: res.weights_bps[10], 2: res.weights_bps[12]}
    ids_, bps = res.ids_and_weights()
    assert ids_ == [10, 12] and sum(bps) == 10_000


def test_spans_state_where_they_occur_in_the_contribution(tmp_path, tokenizer, corpus):
    """Each span's contributionStart is an offset into the contribution's tokens as the index (and
    an auditor, with inference.attribution.text.tokenize) tokenizes it, where the span's output
    tokens occur: also for a copy longer than max_span_tokens (a chain of capped matches)."""
    from inference.attribution.text import tokenize

    src = {cid: tokenize(tokenizer, text).tolist() for cid, (_, _, text) in corpus.items()}
    answer = src[10][100:160] + src[12][300:320] + src[11][500:800]  # 60, 20 and a 300-token copy
    res = make(tmp_path, tokenizer, corpus, max_span_tokens=64).attribute(answer, tokenizer)
    assert max(s.end - s.start for s in res.spans) > 64  # the chained copy is among them
    for s in res.spans:
        at = s.contribution_start
        assert at is not None and src[s.contribution_id][at : at + s.end - s.start] == answer[s.start : s.end]
        assert s.to_json()["contributionStart"] == at
    assert {(s.contribution_id, s.contribution_start) for s in res.spans if s.end - s.start >= 20} >= {
        (10, 100),
        (12, 300),
        (11, 500),
    }


def test_identical_contributions_split_evenly(tmp_path, tokenizer, corpus):
    att = make(tmp_path, tokenizer, corpus)
    att.add(20, 3, "bafkcopyoften", corpus[10][2].encode())  # same text, another contribution
    res = att.attribute(ids(tokenizer, corpus[10][2])[1000:1100])
    assert res.weights_bps == {10: 5_000, 20: 5_000}
    assert res.dataset_weights == {1: 5_000, 3: 5_000}


def test_same_answer_same_weights_across_restarts(tmp_path, tokenizer, words, corpus):
    answer = ids(tokenizer, planted_answer(words, corpus, 11, 3)) + ids(tokenizer, corpus[12][2])[40:70]
    first = make(tmp_path, tokenizer, corpus)
    assert first.store.stats.built == 3
    r1 = first.attribute(answer, tokenizer)
    # "Restart": new store and attributor on the same data dir load the verified cache files.
    second = make(tmp_path, tokenizer, corpus)
    assert (second.store.stats.loaded, second.store.stats.built, second.store.stats.rebuilt) == (3, 0, 0)
    r2 = second.attribute(answer, tokenizer)
    assert r1 == r2 and r1.to_json() == r2.to_json()
    assert r1.weights_bps  # a non-trivial result was compared
    # Adding in another order gives the same weights too.
    third = Attributor(IndexStore(tmp_path, tokenizer))
    for cid in sorted(corpus, reverse=True):
        ds, content, text = corpus[cid]
        third.add(cid, ds, content, text.encode())
    assert third.attribute(answer, tokenizer) == r1


def _cache_file(att: Attributor, content_id: str) -> Path:
    path = att.store.path_for(content_id)
    assert path.is_file() and path.parent == att.store.root
    return path


@pytest.mark.parametrize("damage", ["flip_data_byte", "truncate", "garbage", "other_contribution"])
def test_tampered_cache_file_is_detected_and_rebuilt(tmp_path, tokenizer, words, corpus, damage):
    answer = ids(tokenizer, planted_answer(words, corpus, 10, 1))
    clean = make(tmp_path, tokenizer, corpus)
    expected = clean.attribute(answer)
    path = _cache_file(clean, "bafkcontribten")
    raw = bytearray(path.read_bytes())
    if damage == "flip_data_byte":
        raw[-5] ^= 0x01  # inside the suffix array: the checksum must catch it
        path.write_bytes(bytes(raw))
    elif damage == "truncate":
        path.write_bytes(bytes(raw[: len(raw) // 2]))
    elif damage == "garbage":
        path.write_bytes(b"\xff" * 64)
    else:  # a valid index file, but of another contribution, put in this one's place
        path.write_bytes(_cache_file(clean, "bafkcontribeleven").read_bytes())
    again = make(tmp_path, tokenizer, corpus)
    assert (again.store.stats.rebuilt, again.store.stats.loaded) == (1, 2)
    assert again.attribute(answer) == expected
    # The rebuilt file replaced the bad one and verifies on the next start.
    third = make(tmp_path, tokenizer, corpus)
    assert third.store.stats.loaded == 3


def test_changed_content_under_same_cid_is_not_served_from_cache(tmp_path, tokenizer, corpus):
    att = make(tmp_path, tokenizer, corpus)
    other = Attributor(IndexStore(tmp_path, tokenizer))
    other.add(10, 1, "bafkcontribten", corpus[11][2].encode())  # bytes differ from the cached source
    assert other.store.stats.rebuilt == 1
    res = other.attribute(ids(tokenizer, corpus[11][2])[200:260])
    assert res.weights_bps == {10: 10_000}
    assert att.contribution_ids() == [10, 11, 12]


def test_rejected_contribution_is_dropped(tmp_path, tokenizer, words, corpus):
    att = make(tmp_path, tokenizer, corpus)
    answer = ids(tokenizer, planted_answer(words, corpus, 12, 2))
    assert att.attribute(answer).weights_bps.get(12, 0) >= 9_000
    att.remove(12)
    assert att.contribution_ids() == [10, 11]
    res = att.attribute(answer)
    assert 12 not in res.weights_bps and all(s.contribution_id != 12 for s in res.spans)
    with pytest.raises(UnknownContributionError):
        att.remove(12)


def test_bad_contributions_get_clear_errors(tmp_path, tokenizer):
    store = IndexStore(tmp_path, tokenizer, max_bytes=1000)
    att = Attributor(store)
    with pytest.raises(EmptyContributionError, match="bafkempty.*no text"):
        att.add(1, 1, "bafkempty", b"")
    with pytest.raises(EmptyContributionError):
        att.add(1, 1, "bafkblank", b" \n\t \n")
    with pytest.raises(NotUtf8Error, match="offset 6"):
        att.add(2, 1, "bafknotutf", b"hello \xff\xfe world")
    with pytest.raises(ContributionTooLargeError, match="cap of 1000"):
        att.add(3, 1, "bafkhuge", b"word " * 300)
    big = tmp_path / "big.txt"
    big.write_bytes(b"a" * 10_000_000)
    with pytest.raises(ContributionTooLargeError):
        att.add_file(3, 1, "bafkhugefile", big)
    with pytest.raises(ValueError, match="not a CID"):
        att.add(4, 1, "../../etc/passwd", b"some text here")
    with pytest.raises(ValueError):
        att.add(-1, 1, "bafkneg", b"some text here")
    assert att.contribution_ids() == [] and not any(store.root.glob("*.safetensors"))
    # Token cap: bytes under the byte cap but too many tokens.
    tight = Attributor(IndexStore(tmp_path, tokenizer, max_tokens=5))
    with pytest.raises(ContributionTooLargeError, match="tokens"):
        tight.add(5, 1, "bafktoomanytokens", b"one two three four five six seven eight")
    # A cache file built under a larger cap is not served past today's cap either.
    Attributor(IndexStore(tmp_path, tokenizer)).add(6, 1, "bafkcachedbig", b"one two three four five six seven eight")
    with pytest.raises(ContributionTooLargeError, match="tokens"):
        tight.add(6, 1, "bafkcachedbig", b"one two three four five six seven eight")


def test_bad_output_token_ids_are_refused(tmp_path, tokenizer, corpus):
    att = make(tmp_path, tokenizer, corpus, max_output_tokens=100)
    with pytest.raises(ValueError, match="max_output_tokens"):
        att.attribute(list(range(101)))
    with pytest.raises(ValueError, match="token ids"):
        att.attribute([1, -2, 3])
    with pytest.raises(ValueError):
        AttributionConfig(min_span_tokens=0)


def test_attribute_runs_in_threads_while_contributions_change(tmp_path, tokenizer, words, corpus):
    att = make(tmp_path, tokenizer, corpus)
    answer = ids(tokenizer, planted_answer(words, corpus, 10, 4))
    expected = att.attribute(answer)
    errors: list[BaseException] = []

    def worker():
        try:
            for _ in range(15):
                assert att.attribute(answer).weights_bps.get(10, 0) >= 9_000
        except BaseException as e:  # noqa: BLE001 - a thread's failure (assertion included) is surfaced below
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for _ in range(5):  # churn an unrelated contribution meanwhile
        att.add(30, 4, "bafkchurn", corpus[11][2].encode())
        att.remove(30)
    for t in threads:
        t.join()
    assert not errors
    assert att.attribute(answer) == expected


def test_index_costs_8_bytes_per_token(tmp_path, tokenizer, corpus):
    att = make(tmp_path, tokenizer, corpus)
    assert att.corpus_tokens > 5_000
    assert att.index_bytes == 8 * att.corpus_tokens


def test_weighted_contributions_and_spans_are_capped(tmp_path, tokenizer, corpus):
    att = Attributor(IndexStore(tmp_path, tokenizer), AttributionConfig(max_attributed=3, max_spans=2))
    text = corpus[11][2]
    for cid in (44, 41, 45, 42, 43):  # five identical contributions tie on every token
        att.add(cid, 1, f"bafksame{cid}", text.encode())
    answer = ids(tokenizer, text)[50:90]
    res = att.attribute(answer)
    assert res.weights_bps == {41: 3334, 42: 3333, 43: 3333}  # ties go to the smaller ids
    assert len(res.spans) == 2 and {s.contribution_id for s in res.spans} <= {41, 42, 43}
    assert all(s.text and s.text.strip() in text for s in res.spans)  # store's tokenizer decodes
    assert all(s.text is None for s in att.attribute(answer, with_text=False).spans)


def test_store_checks_content_against_its_cid(tmp_path, tokenizer, corpus):
    from inference.attribution import CidMismatchError
    from node.ipfs.importer import cid_of_bytes  # the node's real CID code, passed in as a hook

    store = IndexStore(tmp_path, tokenizer, verify_cid=lambda cid, data: cid_of_bytes(data) == cid)
    att = Attributor(store)
    text = corpus[10][2].encode()
    cid = cid_of_bytes(text)
    att.add(1, 1, cid, text)
    with pytest.raises(CidMismatchError, match="does not match its CID"):
        att.add(2, 1, cid, corpus[11][2].encode())  # other bytes under that CID
    # Even with a valid cache file for the CID on disk, wrong bytes are refused, not served.
    assert store.path_for(cid).is_file()
    with pytest.raises(CidMismatchError):
        Attributor(IndexStore(tmp_path, tokenizer, verify_cid=store.verify_cid)).add(1, 1, cid, text + b"!")
    assert att.contribution_ids() == [1]

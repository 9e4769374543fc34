"""Per-inference attribution: cost against generation, index size and build speed, planted-span
accuracy, and a peer without an index (a naive n-gram set scan over the corpus), in one run.

Corpus: >= 5 M tokens across >= 20 contributions of synthetic prose (Zipf-distributed real words
of the embedded tokenizer's vocabulary, in sentences), tokenized with the embedded SmolLM2
tokenizer and indexed through the real IndexStore/Attributor (cached on disk).

- overhead_vs_generation: attribution time / generation time for the same answers
  (8 answers x 64 new tokens from the embedded model, one batched HF generate, greedy, CPU;
  attribution runs the answers one by one on one thread). Target <= 0.05.
- index_bytes_per_token (target <= 8), build_tokens_per_s (suffix array only),
  ingest_tokens_per_s (tokenize + build + write cache), cache_load_tokens_per_s (verified reload).
- planted_precision / planted_recall: answers made of novel prose with spans copied from known
  contributions; per output token, credited = in a longest span of some contribution. Precision =
  credited tokens whose true source is credited / credited tokens; recall = planted tokens whose
  true source is credited / planted tokens.
- peer: per query, hash every k-gram of the whole corpus (vectorised numpy, no index) and look up
  the answer's k-grams: speedup_vs_naive_scan = its query time / ours.

Ends with one line `RESULT {json}`.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from inference.attribution import AttributionConfig, Attributor, IndexStore
from inference.attribution.suffix_array import build_suffix_array

PROMPTS = [
    "Explain how a suffix array works.",
    "Write a short story about a lighthouse keeper.",
    "What are the main causes of inflation?",
    "Give three tips for learning a new language.",
    "Describe the water cycle to a child.",
    "Why is the sky blue?",
    "Summarise the history of the printing press.",
    "How do vaccines train the immune system?",
]


def word_list(tokenizer) -> list[str]:
    words = sorted(t[1:] for t in tokenizer.get_vocab() if t.startswith("Ġ") and t[1:].isalpha() and len(t) > 3)
    np.random.default_rng(7).shuffle(words)
    return words


def prose(words: list[str], n_words: int, rng: np.random.Generator) -> str:
    p = 1.0 / np.arange(1, len(words) + 1) ** 1.1
    picks = rng.choice(len(words), n_words, p=p / p.sum())
    lens = rng.integers(6, 20, size=n_words // 6 + 1)
    out, i, j = [], 0, 0
    while i < n_words:
        sent = " ".join(words[w] for w in picks[i : i + lens[j]])
        out.append(sent[:1].upper() + sent[1:] + ".")
        i += lens[j]
        j += 1
    return " ".join(out)


def naive_scan(corpus: list[np.ndarray], query: np.ndarray, k: int) -> list[np.ndarray]:
    """Peer: per contribution, hash all k-grams (no index), mark the query's k-grams found.
    Returns per contribution a (m,) bool coverage mask."""
    mult = np.uint64(1_000_003)

    def kgram_hashes(a: np.ndarray) -> np.ndarray:
        a = a.astype(np.uint64)
        h = np.zeros(a.shape[0] - k + 1, dtype=np.uint64)
        for j in range(k):  # polynomial hash, wrapping uint64 arithmetic
            h = h * mult + a[j : a.shape[0] - k + 1 + j]
        return h

    m = query.shape[0]
    qh = kgram_hashes(query)
    out = []
    for toks in corpus:
        found = np.isin(qh, kgram_hashes(toks))
        cov = np.zeros(m, dtype=bool)
        for i in np.nonzero(found)[0]:
            cov[i : i + k] = True
        out.append(cov)
    return out


def credited_sets(att, m: int) -> list[set[int]]:
    """Per output token, the contributions credited for it (longest covering span wins)."""
    best = np.zeros(m, dtype=np.int64)
    for s in att.spans:
        best[s.start : s.end] = np.maximum(best[s.start : s.end], s.end - s.start)
    sets: list[set[int]] = [set() for _ in range(m)]
    for s in att.spans:
        for t in range(s.start, s.end):
            if s.end - s.start == best[t]:
                sets[t].add(s.contribution_id)
    return sets


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small corpus and few answers (smoke run)")
    ap.add_argument("--tokens", type=int, default=5_000_000)
    ap.add_argument("--contributions", type=int, default=20)
    ap.add_argument("--answers", type=int, default=8)
    ap.add_argument("--answer-tokens", type=int, default=64)
    ap.add_argument("--planted", type=int, default=40)
    ap.add_argument("--k", type=int, default=8)
    args = ap.parse_args()
    if args.quick:
        args.tokens, args.answers, args.answer_tokens, args.planted = 600_000, 3, 32, 12
    import torch

    from inference.base_model import load_base_model

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    base = load_base_model(device="cpu")
    tok = base.tokenizer
    print(f"model loaded in {time.perf_counter() - t0:.1f}s", flush=True)

    # --- corpus and index -------------------------------------------------------------------
    words = word_list(tok)
    per = args.tokens // args.contributions
    texts = [prose(words, int(per / 1.1), rng) for _ in range(args.contributions)]
    data_dir = Path(tempfile.mkdtemp(prefix="bench-attr-"))
    store = IndexStore(data_dir, tok, max_bytes=256 << 20, max_tokens=64 << 20)
    att = Attributor(store, AttributionConfig(min_span_tokens=args.k))
    t0 = time.perf_counter()
    for cid, text in enumerate(texts, start=1):
        att.add(cid, 1 + cid % 4, f"bafkbench{cid}", text.encode())
    att.prepare()
    ingest_s = time.perf_counter() - t0
    n_tok = att.corpus_tokens
    corpus = [att._members[c].index.tokens for c in sorted(att._members)]  # (n_c,) uint32 each
    t0 = time.perf_counter()
    for toks in corpus:
        build_suffix_array(toks)
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    reloaded = Attributor(IndexStore(data_dir, tok), AttributionConfig(min_span_tokens=args.k))
    for cid, text in enumerate(texts, start=1):
        reloaded.add(cid, 1 + cid % 4, f"bafkbench{cid}", text.encode())
    load_s = time.perf_counter() - t0
    assert reloaded.store.stats.loaded == args.contributions
    del reloaded
    print(
        f"corpus {n_tok} tokens in {args.contributions} contributions; SA build {build_s:.1f}s, "
        f"ingest {ingest_s:.1f}s, verified reload {load_s:.1f}s",
        flush=True,
    )

    # --- generation vs attribution on the same answers ----------------------------------------
    # One batched generate call (left padding), as the engine batches requests: a shorter
    # generation time than one-by-one, so the overhead ratio errs against attribution.
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    chats = [
        tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False)
        for p in (PROMPTS * 4)[: args.answers]
    ]
    enc = tok(chats, return_tensors="pt", padding=True, add_special_tokens=False)
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = base.model.generate(
            **enc,
            max_new_tokens=args.answer_tokens,
            min_new_tokens=args.answer_tokens,
            do_sample=False,
            pad_token_id=tok.pad_token_id,
        )  # (answers, prompt_len + answer_tokens)
    gen_s = time.perf_counter() - t0
    answers = [row[enc["input_ids"].shape[1] :].tolist() for row in out]
    att.attribute(answers[0])  # warm-up outside the timing (first call consolidates nothing new)
    t0 = time.perf_counter()
    for a in answers:
        att.attribute(a)
    attr_s = time.perf_counter() - t0
    print(f"generation {gen_s:.2f}s, attribution {attr_s * 1000:.1f}ms for {len(answers)} answers", flush=True)

    # --- planted spans ----------------------------------------------------------------------
    novel_words = words  # same vocabulary as the corpus: accidental overlaps are possible, as in life
    credited = correct = planted = recalled = 0
    source_bps: list[int] = []
    planted_queries = []
    for _ in range(args.planted):
        pieces, truth = [], []
        for _ in range(2):
            novel = tok.encode(prose(novel_words, 20, rng), add_special_tokens=False)[:20]
            src = int(rng.integers(1, args.contributions + 1))
            toks = corpus[src - 1]
            length = int(rng.integers(16, 49))
            start = int(rng.integers(0, toks.shape[0] - length))
            pieces += [novel, toks[start : start + length].tolist()]
            truth += [0] * len(novel) + [src] * length
        q = [t for p in pieces for t in p]
        planted_queries.append((q, truth))
        res = att.attribute(q)
        sets = credited_sets(res, len(q))
        for t, s in enumerate(sets):
            if s:
                credited += 1
                correct += truth[t] in s
            if truth[t]:
                planted += 1
                recalled += truth[t] in s
        srcs = {s for s in truth if s}
        source_bps.append(sum(res.weights_bps.get(s, 0) for s in srcs))
    precision = correct / credited if credited else 0.0
    recall = recalled / planted if planted else 0.0

    # --- peer: naive n-gram scan, same queries --------------------------------------------------
    # The peer costs seconds per query on 5 M tokens: a sample of 4 generated + 4 planted answers.
    n_ans = min(4, len(answers))
    peer_queries = answers[:n_ans] + [q for q, _ in planted_queries[:4]]
    t0 = time.perf_counter()
    for q in peer_queries:
        att.attribute(q)
    ours_q = (time.perf_counter() - t0) / len(peer_queries)
    t0 = time.perf_counter()
    peer_recalled = peer_planted = 0
    for j, q in enumerate(peer_queries):
        covs = naive_scan(corpus, np.asarray(q, dtype=np.int64), args.k)
        if j >= n_ans:
            truth = planted_queries[j - n_ans][1]
            for t, s in enumerate(truth):
                if s:
                    peer_planted += 1
                    peer_recalled += bool(covs[s - 1][t])
    peer_q = (time.perf_counter() - t0) / len(peer_queries)

    result = {
        "corpus_tokens": n_tok,
        "contributions": args.contributions,
        "k": args.k,
        "index_bytes_per_token": att.index_bytes / n_tok,
        "build_tokens_per_s": round(n_tok / build_s),
        "ingest_tokens_per_s": round(n_tok / ingest_s),
        "cache_load_tokens_per_s": round(n_tok / load_s),
        "answers": len(answers),
        "answer_tokens": args.answer_tokens,
        "generation_s": round(gen_s, 3),
        "attribution_s": round(attr_s, 4),
        "attribution_ms_per_answer": round(attr_s * 1000 / len(answers), 2),
        "overhead_vs_generation": round(attr_s / gen_s, 4),
        "planted_answers": args.planted,
        "planted_precision": round(precision, 4),
        "planted_recall": round(recall, 4),
        "planted_mean_source_bps": round(float(np.mean(source_bps)), 1),
        "ours_query_ms": round(ours_q * 1000, 2),
        "naive_scan_query_ms": round(peer_q * 1000, 2),
        "speedup_vs_naive_scan": round(peer_q / ours_q, 1),
        "naive_scan_planted_recall": round(peer_recalled / peer_planted, 4) if peer_planted else None,
        "quick": args.quick,
    }
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()

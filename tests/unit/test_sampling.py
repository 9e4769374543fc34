"""Batched sampling with per-row parameters (inference.sampling)."""

from __future__ import annotations

import math

import pytest
import torch

from inference.requests import SamplingParams
from inference.sampling import SamplingBatch, make_generator, sample_next


def _batch(params, seeds=None):
    gens = [
        make_generator(s, torch.device("cpu")) if p.temperature > 0 else None
        for p, s in zip(params, seeds or [0] * len(params), strict=True)
    ]
    return SamplingBatch.build(params, gens, torch.device("cpu"))


def test_greedy_rows_take_the_argmax():
    logits = torch.randn(5, 100, generator=torch.Generator().manual_seed(0))
    out = sample_next(logits, _batch([SamplingParams(temperature=0)] * 5))
    assert out.tolist() == logits.argmax(-1).tolist()


def test_top_k_1_and_tiny_top_p_are_greedy_even_when_hot():
    logits = torch.randn(6, 50, generator=torch.Generator().manual_seed(1))
    params = [SamplingParams(temperature=5.0, top_k=1)] * 3 + [SamplingParams(temperature=5.0, top_p=1e-6)] * 3
    for seed in range(5):
        out = sample_next(logits, _batch(params, [seed] * 6))
        assert out.tolist() == logits.argmax(-1).tolist()


def test_mixed_rows_keep_their_own_parameters():
    logits = torch.tensor([[0.0, 5.0, 1.0], [3.0, 0.0, 0.0], [0.0, 0.0, 9.0]])
    params = [SamplingParams(temperature=0), SamplingParams(temperature=1.0, top_k=1), SamplingParams(temperature=0)]
    assert sample_next(logits, _batch(params)).tolist() == [1, 0, 2]


def test_sampling_frequencies_follow_softmax_with_temperature():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    temp = 0.7
    expected = torch.softmax(logits[0] / temp, -1)
    gen = make_generator(42, torch.device("cpu"))
    p = SamplingParams(temperature=temp)
    n = 2000
    counts = torch.zeros(4)
    for _ in range(n):
        counts[int(sample_next(logits, SamplingBatch.build([p], [gen], torch.device("cpu")))[0])] += 1
    # within 5 standard deviations of the binomial count for every token
    for k in range(4):
        sd = math.sqrt(n * expected[k] * (1 - expected[k]))
        assert abs(counts[k] - n * expected[k]) < 5 * sd + 1, (counts, expected * n)


def test_top_k_and_top_p_never_sample_outside_the_kept_set():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0, -1.0]])
    probs = torch.softmax(logits[0], -1)
    gen = make_generator(3, torch.device("cpu"))
    seen_k, seen_p = set(), set()
    pk = SamplingParams(temperature=1.0, top_k=2)
    pp = SamplingParams(temperature=1.0, top_p=float(probs[:3].sum()) - 1e-4)  # keeps exactly 3 tokens
    for _ in range(400):
        seen_k.add(int(sample_next(logits, SamplingBatch.build([pk], [gen], torch.device("cpu")))[0]))
        seen_p.add(int(sample_next(logits, SamplingBatch.build([pp], [gen], torch.device("cpu")))[0]))
    assert seen_k == {0, 1}
    assert seen_p == {0, 1, 2}


def test_same_seed_same_draws_whatever_the_batch():
    logits = torch.randn(4, 1000, generator=torch.Generator().manual_seed(2))
    p = SamplingParams(temperature=1.3, top_p=0.9, top_k=100)
    g = make_generator(77, torch.device("cpu"))
    alone = []
    for _ in range(10):
        alone.append(int(sample_next(logits[:1], SamplingBatch.build([p], [g], torch.device("cpu")))[0]))
    g1, g2 = make_generator(77, torch.device("cpu")), make_generator(5, torch.device("cpu"))
    together = []
    for _ in range(10):
        b = SamplingBatch.build([p, SamplingParams(temperature=0.5)], [g1, g2], torch.device("cpu"))
        together.append(int(sample_next(logits[:2], b)[0]))
    assert together == alone
    assert len(set(alone)) > 1  # a hot distribution over 1000 tokens really samples


@pytest.mark.parametrize("bad", [float("inf"), -0.5, "1.0", None])
def test_bad_temperature_refused(bad):
    from inference.errors import InvalidRequest

    with pytest.raises(InvalidRequest, match="temperature"):
        SamplingParams(temperature=bad)


def test_unseeded_generators_differ():
    a = make_generator(None, torch.device("cpu"))
    b = make_generator(None, torch.device("cpu"))
    assert a.initial_seed() != b.initial_seed()

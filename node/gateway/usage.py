"""The node's own token count of an answer served by vLLM, cross-checked with vLLM's usage.

The node bills what it can verify itself: the prompt ids it rendered and sent (so vLLM runs
exactly the prompt the node counted), and the completion ids vLLM returned, accepted only when
they are token ids of this tokenizer that decode to the returned text (plus the stop string
vLLM cut off, when one ended the answer);
otherwise the returned text is re-encoded. vLLM's reported usage is compared with that count: a
difference is logged and counted (a misconfigured or misbehaving server), and never billed.
A server cannot bill more than the request's max_tokens either.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Metered:
    token_ids: list[int]  # the completion's ids without a final EOS (as the builtin engine's result)
    prompt_tokens: int
    completion_tokens: int  # every sampled token, a final EOS included (as the builtin engine bills)
    mismatches: list[str] = field(default_factory=list)


def _valid_ids(ids, vocab_size: int) -> bool:
    return isinstance(ids, list) and all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t < vocab_size for t in ids)


def _ids_spell(tokenizer, ids: list[int], text: str, finish_reason: str | None, stop: tuple[str, ...]) -> bool:
    """The ids decode to exactly the text, or (finish "stop") to the text followed by the stop
    string vLLM cut off, completed by the last token: no token may be padded beyond it."""
    decoded = tokenizer.decode(ids, skip_special_tokens=True)
    if decoded == text:
        return True
    if finish_reason != "stop" or not ids or not decoded.startswith(text):
        return False
    rest = decoded[len(text) :]
    before_last = len(tokenizer.decode(ids[:-1], skip_special_tokens=True))
    return any(rest.startswith(s) and before_last < len(text) + len(s) for s in stop)


def meter(
    tokenizer,
    eos_ids: set[int],
    prompt_ids: list[int],
    text: str,
    upstream_ids: list[int] | None,
    finish_reason: str | None,
    upstream_usage: dict | None,
    max_new_tokens: int,
    *,
    stop: tuple[str, ...] = (),
    check_usage: bool = True,
) -> Metered:
    """The billed counts of one completion (see the module docstring). check_usage=False: a
    request cut short (client gone) has no usage from vLLM to compare with."""
    problems: list[str] = []
    vocab = len(tokenizer)
    ids = upstream_ids
    if ids is None or not _valid_ids(ids, vocab):
        problems.append("vLLM returned no valid completion token ids")
        ids = None
    ends_on_eos = ids is not None and len(ids) > 0 and finish_reason == "stop" and ids[-1] in eos_ids
    body = ids[:-1] if ids is not None and ends_on_eos else ids
    if body is not None and not _ids_spell(tokenizer, body, text, finish_reason, stop):
        problems.append("vLLM's completion token ids do not decode to the returned text")
        body, ends_on_eos = None, False
    if body is None:  # fall back to this node's tokenization of the text the client receives
        body = list(tokenizer(text, add_special_tokens=False).input_ids)
    count = len(body) + int(ends_on_eos)
    if count > max_new_tokens:
        problems.append(f"vLLM returned {count} tokens for max_tokens={max_new_tokens}")
        body, count = body[:max_new_tokens], max_new_tokens
    if not check_usage:
        pass
    elif not isinstance(upstream_usage, dict):
        problems.append("vLLM reported no usage")
    else:
        if upstream_usage.get("prompt_tokens") != len(prompt_ids):
            problems.append(f"prompt_tokens: vLLM {upstream_usage.get('prompt_tokens')!r}, node {len(prompt_ids)}")
        if upstream_usage.get("completion_tokens") != count:
            problems.append(f"completion_tokens: vLLM {upstream_usage.get('completion_tokens')!r}, node {count}")
    return Metered(token_ids=body, prompt_tokens=len(prompt_ids), completion_tokens=count, mismatches=problems)

"""Incremental detokenization and stop strings for one generating request.

Decoding every step's full output would cost O(n) per token; instead each step decodes a short
window (the usual prefix/read offset scheme): the text of ids[prefix:read] and of ids[prefix:],
and releases the difference once it no longer ends in an incomplete UTF-8 sequence ("\ufffd").

Stop strings are matched on the decoded text. Text that could still become the start of a stop
string is held back from the stream until it is disambiguated, so a stop string never leaks
into streamed output; on a match the output is cut right before it.
"""

from __future__ import annotations


class IncrementalText:
    def __init__(self, tokenizer, stop: tuple[str, ...] = ()):
        self._tok = tokenizer
        self._ids: list[int] = []
        self._prefix = 0
        self._read = 0
        self.text = ""  # everything decoded so far (cut at a stop string once matched)
        self._released = 0  # chars of `text` already handed out
        self._stop = stop
        self._max_stop = max((len(s) for s in stop), default=0)
        self.stopped = False

    def _decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def add(self, token_id: int) -> str:
        """Append one token; return the text now safe to release (may be empty). Sets
        `stopped` when a stop string appeared (the text is then cut before it); later tokens
        are ignored."""
        if self.stopped:
            return ""
        self._ids.append(token_id)
        before = self._decode(self._ids[self._prefix : self._read])
        after = self._decode(self._ids[self._prefix :])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            start = len(self.text)
            self.text += after[len(before) :]
            self._prefix, self._read = self._read, len(self._ids)
            if self._stop:
                self._check_stop(start)
        return self._release(final=self.stopped)

    def flush(self) -> str:
        """At the end of generation: release everything still held back."""
        return self._release(final=True)

    def _check_stop(self, new_from: int) -> None:
        # a stop string may straddle the previous and the new text
        lo = max(0, new_from - self._max_stop + 1)
        hits = [i for i in (self.text.find(s, lo) for s in self._stop) if i >= 0]
        if hits:
            self.text = self.text[: min(hits)]
            self.stopped = True

    def _release(self, final: bool) -> str:
        end = len(self.text)
        if not final and self._stop:
            end -= self._held_back()
        end = max(end, self._released)
        out = self.text[self._released : end]
        self._released = end
        return out

    def _held_back(self) -> int:
        """Length of the longest tail of `text` that is a proper prefix of some stop string."""
        best = 0
        for s in self._stop:
            for k in range(min(len(s) - 1, len(self.text)), best, -1):
                if self.text.endswith(s[:k]):
                    best = k
                    break
        return best

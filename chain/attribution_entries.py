"""AttributionPool.settle's entry format: one uint256 word per (datasetId, contributionId, weight),
high bits first datasetId (32) | contributionId (96) | weight (128), and the hash BatchSettled logs
of them. Contribution 0 is a dataset's unattributed weight."""

from __future__ import annotations

from collections.abc import Iterable

from eth_utils import keccak

AttributionEntry = tuple[int, int, int]  # (datasetId, contributionId, weight)

_DATASET_BITS, _CONTRIBUTION_BITS, _WEIGHT_BITS = 32, 96, 128


class EntryOutOfRange(ValueError):
    """An entry field does not fit its bits in the packed word."""


def pack(entries: Iterable[AttributionEntry]) -> list[int]:
    """The packed words of `entries` (order kept; the contract checks order and non-zero weights)."""
    words = []
    for d, c, w in entries:
        if not (0 <= d < 2**_DATASET_BITS and 0 <= c < 2**_CONTRIBUTION_BITS and 0 <= w < 2**_WEIGHT_BITS):
            raise EntryOutOfRange(
                f"attribution entry {(d, c, w)} out of range: datasetId < 2^32, "
                "contributionId < 2^96 and weight < 2^128, none negative"
            )
        words.append(d << (_CONTRIBUTION_BITS + _WEIGHT_BITS) | c << _WEIGHT_BITS | w)
    return words


def unpack(word: int) -> AttributionEntry:
    """The (datasetId, contributionId, weight) of one packed word."""
    return (
        word >> (_CONTRIBUTION_BITS + _WEIGHT_BITS),
        (word >> _WEIGHT_BITS) & (2**_CONTRIBUTION_BITS - 1),
        word & (2**_WEIGHT_BITS - 1),
    )


def entries_hash(entries: Iterable[AttributionEntry]) -> bytes:
    """AttributionPool.entriesHash: keccak256 of the packed words, concatenated (BatchSettled's hash)."""
    return keccak(b"".join(word.to_bytes(32, "big") for word in pack(entries)))

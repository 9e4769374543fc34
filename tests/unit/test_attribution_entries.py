"""chain.attribution_entries: the packed settle word round-trips, sorts like its (dataset, contribution)
key, and refuses fields that do not fit."""

from __future__ import annotations

import pytest

from chain.attribution_entries import EntryOutOfRange, entries_hash, pack, unpack


def test_pack_round_trips_and_sorts_by_key():
    entries = [(1, 0, 5), (1, 7, 2**128 - 1), (2, 2**96 - 1, 1), (2**32 - 1, 3, 9)]
    words = pack(entries)
    assert [unpack(w) for w in words] == entries
    assert words == sorted(words)  # sorted entries are sorted words


@pytest.mark.parametrize("bad", [(2**32, 1, 1), (1, 2**96, 1), (1, 1, 2**128), (-1, 1, 1), (1, 1, -1)])
def test_fields_that_do_not_fit_are_refused(bad):
    with pytest.raises(EntryOutOfRange, match="out of range"):
        pack([bad])


def test_hash_is_of_the_concatenated_words():
    from eth_utils import keccak

    assert entries_hash([(1, 2, 3)]) == keccak(((1 << 224) | (2 << 128) | 3).to_bytes(32, "big"))
    assert entries_hash([]) == keccak(b"")

"""Per-inference data attribution: exact-match span indexes over contributions (infini-gram style).

- `IndexStore(data_dir, tokenizer)`: each contribution's suffix array index, built once and
  cached on disk by CID (verified on load, rebuilt if it does not verify).
- `Attributor(store, config)`: one per adapter; `add`/`remove` contributions, and
  `attribute(output_token_ids) -> Attribution(weights_bps, spans, dataset_weights)`.
  The weight formula is documented in `inference.attribution.weights`.
"""

from inference.attribution.attributor import Attribution, AttributionConfig, Attributor, Span
from inference.attribution.errors import (
    AttributionError,
    CidMismatchError,
    ContributionError,
    ContributionTooLargeError,
    EmptyContributionError,
    IndexCacheError,
    NotUtf8Error,
    UnknownContributionError,
)
from inference.attribution.index import ContributionIndex
from inference.attribution.store import IndexStore
from inference.attribution.suffix_array import build_suffix_array, matching_statistics

__all__ = [
    "Attribution",
    "AttributionConfig",
    "AttributionError",
    "CidMismatchError",
    "Attributor",
    "ContributionError",
    "ContributionIndex",
    "ContributionTooLargeError",
    "EmptyContributionError",
    "IndexCacheError",
    "IndexStore",
    "NotUtf8Error",
    "Span",
    "UnknownContributionError",
    "build_suffix_array",
    "matching_statistics",
]

"""IPFS content layer: Kubo-compatible CIDs, verified fetching, and three backends behind one
small async interface (`ContentBackend`: `add_path`, `fetch`, `pin`).

- `EmbeddedStore(root)`: blocks in a local folder (default for one machine and the demo).
- `KuboClient(url)`: Kubo's RPC API over aiohttp.
- `GatewayClient(urls)`: trustless HTTP gateways (CAR or raw blocks).

Content is untrusted whatever the source: every block is hashed against its CID, sizes are
capped, folder entries are checked, and only then does it enter the `ContentCache`
(`fetch_verified`).
"""

from node.ipfs.backend import ContentBackend
from node.ipfs.cache import ContentCache
from node.ipfs.cid import CID
from node.ipfs.errors import (
    AllBackendsFailed,
    BackendError,
    BlockHashMismatch,
    ContentNotFound,
    ContentTooLarge,
    IntegrityError,
    InvalidCID,
    IpfsError,
    KuboError,
    MalformedBlock,
    OperationNotSupported,
    TruncatedContent,
    UnsafeEntry,
    UnsupportedContent,
)
from node.ipfs.fetcher import default_cache_root, fetch_verified
from node.ipfs.gateway import GatewayClient
from node.ipfs.importer import cid_of_bytes, cid_of_path
from node.ipfs.kubo import DEFAULT_KUBO_URL, KuboClient
from node.ipfs.store import EmbeddedStore

__all__ = [
    "AllBackendsFailed",
    "BackendError",
    "BlockHashMismatch",
    "CID",
    "ContentBackend",
    "ContentCache",
    "ContentNotFound",
    "ContentTooLarge",
    "DEFAULT_KUBO_URL",
    "EmbeddedStore",
    "GatewayClient",
    "IntegrityError",
    "InvalidCID",
    "IpfsError",
    "KuboClient",
    "KuboError",
    "MalformedBlock",
    "OperationNotSupported",
    "TruncatedContent",
    "UnsafeEntry",
    "UnsupportedContent",
    "cid_of_bytes",
    "cid_of_path",
    "default_cache_root",
    "fetch_verified",
]

"""Contract ABIs and bytecode, read from Hardhat's artifacts/ (built by `make build`)."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from chain.errors import ArtifactError

REPO_ROOT = Path(__file__).resolve().parent.parent

# The protocol set, in deployment order (DemoToken first when no token is given).
PROTOCOL_CONTRACTS = (
    "DatasetRegistry",
    "AdapterRegistry",
    "NodeRegistry",
    "RewardVault",
    "UsageEscrow",
    "ReceiptLog",
    "AttributionPool",
)


def artifacts_dir() -> Path:
    return Path(os.environ.get("LORANODE_ARTIFACTS", REPO_ROOT / "artifacts"))


@dataclass(frozen=True)
class Artifact:
    name: str
    abi: tuple  # tuple of ABI entries (dicts); a tuple so the artifact is hashable/immutable
    bytecode: str

    @property
    def abi_list(self) -> list[dict]:
        return list(self.abi)

    @property
    def abi_hash(self) -> str:
        """sha256 of the canonical ABI JSON, recorded in deployments/ to detect stale bindings."""
        canon = json.dumps(self.abi_list, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canon.encode()).hexdigest()


@lru_cache(maxsize=None)
def load_artifact(name: str) -> Artifact:
    """Artifact of contract `name` (e.g. "UsageEscrow"), searched anywhere under artifacts/contracts."""
    root = artifacts_dir() / "contracts"
    matches = [p for p in root.rglob(f"{name}.json") if not p.name.endswith(".dbg.json")] if root.is_dir() else []
    if not matches:
        raise ArtifactError(f"no artifact for contract {name!r} under {root}: run `make build`")
    if len(matches) > 1:
        raise ArtifactError(f"ambiguous artifact {name!r}: {[str(m) for m in matches]}")
    try:
        data = json.loads(matches[0].read_text())
        return Artifact(name=data["contractName"], abi=tuple(data["abi"]), bytecode=data["bytecode"])
    except (OSError, ValueError, KeyError) as e:
        raise ArtifactError(f"unreadable artifact {matches[0]}: {e}") from e

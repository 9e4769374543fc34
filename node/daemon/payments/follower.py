"""Follow UsageEscrow's account and signer events from the chain head into the payment gate.

Deposited / ThawStarted / Withdrawn for this node drop the payer's cached availability, and
SignerAuthorized / SignerRevoked drop the cached authorization, so a thaw or a revocation takes
effect at the gate within one poll instead of a cache TTL. Deposits also wake parked settlement
lanes (`on_deposit`). It reads the unconfirmed head on purpose: an event a reorg removes only makes
the gate re-read the chain once more, which is always safe. What a reorg adds is not safe to miss:
a thaw mined into a replacement block at a height already read would never reach the gate, which
would go on serving the old balance from its cache. So each step checks that the last block it
read is still canonical (same height or more, same hash) and, if not, reads the last `reorg_depth`
blocks again; applying an event twice only drops a cache entry twice.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable

from eth_utils import to_checksum_address

from chain.artifacts import load_artifact
from chain.contract_types import Deposited, Event, SignerAuthorized, SignerRevoked, ThawStarted, Withdrawn
from chain.events import EventDecoder

log = logging.getLogger(__name__)

ACCOUNT_EVENTS = (Deposited, ThawStarted, Withdrawn)
SIGNER_EVENTS = (SignerAuthorized, SignerRevoked)
FOLLOWED = tuple(cls.__name__ for cls in (*ACCOUNT_EVENTS, *SIGNER_EVENTS))
MAX_WINDOW = 2_000  # blocks per eth_getLogs call
REORG_DEPTH = 64  # blocks read again after a reorg (deeper than any reorg a node should see)


class EscrowFollower:
    def __init__(
        self,
        w3,
        escrow_address: str,
        node: str,
        gate,
        *,
        start_block: int | None = None,
        on_deposit: Callable[[str], None] | None = None,
        poll_s: float = 1.0,
        reorg_depth: int = REORG_DEPTH,
    ) -> None:
        self.w3, self.gate, self.poll_s, self.on_deposit = w3, gate, poll_s, on_deposit
        self.escrow = to_checksum_address(escrow_address)
        self.node = to_checksum_address(node)
        self._decoder = EventDecoder({self.escrow: load_artifact("UsageEscrow").abi_list}, FOLLOWED)
        self.next_block = start_block
        self.reorg_depth = reorg_depth
        self._floor = start_block  # never read again below where the follower started
        self._last: tuple[int, bytes] | None = None  # (number, hash) of the last block read
        self.seen = 0  # events applied (metrics, tests)
        self.reorgs = 0  # reorgs detected (metrics, tests)

    def step(self) -> int:
        """Apply the events of the blocks since the last step; returns how many were applied."""
        head = int(self.w3.eth.block_number)
        if self.next_block is None:
            self.next_block = self._floor = head + 1  # the caches start empty: only later changes matter
            return 0
        if self._last is not None and not self._still_canonical(*self._last, head):
            self.reorgs += 1
            self.next_block = max(self._floor or 0, self._last[0] - self.reorg_depth + 1)
            self._last = None
            log.info("escrow follower: a reorg replaced blocks already read; reading from %d again", self.next_block)
        applied = 0
        while self.next_block <= head:
            to = min(head, self.next_block + MAX_WINDOW - 1)
            # the hash first: a reorg between the two reads then shows up at the next step
            to_hash = bytes(self.w3.eth.get_block(to)["hash"])
            logs = self.w3.eth.get_logs(
                {"address": self.escrow, "fromBlock": self.next_block, "toBlock": to, "topics": [self._decoder.topics()]}
            )
            for ev in self._decoder.decode_all(logs):
                applied += self._apply(ev)
            self.next_block = to + 1
            self._last = (to, to_hash)
        self.seen += applied
        return applied

    def _still_canonical(self, number: int, block_hash: bytes, head: int) -> bool:
        return head >= number and bytes(self.w3.eth.get_block(number)["hash"]) == block_hash

    def _apply(self, ev: Event) -> int:
        if isinstance(ev, SIGNER_EVENTS):
            self.gate.invalidate_signer(ev.payer, ev.signer)
            return 1
        if not isinstance(ev, ACCOUNT_EVENTS) or ev.node != self.node:
            return 0  # another node's account: nothing this gate relies on
        self.gate.invalidate(ev.payer)
        if isinstance(ev, Deposited) and self.on_deposit is not None:
            self.on_deposit(ev.payer)
        return 1

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await asyncio.to_thread(self.step)
            except Exception as e:  # noqa: BLE001 - an RPC hiccup must not stop the follower
                log.warning("escrow follower: %s", e)
            try:
                await asyncio.wait_for(stop.wait(), self.poll_s)
            except asyncio.TimeoutError:
                pass

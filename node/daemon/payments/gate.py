"""Payment gate: the voucher protocol (docs/ARCHITECTURE.md, "A paid request"), node side.

A request on lane (payer, node, adapter) must carry a voucher, signed by a key the payer
authorized in UsageEscrow, whose cumulative values cover everything the lane already owes and
exceed it by at most this request's worst-case cost (`owed <= value <= owed + max_cost`, each
component, and < 2^128): the current request is the only unpaid one (the loss cap), and an
over-valued voucher can neither poison the lane nor overcharge the payer. A voucher above what the
lane owes (a prepayment) is only kept once the request's receipt makes the lane owe it.

Availability: the payer's account earmarked for this node (balance - thawing), minus what this
node served but has not redeemed yet, minus the worst-case cost of every request of that payer in
flight on any of its lanes here (reserved at admission, released when the request ends). Requests
on one lane are serialized so two concurrent requests cannot both ride on the same voucher; lane
locks are dropped when idle, and chain reads for keys not in the caches are rate-limited, so
unauthenticated traffic cannot grow memory or RPC load without bound. `node.daemon.payments.follower.EscrowFollower`
invalidates the caches when Deposited/ThawStarted/Withdrawn/signer events arrive.

Event loop: recovering a voucher's signer (EIP-712 digest + secp256k1 recovery + EIP-55) costs
~85 µs of CPU, the gate's largest step per request. The vouchers of concurrent requests are
recovered together, one worker-thread hop per group (`node.db.group_commit.GroupCommitter`), before
any lane lock is taken; every check after it runs as before. Measured with
`benchmarks/profile_api_path.py` (`admit_256_*`: 256 concurrent admissions, caches warm, 2 shared
cores): the loop held ~130-155 µs per admission recovering inline, ~55 µs with one
`asyncio.to_thread` per voucher (and ~15% more wall time: the hop cost more than it saved), ~35 µs
batched, with the same wall time per admission as inline (~130-155 µs).

The voucher a request pays with is written before it is admitted (unless it is a prepayment); the
vouchers of concurrent admissions are written together, one transaction per group in a worker
thread (the same `GroupCommitter`, `Ledger.store_vouchers`), and each admission returns only once
its group committed. A group is taken in order, and a voucher is kept only if it dominates its
lane's voucher as the group left it. Measured with `benchmarks/profile_api_path.py`
(`admit_256_write_*`: 256 concurrent admissions whose vouchers are all written, 2 shared cores,
noisy): one `asyncio.to_thread` transaction per admission, as before, took ~1000-1240 µs wall and
~140-170 µs of loop CPU per admission (256 transactions); grouped, ~200-210 µs wall and ~50-55 µs
of loop CPU (8 transactions), against ~130 µs wall and ~40 µs loop CPU for admissions that write nothing.

In `operator-funded` mode clients present an API key instead and the operator signs the
cumulative voucher as payer after each request: the same protocol, one trusted payer.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence

from eth_utils import to_checksum_address

from chain.eip712 import SignedVoucher, Voucher, sign_voucher
from node.db.group_commit import GroupCommitter
from node.daemon.payments.errors import ChainUnavailable, InvalidApiKey, PaymentChecksThrottled, PaymentRejected
from node.metering import Cost, Price
from node.wire import VOUCHER_HEADER, MalformedVoucher, parse_voucher_header

log = logging.getLogger(__name__)

MAX_VALUE = 2**128 - 1  # UsageEscrow skips vouchers with a larger component
CHAIN_READS_PER_S = 50.0  # chain reads on cache misses (unauthenticated work), refilled per second
CHAIN_READ_BURST = 200
RECOVERY_GROUP = 32  # vouchers recovered per thread hop: the hop amortized, a group's wait stays ~3 ms
VOUCHER_WRITE_GROUP = 32  # vouchers written per transaction


# ---- value types --------------------------------------------------------------------------


@dataclass(frozen=True)
class Lane:
    payer: str
    node: str
    adapter_id: int


def lane_of(v: Voucher) -> Lane:
    return Lane(v.payer, v.node, v.adapter_id)


@dataclass
class LaneState:
    """What the node has served on a lane (owed) and the best voucher it holds for it."""

    owed_compute: int = 0
    owed_adapter: int = 0
    voucher: SignedVoucher | None = None


# ---- what the gate needs from the chain and from storage -----------------------------------


class EscrowReader(Protocol):
    """UsageEscrow reads (blocking web3 calls; the gate caches them and runs them off-loop)."""

    def is_authorized(self, payer: str, signer: str) -> bool: ...

    def available(self, payer: str, node: str) -> int:
        """Balance minus thawing of the payer's account earmarked for `node`."""
        ...

    def collected_many(self, lanes: Sequence[Lane]) -> list[tuple[int, int]]:
        """(compute, adapter) UsageEscrow has collected on each lane, read together (one round trip)."""
        ...


class LaneBook(Protocol):
    """Persistent lane ledger (the node's DB)."""

    def get(self, lane: Lane) -> LaneState: ...

    def lanes_of(self, payer: str, node: str) -> list[tuple[Lane, LaneState]]: ...

    def store_voucher(self, voucher: SignedVoucher) -> None: ...

    def store_vouchers(self, vouchers: Sequence[SignedVoucher]) -> Sequence[None | Exception]:
        """`store_voucher` for each, in order, in one transaction (blocking; a worker thread calls
        it); None or the exception per voucher, a bad one failing alone."""
        ...


class _TTLCache:
    """Chain reads by key, each fresh for `ttl_s`, with the read in flight per key: concurrent misses
    on one key share it (one RPC call, one rate-limit token). `drop` forgets the value and the read
    in flight, and a read that straddles a drop is not cached: nothing asked before an escrow event
    outlives it."""

    def __init__(self, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self._clock = clock
        self._d: dict = {}
        self._flights: dict = {}  # key -> asyncio.Task of the read in flight
        self.drops = 0  # bumped by every drop: a read started before it is not cached

    def get(self, key):
        hit = self._d.get(key)
        if hit and self._clock() - hit[0] < self.ttl_s:
            return hit[1]
        return None

    def stale(self, key):
        """The last value even if expired (used while the chain is unreachable)."""
        hit = self._d.get(key)
        return None if hit is None else hit[1]

    def put(self, key, value) -> None:
        if len(self._d) > 100_000:  # bounded: a flood of random payers must not grow memory forever
            self._d.clear()
        self._d[key] = (self._clock(), value)

    def drop(self, key) -> None:
        self._d.pop(key, None)
        self._flights.pop(key, None)
        self.drops += 1

    def flight(self, key) -> asyncio.Task | None:
        return self._flights.get(key)

    def fly(self, key, task: asyncio.Task) -> asyncio.Task:
        self._flights[key] = task

        def landed(t: asyncio.Task) -> None:
            if self._flights.get(key) is t:
                self._flights.pop(key)
            if not t.cancelled():
                t.exception()  # retrieved: every waiter may have gone

        task.add_done_callback(landed)
        return task


class _TokenBucket:
    """At most `rate` takes per second on average, `burst` at once."""

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.burst, self._clock = rate, burst, clock
        self._tokens, self._at = burst, clock()

    def take(self) -> bool:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True


# ---- parsing ---------------------------------------------------------------------------------


def _reject(message: str, code: str, **details) -> PaymentRejected:
    return PaymentRejected(message, code=code, details=details)


def _parse_voucher(raw: str) -> SignedVoucher:
    try:
        return parse_voucher_header(raw)
    except MalformedVoucher as e:
        raise _reject(str(e), "voucher_malformed") from e


# ---- the gate -------------------------------------------------------------------------------


@dataclass
class Authorization:
    """A request admitted on a lane; holds the lane lock and its reservation until `release()`
    (called after the request's receipt was recorded, or after it failed)."""

    lane: Lane
    price: Price
    voucher: SignedVoucher | None
    _on_release: Callable[[], None] | None = field(default=None, repr=False)

    def release(self) -> None:
        done, self._on_release = self._on_release, None
        if done is not None:
            done()


class PaymentGate:
    def __init__(
        self,
        *,
        node_address: str,
        mode: str,
        escrow: EscrowReader,
        book: LaneBook,
        chain_id: int,
        escrow_address: str,
        api_keys: Sequence[str] = (),
        operator_account=None,
        cache_ttl_s: float = 10.0,
        chain_reads_per_s: float = CHAIN_READS_PER_S,
        chain_read_burst: int = CHAIN_READ_BURST,
    ) -> None:
        if mode not in ("voucher", "operator-funded"):
            raise ValueError(f"unknown payment mode {mode!r}")
        if mode == "operator-funded" and operator_account is None:
            raise ValueError("operator-funded mode needs the operator account")
        self.node = to_checksum_address(node_address)
        self.mode = mode
        self.escrow = escrow
        self.book = book
        self.chain_id = chain_id
        self.escrow_address = to_checksum_address(escrow_address)
        self.operator = operator_account
        self._key_hashes = [hashlib.sha256(k.encode()).digest() for k in api_keys]
        self._auth_cache = _TTLCache(cache_ttl_s)
        self._balance_cache = _TTLCache(cache_ttl_s)
        self._locks: dict[Lane, asyncio.Lock] = {}
        self._lock_users: dict[Lane, int] = {}
        self._reserved: dict[str, int] = {}  # payer -> worst-case cost of its requests in flight here
        self._reads = _TokenBucket(chain_reads_per_s, chain_read_burst)
        self._recoveries: GroupCommitter[SignedVoucher, str] = GroupCommitter(self._recover_group, max_group=RECOVERY_GROUP)
        # the vouchers admitted together, written one transaction per group (in order, in a worker thread)
        self._voucher_writes: GroupCommitter[SignedVoucher, None] = GroupCommitter(
            lambda vouchers: self.book.store_vouchers(vouchers), max_group=VOUCHER_WRITE_GROUP
        )

    # -- chain reads, cached and off the event loop --
    async def _authorized(self, payer: str, signer: str) -> bool:
        if signer == payer:
            return True
        hit = self._auth_cache.get((payer, signer))
        if hit is None:
            hit = await self._read(self._auth_cache, (payer, signer), self.escrow.is_authorized, payer, signer)
        return hit

    async def _available(self, payer: str) -> int:
        """Escrow available to this node (balance - thawing) minus what this node served to the
        payer but has not redeemed yet, minus the payer's requests in flight here."""
        hit = self._balance_cache.get(payer)
        if hit is None:
            lanes = self.book.lanes_of(payer, self.node)

            def read() -> tuple[int, int]:
                avail = self.escrow.available(payer, self.node)
                # all lanes in one round trip (a payer streaming on 16 adapters read 16 in a row)
                collected = sum(c + a for c, a in self.escrow.collected_many([ln for ln, _ in lanes])) if lanes else 0
                return avail, collected

            hit = await self._read(self._balance_cache, payer, read)
        avail, collected = hit
        owed = sum(s.owed_compute + s.owed_adapter for _, s in self.book.lanes_of(payer, self.node))
        return avail - max(0, owed - collected) - self._reserved.get(payer, 0)

    async def _read(self, cache: _TTLCache, key, fn, *args):
        """A chain read, cached; while the RPC is down the last known value keeps serving going,
        and with none known the request gets a 503 (retry) instead of an error. Reads are
        rate-limited: a flood of fresh keys gets 503s instead of one RPC call each, and while the
        budget is spent a key with a last known value is served on it, as while the RPC is down
        (escrow events drop a value, so a flood cannot starve payers the node already knows);
        requests missing the same key together share one read (a payer streaming on many lanes)."""
        flight = cache.flight(key)
        if flight is None:
            if not self._reads.take():
                stale = cache.stale(key)
                if stale is not None:
                    return stale
                raise PaymentChecksThrottled("too many payment checks at once; retry shortly")
            flight = cache.fly(key, asyncio.ensure_future(self._read_once(cache, key, fn, *args)))
        return await asyncio.shield(flight)  # one waiter cancelled must not cancel the others' read

    @staticmethod
    async def _read_once(cache: _TTLCache, key, fn, *args):
        drops = cache.drops
        try:
            value = await asyncio.to_thread(fn, *args)
        except Exception as e:  # any provider failure
            stale = cache.stale(key)
            if stale is not None:
                log.warning("chain read failed (%s); using the last known value", type(e).__name__)
                return stale
            raise ChainUnavailable("cannot check the payment: the chain is unreachable; retry shortly") from e
        if cache.drops == drops:  # an invalidation meanwhile: this value may predate the event
            cache.put(key, value)
        return value

    def _recover_group(self, vouchers: Sequence[SignedVoucher]) -> list[str | Exception]:
        """Signers of a group of vouchers (worker thread); a bad signature fails alone."""
        out: list[str | Exception] = []
        for sv in vouchers:
            try:
                out.append(sv.signer(self.chain_id, self.escrow_address))
            except Exception as e:  # noqa: BLE001 - reported to that voucher's request
                out.append(e)
        return out

    def invalidate(self, payer: str | None = None) -> None:
        """Forget cached balances (after a redeem, a deposit, a thaw, a withdrawal, or on a reorg)."""
        if payer is None:
            self._balance_cache = _TTLCache(self._balance_cache.ttl_s)
        else:
            self._balance_cache.drop(to_checksum_address(payer))

    def invalidate_signer(self, payer: str, signer: str) -> None:
        """Forget a cached signer authorization (SignerAuthorized / SignerRevoked)."""
        self._auth_cache.drop((to_checksum_address(payer), to_checksum_address(signer)))

    async def _acquire(self, lane: Lane) -> asyncio.Lock:
        """The lane's lock, held; the entry is dropped when its last user releases it (no leak)."""
        lock = self._locks.get(lane)
        if lock is None:
            lock = self._locks[lane] = asyncio.Lock()
        self._lock_users[lane] = self._lock_users.get(lane, 0) + 1
        try:
            await lock.acquire()
        except BaseException:
            self._drop_user(lane)
            raise
        return lock

    def _drop_user(self, lane: Lane) -> None:
        n = self._lock_users.get(lane, 1) - 1
        if n <= 0:
            self._lock_users.pop(lane, None)
            self._locks.pop(lane, None)
        else:
            self._lock_users[lane] = n

    def _release_lane(self, lane: Lane, lock: asyncio.Lock) -> None:
        if lock.locked():
            lock.release()
        self._drop_user(lane)

    def _reserve(self, payer: str, amount: int) -> None:
        self._reserved[payer] = self._reserved.get(payer, 0) + amount

    def _unreserve(self, payer: str, amount: int) -> None:
        left = self._reserved.get(payer, 0) - amount
        if left > 0:
            self._reserved[payer] = left
        else:
            self._reserved.pop(payer, None)

    def lock_count(self) -> int:
        """Lane locks currently held or waited for (tests, metrics)."""
        return len(self._locks)

    def reserved(self, payer: str) -> int:
        """Worst-case cost of `payer`'s requests in flight on this node."""
        return self._reserved.get(to_checksum_address(payer), 0)

    # -- admission --
    async def admit(self, headers, adapter_id: int, price: Price, max_cost: Cost) -> Authorization:
        """Check the request's payment; raises PaymentRejected / InvalidApiKey with the reason and
        the amount needed, or PaymentCheckUnavailable when the chain cannot be read."""
        if self.mode == "operator-funded":
            return await self._admit_api_key(headers, adapter_id, price, max_cost)
        raw = headers.get(VOUCHER_HEADER)
        if not raw:
            raise _reject(
                f"payment required: send a signed voucher in the {VOUCHER_HEADER} header",
                "payment_missing",
                node=self.node,
                price_per_1k={"compute": str(price.compute_per_1k), "adapter": str(price.adapter_per_1k)},
                max_cost=str(max_cost.total),
            )
        sv = _parse_voucher(raw)
        v = sv.voucher
        if v.node != self.node:
            raise _reject(f"voucher is for node {v.node}, this node is {self.node}", "voucher_wrong_node")
        if v.adapter_id != adapter_id:
            raise _reject(
                f"voucher is for adapter {v.adapter_id}, the request is for adapter {adapter_id}", "voucher_wrong_adapter"
            )
        if adapter_id == 0 and v.adapter_value != 0:
            raise _reject("a base-model voucher (adapterId 0) must have adapterValue 0", "voucher_malformed")
        if v.compute_value > MAX_VALUE or v.adapter_value > MAX_VALUE:
            raise _reject("voucher values must be below 2^128", "voucher_overvalued")
        signer = await self._recover(sv)
        if not await self._authorized(v.payer, signer):
            raise _reject(
                f"voucher signer {signer} is not authorized by payer {v.payer} in UsageEscrow", "voucher_signer_unauthorized"
            )
        lane = lane_of(v)
        lock = await self._acquire(lane)
        try:
            state = self.book.get(lane)
            if v.compute_value < state.owed_compute or v.adapter_value < state.owed_adapter:
                raise _reject(
                    "voucher does not cover what this lane already owes (replayed or under-valued): "
                    f"needs computeValue >= {state.owed_compute} and adapterValue >= {state.owed_adapter}",
                    "voucher_undervalued",
                    needed={"computeValue": str(state.owed_compute), "adapterValue": str(state.owed_adapter)},
                )
            cap_c, cap_a = state.owed_compute + max_cost.compute, state.owed_adapter + max_cost.adapter
            if v.compute_value > cap_c or v.adapter_value > cap_a:
                raise _reject(
                    "voucher exceeds what this lane owes plus this request's worst-case cost: "
                    f"needs computeValue <= {cap_c} and adapterValue <= {cap_a}",
                    "voucher_overvalued",
                    allowed={"computeValue": str(cap_c), "adapterValue": str(cap_a)},
                )
            await self._check_escrow(v.payer, max_cost)
        except BaseException:
            self._release_lane(lane, lock)
            raise
        self._reserve(v.payer, max_cost.total)
        prepaid = v.compute_value > state.owed_compute or v.adapter_value > state.owed_adapter
        if not prepaid:
            try:
                # kept only if it dominates the lane's stored voucher; returns once its group committed
                await self._voucher_writes.submit(sv)
            except BaseException:
                self._unreserve(v.payer, max_cost.total)
                self._release_lane(lane, lock)
                raise

        def done() -> None:
            self._unreserve(v.payer, max_cost.total)
            if prepaid:  # a prepayment counts once the receipt makes the lane owe it, never above
                now = self.book.get(lane)
                if v.compute_value <= now.owed_compute and v.adapter_value <= now.owed_adapter:
                    self.book.store_voucher(sv)
            self._release_lane(lane, lock)

        return Authorization(lane=lane, price=price, voucher=sv, _on_release=done)

    async def accept_settle_up(self, headers) -> SignedVoucher:
        """A voucher sent without a request (`POST /v1/vouchers`): the payer pays the last request
        of a lane, which no later request's voucher would cover. It must cover exactly what the
        lane owes (more would be a client bug paying for nothing)."""
        raw = headers.get(VOUCHER_HEADER)
        if not raw:
            raise _reject(f"send the voucher in the {VOUCHER_HEADER} header", "payment_missing")
        sv = _parse_voucher(raw)
        v = sv.voucher
        if v.node != self.node:
            raise _reject(f"voucher is for node {v.node}, this node is {self.node}", "voucher_wrong_node")
        signer = await self._recover(sv)
        if not await self._authorized(v.payer, signer):
            raise _reject(
                f"voucher signer {signer} is not authorized by payer {v.payer} in UsageEscrow", "voucher_signer_unauthorized"
            )
        if v.compute_value > MAX_VALUE or v.adapter_value > MAX_VALUE:
            raise _reject("voucher values must be below 2^128", "voucher_overvalued")
        lane = lane_of(v)
        lock = await self._acquire(lane)
        try:
            state = self.book.get(lane)
            owed = {"computeValue": str(state.owed_compute), "adapterValue": str(state.owed_adapter)}
            if (v.compute_value, v.adapter_value) != (state.owed_compute, state.owed_adapter):
                code = (
                    "voucher_undervalued"
                    if v.compute_value < state.owed_compute or v.adapter_value < state.owed_adapter
                    else "voucher_overvalued"
                )
                raise _reject(f"a settle-up voucher must equal what the lane owes: {owed}", code, needed=owed)
            await self._voucher_writes.submit(sv)  # the commit off the event loop, in order with the admissions'
        finally:
            self._release_lane(lane, lock)
        return sv

    async def _recover(self, sv: SignedVoucher) -> str:
        """The voucher's signer, recovered in the recovery thread with the other requests' (see the
        module docstring); the caller holds no lane lock, so the wait orders nothing."""
        try:
            return await self._recoveries.submit(sv)
        except Exception as e:  # an unrecoverable signature is a forged one
            raise _reject("voucher signature does not recover to an address", "voucher_bad_signature") from e

    async def _check_escrow(self, payer: str, max_cost: Cost) -> None:
        available = await self._available(payer)
        if available < max_cost.total:
            raise _reject(
                f"escrow of payer {payer} cannot cover this request: available {max(available, 0)}, "
                f"needed up to {max_cost.total}; deposit more or lower max_tokens",
                "escrow_insufficient",
                needed=str(max_cost.total),
                available=str(max(available, 0)),
            )

    async def _admit_api_key(self, headers, adapter_id: int, price: Price, max_cost: Cost) -> Authorization:
        auth = headers.get("Authorization", "")
        token = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
        digest = hashlib.sha256(token.encode()).digest()
        if not token or not any(hmac.compare_digest(digest, h) for h in self._key_hashes):
            raise InvalidApiKey("missing or unknown API key (Authorization: Bearer <key>)")
        lane = Lane(to_checksum_address(self.operator.address), self.node, adapter_id)
        lock = await self._acquire(lane)
        try:
            await self._check_escrow(lane.payer, max_cost)
        except BaseException:
            self._release_lane(lane, lock)
            raise
        self._reserve(lane.payer, max_cost.total)

        def done() -> None:
            self._unreserve(lane.payer, max_cost.total)
            self._release_lane(lane, lock)

        return Authorization(lane=lane, price=price, voucher=None, _on_release=done)

    def operator_voucher(self, lane: Lane, owed_compute: int, owed_adapter: int) -> SignedVoucher:
        """operator-funded mode: the operator signs the lane's new cumulative total as payer."""
        v = Voucher(lane.payer, lane.node, lane.adapter_id, owed_compute, owed_adapter)
        return SignedVoucher(v, sign_voucher(v, self.operator, self.chain_id, self.escrow_address))

"""A crash-safe transaction outbox: intent → nonce → signed raw tx stored → broadcast → mined.

Why: the node must commit receipt batches and redeem vouchers exactly once even if it crashes
at any point. The rule that makes that work is "store before you send": the nonce and the exact
signed bytes are written to the store (one atomic write) before the first broadcast, so after a
restart the outbox rebroadcasts *the same bytes* — the chain can include them at most once — and
never signs a second transaction for a nonce it already handed out. A transaction that sits
unmined longer than `stuck_after` is replaced (same nonce, fees +12.5 % or more); every signed
version is kept, and whichever one is mined settles the intent.

One Outbox per sending account at a time (several processes driving the same account would
race for nonces). `process()` is a single, idempotent step; call it in a loop (`run_until_idle`).
A reorganisation deeper than `confirmations` can drop transactions of intents already marked
finished; the account's nonce on chain then falls below the nonces the outbox handed out, and every
later transaction would wait forever behind the gap. `process()` notices it (chain nonce <= the
highest stored one, with no open intent holding it) and rebroadcasts the stored bytes of the
dropped transactions, lowest nonce first: the chain includes each of them at most once, and the
caller's own reconciliation (e.g. settlement's batch roots) sees the outcome.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import rlp
from eth_abi import decode as abi_decode
from eth_account.signers.local import LocalAccount
from eth_typing import ChecksumAddress, Hash32
from eth_utils import is_hex_address, to_checksum_address
from hexbytes import HexBytes
from web3 import Web3
from web3.exceptions import ContractLogicError, TransactionNotFound, Web3RPCError
from web3.types import TxParams, Wei

from chain.outbox_store import (
    Attempt,
    InMemoryOutboxStore,
    Intent,
    IntentStatus,
    OutboxError,
    OutboxStore,
)
from chain.reverts import revert_data

__all__ = [
    "Attempt",
    "InMemoryOutboxStore",
    "Intent",
    "IntentStatus",
    "Outbox",
    "OutboxError",
    "OutboxStore",
    "ProcessReport",
    "decode_revert_data",
]

log = logging.getLogger(__name__)

MIN_BUMP = 1.125  # geth and most pools refuse a replacement below +10 %; 12.5 % is the safe side
MAX_KEY_LEN = 200
MAX_DATA_BYTES = 128 * 1024  # the geth pool's tx size limit
# params a caller may pass; nonce and fee fields are ignored (the outbox owns them), 'from' and
# 'chainId' are checked, anything else is refused.
_ALLOWED = {"to", "data", "value", "gas"}
_OWNED = {"nonce", "maxFeePerGas", "maxPriorityFeePerGas", "gasPrice", "type"}

ErrorDecoder = Callable[[bytes], "str | None"]


def decode_revert_data(data: bytes, custom: ErrorDecoder | None = None) -> str:
    """Human-readable revert reason: Error(string), Panic(uint256), a custom error, or raw hex."""
    if custom is not None and data:
        try:
            name = custom(data)
        except Exception:  # noqa: BLE001 - a decoder bug must not hide the revert itself
            name = None
        if name:
            return name
    if data[:4] == bytes.fromhex("08c379a0"):
        try:
            return f"Error({abi_decode(['string'], data[4:])[0]!r})"
        except Exception:  # noqa: BLE001 - malformed Error(string) data (eth_abi raises several types): fall back to hex
            pass
    if data[:4] == bytes.fromhex("4e487b71") and len(data) == 36:
        return f"Panic(0x{int.from_bytes(data[4:], 'big'):02x})"
    if not data:
        return "reverted without data"
    return f"custom error 0x{data[:4].hex()}" + (f" data 0x{data[4:].hex()}" if len(data) > 4 else "")


@dataclass
class ProcessReport:
    """What one `process()` step did (ids of intents)."""

    signed: list[int]
    broadcast: list[int]
    bumped: list[int]
    mined: list[int]
    failed: list[int]
    deferred: list[int]

    @property
    def idle(self) -> bool:
        return not (self.signed or self.broadcast or self.bumped or self.mined or self.failed)


class Outbox:
    """Send transactions for one account, exactly once each, surviving crashes and stuck fees."""

    def __init__(
        self,
        w3: Web3,
        account: LocalAccount,
        store: OutboxStore,
        chain_id: int | None = None,
        *,
        stuck_after: float = 60.0,
        bump_factor: float = MIN_BUMP,
        max_fee_cap: int | None = None,
        gas_margin: float = 1.2,
        confirmations: int = 0,
        error_decoder: ErrorDecoder | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if bump_factor < MIN_BUMP:
            raise OutboxError(f"bump_factor must be ≥ {MIN_BUMP} (pools refuse smaller replacements)")
        if not isinstance(account, LocalAccount):
            raise OutboxError("account must be an eth_account LocalAccount (it signs locally)")
        self.w3 = w3
        self.account = account
        self.store = store
        self.chain_id = int(chain_id if chain_id is not None else w3.eth.chain_id)
        if chain_id is not None and int(w3.eth.chain_id) != self.chain_id:
            raise OutboxError(f"RPC is chain {w3.eth.chain_id}, outbox configured for {chain_id}")
        self.stuck_after = stuck_after
        self.bump_factor = bump_factor
        self.max_fee_cap = max_fee_cap
        self.gas_margin = gas_margin
        self.confirmations = confirmations
        self.error_decoder = error_decoder
        self.clock = clock
        self._lock = threading.Lock()
        # After construction (a restart), every open signed intent is rebroadcast once.
        self._rebroadcast_due = True

    @property
    def sender(self) -> ChecksumAddress:
        return self.account.address

    # --- enqueue --------------------------------------------------------------------------------

    def enqueue(self, key: str, tx_params: Mapping[str, Any]) -> int:
        """Store an intent to send `tx_params` ({to, data, value?, gas?}); same key → same id, no-op."""
        if not isinstance(key, str) or not key or len(key) > MAX_KEY_LEN:
            raise OutboxError(f"key must be a non-empty string of at most {MAX_KEY_LEN} chars")
        existing = self.store.get_by_key(key)
        if existing is not None:
            return existing.id
        params = self._normalise(tx_params)
        intent_id, _ = self.store.add(key, self.sender, params, self.clock())
        return intent_id

    def _normalise(self, tx: Mapping[str, Any]) -> dict:
        if not isinstance(tx, Mapping):
            raise OutboxError("tx_params must be a mapping")
        unknown = set(tx) - _ALLOWED - _OWNED - {"from", "chainId"}
        if unknown:
            raise OutboxError(f"unsupported tx params: {sorted(unknown)}")
        if "from" in tx and (not isinstance(tx["from"], str) or tx["from"].lower() != self.sender.lower()):
            raise OutboxError(f"tx 'from' {tx['from']!r} is not the outbox account {self.sender}")
        if "chainId" in tx and tx["chainId"] != self.chain_id:
            raise OutboxError(f"tx chainId {tx['chainId']!r} is not {self.chain_id}")
        to = tx.get("to")
        if to is not None and (not isinstance(to, str) or not is_hex_address(to)):
            raise OutboxError(f"tx 'to' must be an address, got {to!r:.80}")
        data = tx.get("data", b"")
        if isinstance(data, str):
            try:
                data = HexBytes(data)
            except ValueError as e:
                raise OutboxError("tx 'data' is not hex") from e
        if not isinstance(data, (bytes, bytearray)):
            raise OutboxError("tx 'data' must be bytes or hex")
        if len(data) > MAX_DATA_BYTES:
            raise OutboxError(f"tx data is {len(data)} bytes, more than {MAX_DATA_BYTES}")
        value = tx.get("value", 0)
        gas = tx.get("gas")
        for name, v in (("value", value), ("gas", gas)):
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 0 or v >= 2**256):
                raise OutboxError(f"tx '{name}' must be a non-negative int")
        if to is None and not data:
            raise OutboxError("a contract creation needs data")
        return {
            "to": to_checksum_address(to) if to else None,
            "data": "0x" + bytes(data).hex(),
            "value": value,
            "gas": gas,
        }

    def get(self, intent_id: int) -> Intent:
        row = self.store.get(intent_id)
        if row is None:
            raise OutboxError(f"no intent {intent_id}")
        return row

    # --- the state machine ----------------------------------------------------------------------

    def process(self) -> ProcessReport:
        """One pass: settle mined txs, (re)broadcast, bump stuck ones, sign queued intents in order."""
        with self._lock:
            report = ProcessReport([], [], [], [], [], [])
            open_rows = self.store.open_intents(self.sender)
            rebroadcast_all, self._rebroadcast_due = self._rebroadcast_due, False
            self._replay_dropped(open_rows, report)
            for row in (r for r in open_rows if r.nonce is not None):
                self._advance_signed(row, rebroadcast_all, report)
            self._sign_queued([r for r in open_rows if r.status == IntentStatus.QUEUED], report)
            return report

    def run_until_idle(self, timeout: float = 60.0, poll: float = 0.1, ids: list[int] | None = None) -> list[Intent]:
        """Call process() until the given intents (default: all open ones) are mined or failed."""
        deadline = time.monotonic() + timeout
        while True:
            self.process()
            if ids is None:
                if not self.store.open_intents(self.sender):
                    return []
            else:
                rows = [self.get(i) for i in ids]
                if not any(r.status.is_open for r in rows):
                    return rows
            if time.monotonic() > deadline:
                raise TimeoutError("outbox intents still open after the timeout")
            time.sleep(poll)

    def _advance_signed(self, row: Intent, rebroadcast_all: bool, report: ProcessReport) -> None:
        if self._settle(row, report) is not None:
            return  # finished, or mined and waiting for confirmations: nothing to send
        if row.status == IntentStatus.SIGNED or rebroadcast_all or not self._known_to_node(row.attempts[-1].tx_hash):
            # never broadcast (crash between signing and sending), restarted, or dropped by the pool
            if self._broadcast(row, row.attempts[-1], report) is False:
                return
            row = self.get(row.id)
        if row.status == IntentStatus.SENT and row.sent_at is not None and self.clock() - row.sent_at >= self.stuck_after:
            self._bump(row, report)

    def _settle(self, row: Intent, report: ProcessReport) -> str | None:
        """Look for a receipt of any attempt and finish the intent if it is deep enough.

        Returns "final" (finished now), "shallow" (mined, fewer than `confirmations` blocks on
        top) or None (no attempt mined).
        """
        for att in reversed(row.attempts):
            try:
                rcpt = self.w3.eth.get_transaction_receipt(Hash32(att.tx_hash))
            except TransactionNotFound:
                continue
            if rcpt is None or rcpt.get("blockNumber") is None:
                continue
            if self.confirmations and self.w3.eth.block_number - rcpt["blockNumber"] < self.confirmations:
                return "shallow"  # mined but not yet deep enough; don't rebroadcast or bump either
            if rcpt["status"] == 1:
                self.store.finish(
                    row.id, IntentStatus.MINED, tx_hash=att.tx_hash, block_number=rcpt["blockNumber"], gas_used=rcpt["gasUsed"]
                )
                report.mined.append(row.id)
            else:
                reason = self._revert_reason(row, rcpt)
                self.store.finish(
                    row.id,
                    IntentStatus.FAILED,
                    tx_hash=att.tx_hash,
                    block_number=rcpt["blockNumber"],
                    gas_used=rcpt["gasUsed"],
                    error=reason,
                )
                report.failed.append(row.id)
                log.warning("outbox intent %s (%s) reverted: %s", row.id, row.key, reason)
            return "final"
        return None

    def _known_to_node(self, tx_hash: bytes) -> bool:
        try:
            return self.w3.eth.get_transaction(Hash32(tx_hash)) is not None
        except TransactionNotFound:
            return False

    def _broadcast(self, row: Intent, att: Attempt, report: ProcessReport) -> bool | None:
        """Send the stored bytes. True: accepted; None: transient error (retry later); False: finished."""
        try:
            self.w3.eth.send_raw_transaction(att.raw)
        except (Web3RPCError, ValueError) as e:
            msg = str(e).lower()
            if "already known" in msg or "already imported" in msg or "known transaction" in msg:
                pass  # the pool has exactly these bytes: as good as a successful send
            elif "nonce too low" in msg or "nonce is too low" in msg:
                # our nonce is used: by one of our attempts (then it has a receipt) or by a foreign tx
                if self._settle(self.get(row.id), report) is not None:
                    return False
                self.store.finish(
                    row.id, IntentStatus.FAILED, error=f"nonce {row.nonce} was consumed by a transaction not from this outbox"
                )
                report.failed.append(row.id)
                return False
            else:
                # underpriced replacement, insufficient funds, RPC down...: keep the bytes, retry later
                self.store.note_error(row.id, f"broadcast: {e}"[:500])
                log.warning("outbox intent %s broadcast failed: %s", row.id, e)
                return None
        except OSError as e:  # connection refused / reset: the RPC is down
            self.store.note_error(row.id, f"broadcast: {e}"[:500])
            return None
        self.store.mark_sent(row.id, self.clock())
        report.broadcast.append(row.id)
        return True

    def _bump(self, row: Intent, report: ProcessReport) -> None:
        if row.nonce is None:
            raise OutboxError(f"intent {row.id} is {row.status.value} without a nonce: nothing to replace")
        last = row.attempts[-1]
        base_fee, market_tip = self._market()
        tip = max(math.ceil(last.max_priority_fee_per_gas * self.bump_factor), market_tip)
        max_fee = max(math.ceil(last.max_fee_per_gas * self.bump_factor), 2 * base_fee + tip)
        if self.max_fee_cap is not None and max_fee > self.max_fee_cap:
            self.store.note_error(row.id, f"stuck; fee bump to {max_fee} would pass the cap {self.max_fee_cap}")
            return
        att = self._sign(row, row.nonce, max_fee, tip, self._gas_for(row))
        self.store.record_signed(row.id, row.nonce, att)
        report.bumped.append(row.id)
        log.info("outbox intent %s stuck; replaced with fees %s/%s", row.id, max_fee, tip)
        self._broadcast(self.get(row.id), att, report)

    def _sign_queued(self, queued: list[Intent], report: ProcessReport) -> None:
        # FIFO: a later intent may depend on an earlier one (batch seq n+1 after n), so stop at the
        # first one that cannot be signed yet.
        for row in queued:
            gas = row.params.get("gas")
            if gas is None:
                try:
                    gas = self._estimate(row)
                except ContractLogicError as e:
                    reason = decode_revert_data(revert_data(e.data) or b"", self.error_decoder)
                    if self._has_unmined_predecessor(row):
                        # may only revert because an earlier tx of ours isn't mined yet
                        self.store.note_error(row.id, f"estimate reverts (waiting for earlier txs): {reason}")
                        report.deferred.append(row.id)
                        return
                    # refused before signing: no nonce used
                    self.store.finish(row.id, IntentStatus.FAILED, error=reason)
                    report.failed.append(row.id)
                    log.warning("outbox intent %s (%s) would revert: %s", row.id, row.key, reason)
                    continue
                except (Web3RPCError, OSError, ValueError) as e:
                    self.store.note_error(row.id, f"estimate: {e}"[:500])
                    report.deferred.append(row.id)
                    return
            nonce = self._next_nonce()
            base_fee, tip = self._market()
            att = self._sign(row, nonce, 2 * base_fee + tip, tip, gas)
            self.store.record_signed(row.id, nonce, att)  # durable before the first send
            report.signed.append(row.id)
            self._broadcast(self.get(row.id), att, report)

    def _replay_dropped(self, open_rows: list[Intent], report: ProcessReport) -> None:
        """After a reorg deeper than `confirmations`: resend finished intents whose nonce the chain lost."""
        stored = self.store.highest_nonce(self.sender)
        if stored is None:
            return
        on_chain = self.w3.eth.get_transaction_count(self.sender, "latest")
        if on_chain > stored:
            return  # the common case: one RPC call
        open_nonces = {r.nonce for r in open_rows if r.nonce is not None}
        for row in self.store.finished_from_nonce(self.sender, on_chain):
            if row.nonce in open_nonces:
                continue
            att = next((a for a in row.attempts if a.tx_hash == row.tx_hash), row.attempts[-1] if row.attempts else None)
            if att is None:
                continue
            try:
                self.w3.eth.send_raw_transaction(att.raw)
                report.broadcast.append(row.id)
                log.warning("outbox intent %s (%s, nonce %d) was dropped by a reorg: rebroadcast", row.id, row.key, row.nonce)
            except (Web3RPCError, ValueError, OSError) as e:
                log.warning("outbox intent %s: rebroadcast after reorg failed: %s", row.id, e)

    def _has_unmined_predecessor(self, row: Intent) -> bool:
        return any(r.id < row.id and r.nonce is not None for r in self.store.open_intents(self.sender))

    def _next_nonce(self) -> int:
        stored = self.store.highest_nonce(self.sender)
        chain = self.w3.eth.get_transaction_count(self.sender, "pending")
        # max: never reuse one of ours, and skip any the account spent outside this outbox
        return max(chain, stored + 1 if stored is not None else 0)

    def _market(self) -> tuple[int, int]:
        block = self.w3.eth.get_block("latest")
        base_fee = int(block.get("baseFeePerGas") or 0)
        try:
            tip = int(self.w3.eth.max_priority_fee)
        except (Web3RPCError, ValueError):
            tip = 10**9
        return base_fee, max(tip, 1)

    def _estimate(self, row: Intent) -> int:
        call = self._call_params(row)
        return math.ceil(self.w3.eth.estimate_gas(call) * self.gas_margin)

    def _gas_for(self, row: Intent) -> int:
        """The gas limit a replacement reuses: exactly what the newest attempt was signed with."""
        return _decode_gas(row.attempts[-1].raw)

    def _call_params(self, row: Intent) -> TxParams:
        p = row.params
        call: TxParams = {"from": self.sender, "data": p["data"], "value": p.get("value") or Wei(0)}
        if p.get("to"):
            call["to"] = p["to"]
        return call

    def _sign(self, row: Intent, nonce: int, max_fee: int, tip: int, gas: int) -> Attempt:
        p = row.params
        tx = {
            "type": 2,
            "chainId": self.chain_id,
            "nonce": nonce,
            "gas": int(gas),
            "maxFeePerGas": int(max_fee),
            "maxPriorityFeePerGas": int(tip),
            "value": p.get("value") or 0,
            "data": p["data"],
        }
        if p.get("to"):
            tx["to"] = p["to"]
        signed = self.account.sign_transaction(tx)
        return Attempt(bytes(signed.hash), bytes(signed.raw_transaction), int(max_fee), int(tip), self.clock())

    def _revert_reason(self, row: Intent, rcpt: Mapping) -> str:
        """Replay the call to read the revert data (receipts don't carry it)."""
        att_gas = _decode_gas(row.attempts[-1].raw)
        call: TxParams = {**self._call_params(row), "gas": att_gas}  # the same gas it had on chain
        # the parent's state is what the tx saw unless an earlier tx in its block changed it
        for block in (rcpt["blockNumber"] - 1, rcpt["blockNumber"]):
            try:
                self.w3.eth.call(call, block_identifier=max(block, 0))
            except ContractLogicError as e:
                return decode_revert_data(revert_data(e.data) or b"", self.error_decoder)
            except (Web3RPCError, ValueError) as e:
                return f"reverted ({e})"[:500]
        if rcpt["gasUsed"] >= att_gas:
            return "out of gas"
        return "reverted (reason not recoverable by replay)"


def _decode_gas(raw: bytes) -> int:
    """Gas limit of a signed EIP-1559 transaction (0x02 ‖ rlp([chainId, nonce, tip, maxFee, gas, ...]))."""
    if not raw or raw[0] != 2:
        raise OutboxError("stored transaction is not an EIP-1559 (type 2) transaction")
    fields = rlp.decode(raw[1:])
    return int.from_bytes(fields[4], "big")

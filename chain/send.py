"""The one blocking way to send a transaction (CLI, deployment, dev tools, tests): estimate, sign,
send, wait. The daemon sends through the crash-safe outbox (`chain.outbox`) instead."""

from __future__ import annotations

from typing import Any, cast

from eth_account.signers.local import LocalAccount
from web3 import Web3
from web3.exceptions import ContractLogicError, Web3RPCError
from web3.types import TxParams, TxReceipt

from chain.errors import ContractRevert
from chain.reverts import as_revert

RECEIPT_TIMEOUT_S = 120


def send_tx(w3: Web3, account: LocalAccount, tx: dict[str, Any]) -> TxReceipt:
    """Estimate, sign, send and wait; raise ContractRevert (decoded) if it would or did revert.

    `tx` holds at least `data` (and `to` unless it deploys); the nonce defaults to the account's
    pending count, the gas price to the node's.
    """
    # `tx` is a plain dict (ContractBinding.build, deploy); TxParams is web3's TypedDict of the same keys
    tx = dict(tx)
    tx.setdefault("from", account.address)
    try:
        gas = w3.eth.estimate_gas(cast(TxParams, tx))
    except (ContractLogicError, Web3RPCError) as e:
        raise as_revert(e) from e
    tx["gas"] = gas + gas // 5 + 10_000  # margin: state can move between estimate and inclusion
    tx.setdefault("nonce", w3.eth.get_transaction_count(account.address, "pending"))
    if "maxFeePerGas" not in tx and "gasPrice" not in tx:
        tx["gasPrice"] = w3.eth.gas_price
    signed = account.sign_transaction(tx)
    tx_hash = w3.eth.send_raw_transaction(signed.raw_transaction)
    receipt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=RECEIPT_TIMEOUT_S)
    if receipt["status"] != 1:
        # Replay at the block it failed in to learn why.
        call = {k: tx[k] for k in ("from", "to", "data", "value") if k in tx}
        try:
            w3.eth.call(cast(TxParams, call), receipt["blockNumber"] - 1)
        except (ContractLogicError, Web3RPCError) as e:
            raise as_revert(e) from e
        raise ContractRevert("Unknown", (), b"", f"transaction {tx_hash.hex()} reverted (out of gas?)")
    return receipt

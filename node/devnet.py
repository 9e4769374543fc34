"""Dev-chain helpers (anvil only): fund a payer's escrow, authorize a signer. Used by the API
tests, the end-to-end test and `make bench-api`; they send real transactions to real contracts."""

from __future__ import annotations

from eth_account import Account

from chain.artifacts import load_artifact


def _send(w3, account, fn) -> dict:
    tx = fn.build_transaction({"from": account.address, "nonce": w3.eth.get_transaction_count(account.address),
                               "chainId": w3.eth.chain_id})
    signed = account.sign_transaction(tx)
    receipt = w3.eth.wait_for_transaction_receipt(w3.eth.send_raw_transaction(signed.raw_transaction), timeout=60)
    if receipt["status"] != 1:
        raise RuntimeError(f"transaction {fn.fn_name} reverted")
    return receipt


def contract(w3, deployment, name: str, artifact: str | None = None):
    return w3.eth.contract(address=deployment.addresses[name], abi=load_artifact(artifact or name).abi_list)


def fund_escrow(w3, deployment, deployer_key, payer_key, amount: int) -> None:
    """Mint `amount` demo tokens to the payer and deposit them into UsageEscrow."""
    deployer, payer = Account.from_key(deployer_key), Account.from_key(payer_key)
    token = contract(w3, deployment, "PaymentToken", "DemoToken")
    escrow = contract(w3, deployment, "UsageEscrow")
    _send(w3, deployer, token.functions.mint(payer.address, amount))
    _send(w3, payer, token.functions.approve(escrow.address, amount))
    _send(w3, payer, escrow.functions.deposit(amount))


def authorize_signer(w3, deployment, payer_key, signer_address: str) -> None:
    _send(w3, Account.from_key(payer_key), contract(w3, deployment, "UsageEscrow").functions.authorizeSigner(signer_address))

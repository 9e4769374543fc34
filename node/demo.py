"""`make demo`: the smallest real slice of the mission, grown by later issues into the full loop.

Now: start anvil on 127.0.0.1, deploy the demo token from the Hardhat artifacts, mint to a
payer, load the embedded base model and answer one prompt.
"""

from __future__ import annotations

import time

from rich.console import Console

console = Console()


def run_demo(prompt: str) -> int:
    from eth_account import Account
    from web3 import Web3

    from chain.artifacts import load_artifact
    from chain.devchain import DEV_PRIVATE_KEYS, Anvil
    from inference.base_model import load_base_model

    with Anvil() as anvil:
        console.print(f"[bold]chain[/] anvil on {anvil.url}")
        w3 = Web3(Web3.HTTPProvider(anvil.url))
        deployer = Account.from_key(DEV_PRIVATE_KEYS[0])
        payer = Account.from_key(DEV_PRIVATE_KEYS[1])
        art = load_artifact("DemoToken")
        token = w3.eth.contract(abi=art.abi_list, bytecode=art.bytecode)
        tx = token.constructor(deployer.address).transact({"from": deployer.address})
        addr = w3.eth.wait_for_transaction_receipt(tx).contractAddress
        token = w3.eth.contract(address=addr, abi=art.abi_list)
        console.print(f"[bold]deploy[/] DemoToken at {addr}")
        tx = token.functions.mint(payer.address, 1000 * 10**18).transact({"from": deployer.address})
        w3.eth.wait_for_transaction_receipt(tx)
        bal = token.functions.balanceOf(payer.address).call()
        console.print(f"[bold]mint[/] payer {payer.address} holds {bal / 1e18:g} LND")

    t0 = time.monotonic()
    base = load_base_model()
    console.print(f"[bold]model[/] {base.model_id} loaded in {time.monotonic() - t0:.1f}s on {base.device}")
    enc = base.tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    out = base.model.generate(**enc, max_new_tokens=48, do_sample=False)
    answer = base.tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    console.print(f"[bold]Q[/] {prompt}\n[bold]A[/] {answer.strip()}")
    return 0

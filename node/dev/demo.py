"""`make demo`: the whole mission on one machine, with nothing stubbed.

dev chain up (anvil + contracts + demo token) → two contributors add to a community dataset and a
second dataset is created → two LoRA adapters are trained on them (CPU) and published on chain
with dataset splits → the node discovers, fetches, verifies and serves them → a payer deposits,
authorizes a signing key and chats with both adapters through the official `openai` client →
receipts are committed and vouchers redeemed on chain → each batch's dataset parts are paid by
what its answers drew on (AttributionPool), shown per contribution, and batch 1 is audited from
public data → a rewards table per address, and one contributor claims, seeing the wallet's token
balance rise.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from chain.protocol import TOTAL_BPS, adapter_model_name
from node.services.terminal_text import clean_output, one_line

# A wide console when piped (CI logs), the terminal's width otherwise.
console = Console(width=None if sys.stdout.isatty() else 140)
DEMO_DATA = Path(__file__).resolve().parent / "demo_data"
QUESTIONS = ("What is the capital of Italy?", "What do cows drink?")
TOKEN = 10**18
ADAPTER_PRICE = TOKEN // 2  # 0.5 token per 1K tokens
COMPUTE_PRICE = TOKEN // 4  # 0.25 token per 1K tokens


def _step(text: str) -> None:
    console.rule(f"[bold cyan]{text}")


def _quiet_libraries() -> None:
    """The demo narrates; library progress bars and deprecation chatter would drown it."""
    import warnings

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=UserWarning, module="peft")
    warnings.filterwarnings("ignore", category=FutureWarning)


def _attribution_report(c, store, data_dir: Path, node_addr: str, contributors: dict[str, str]) -> None:
    """Per-contribution rewards (what the answers drew on moved the money) and the audit of batch 1."""
    import asyncio

    from node.attribution_rewards.audit import audit_batch
    from node.attribution_rewards.breakdown import breakdown
    from node.ipfs import ContentCache
    from node.services.amounts import format_amount
    from node.services.contribution_rewards import contribution_rows

    cache = ContentCache(data_dir / "audit-cache", 1 << 30)
    t = Table(title="dataset rewards by contribution (LND): attribution settled per batch in AttributionPool")
    cols = ["contribution", "dataset", "answers", "tokens attributed", "earned by attribution", "earned"]
    t.add_column("who")
    for col in cols:
        t.add_column(col, justify="right")
    by_attribution = {}
    for who, addr in contributors.items():
        b = asyncio.run(breakdown(c, addr, [store], cache))
        by_attribution[who] = sum(r.earned_by_attribution for r in b.contributions)
        for row in contribution_rows(b, places=6):
            t.add_row(who, *[str(row[k]) for k in cols])
    console.print(t)
    # alice's and bob's «Pirate talk» data each carry a phrase the adapter learns (alice's opens every
    # answer, bob's closes some): the answers quote them unequally, so they earn unequally
    console.print(
        "earned by attribution: "
        + ", ".join(f"{who} {format_amount(amount, places=6)} LND" for who, amount in by_attribution.items())
    )
    report = asyncio.run(audit_batch(c, [store], cache, 1, node_addr))
    verdict = "[green]passed[/]" if report.ok else f"[red]{len(report.discrepancies)} discrepancies[/]"
    console.print(
        f"loranode attribution audit --batch 1 --node {node_addr}: {report.receipts} receipts, "
        f"leaves, spans, weights and settled amounts checked: {verdict}"
    )
    for d in report.discrepancies:
        console.print(f"  [red]✗[/] leaf {d.leaf_index} [{d.rule}] {escape(one_line(d.detail))}")


def run_demo(*, data_dir: Path = Path(".loranode/demo"), train_steps: int = 30, quick: bool = False) -> int:
    _quiet_libraries()
    from eth_account import Account

    from chain.devchain import DEV_PRIVATE_KEYS
    from node.config import load_config
    from node.dev.stack import DEV_ROLES, NodeThread, get_json as _get, start_dev_stack, wait_for as _wait
    from node.ipfs import EmbeddedStore
    from node.services.amounts import format_amount
    from node.services.contributions import count_tokens
    from node.services.rewards import summarize, summary_row

    acct = {role: Account.from_key(k) for role, k in zip(DEV_ROLES, DEV_PRIVATE_KEYS, strict=True)}
    shutil.rmtree(data_dir, ignore_errors=True)  # each demo starts from a fresh chain
    t_start = time.monotonic()

    _step("1. dev chain: anvil on 127.0.0.1, contracts deployed, dev accounts funded")
    stack = start_dev_stack(
        data_dir,
        chain_port=0,
        node_port=0,
        compute_price_per_1k=COMPUTE_PRICE,
        node_extra={"settlement_interval_s": 2.0, "redeem_interval_s": 2.0, "max_tokens_limit": 64, "engine_gpu_slots": 4},
    )
    node = None
    try:
        c = stack.contracts
        store = EmbeddedStore(stack.data_dir / "ipfs")
        console.print(
            f"anvil {stack.rpc_url}; contracts: " + ", ".join(f"{k}={v[:10]}…" for k, v in c.deployment.addresses.items())
        )

        _step("2. community datasets: contributions uploaded to IPFS, accepted by the curator")
        datasets = {}
        for name, files in (
            ("Pirate talk", [("alice", "pirate-alice.jsonl"), ("bob", "pirate-bob.jsonl")]),
            ("Robot talk", [("carol", "robot-carol.jsonl")]),
        ):
            c.datasets.create_dataset(acct["curator"], name, "CC-BY-4.0", "")
            ds = c.datasets.dataset_count()
            datasets[name] = ds
            for who, fname in files:
                path = DEMO_DATA / fname
                cid = store.add_path_sync(path)
                tokens = count_tokens(path)  # the same validation and count as `loranode dataset contribute`
                c.datasets.contribute(acct[who], ds, cid, tokens)
                cid_id = c.datasets.contribution_count()
                c.datasets.accept(acct["curator"], cid_id, tokens)
                console.print(f"dataset {ds} «{name}»: contribution {cid_id} by {who} ({tokens} tokens) {cid[:16]}…")

        _step("3. two LoRA adapters trained on CPU and published with dataset splits")
        from inference.base_model import load_base_model
        from inference.training import TrainConfig, read_records, train_lora

        base = load_base_model(device="cpu")
        published = {}
        for owner, name, train_files, owner_bps in (
            ("owner1", "Pirate talk", ["pirate-alice.jsonl", "pirate-bob.jsonl"], 7000),
            ("owner2", "Robot talk", ["robot-carol.jsonl"], 8000),
        ):
            records = [r for f in train_files for r in read_records(DEMO_DATA / f)]
            out = stack.data_dir / "adapters" / name.replace(" ", "-").lower()
            cfg = TrainConfig(steps=train_steps, max_length=64, seed=1, last_layers=10)
            rep = train_lora(base, records, out, cfg)
            cid = store.add_path_sync(out)
            ds = datasets[name]
            c.adapters.register(
                acct[owner], base.model_id, cid, cfg.rank, ADAPTER_PRICE, owner_bps, [ds], [TOTAL_BPS - owner_bps]
            )
            aid = c.adapters.adapter_count()
            published[aid] = name
            console.print(
                f"{adapter_model_name(aid)} «{name}» by {owner}: {rep.steps} steps in {rep.seconds:.0f}s, "
                f"loss {rep.first_loss:.2f}→{rep.last_loss:.2f}; owner {owner_bps} bps, dataset {ds} "
                f"{TOTAL_BPS - owner_bps} bps; {cid[:16]}…"
            )
        del base

        _step("4. the node discovers, fetches, verifies and loads the adapters")
        node = NodeThread(load_config(stack.config_path)).start()
        want = [adapter_model_name(a) for a in published]
        _wait(
            lambda: all(m in [x["id"] for x in _get(node.url + "/v1/models")["data"]] for m in want), 240, "the adapters to load"
        )
        console.print(f"node {node.url} serves: {', '.join(x['id'] for x in _get(node.url + '/v1/models')['data'])}")

        _step("5. a payer funds escrow, authorizes a signing key, chats through the openai client")
        from node.client.payer import LoraNodeClient

        payer, hot = acct["payer"], Account.create()
        c.token.approve(payer, c.escrow.address, 100 * TOKEN)
        c.escrow.deposit(payer, acct["node"].address, 100 * TOKEN)  # earmarked for this node
        c.escrow.authorize_signer_key(payer, hot)  # with the hot key's own proof
        console.print(f"payer {payer.address} deposited 100 LND for node {acct['node'].address}; signer {hot.address} authorized")
        client = LoraNodeClient(node.url, payer.key, signer_key=hot.key)
        table = Table(title="same question, different adapters", show_lines=True)
        table.add_column("question")
        models = [*want, base_id := _get(node.url + "/v1/models")["data"][0]["id"]]
        for m in models:
            table.add_column(m if m == base_id else f"{m} ({published[int(m.split('-')[1])]})")
        for q in QUESTIONS[:1] if quick else QUESTIONS:
            row: list[str | Text] = [q]
            for m in models:
                r = client.chat(m, [{"role": "user", "content": q}], max_tokens=40, temperature=0)
                row.append(Text(clean_output(r.choices[0].message.content.strip())))  # model text: no markup
            table.add_row(*row)
        console.print(table)
        streamed = "".join(
            (ch.choices[0].delta.content or "")
            for ch in client.chat_stream(want[0], [{"role": "user", "content": "Say hello."}], max_tokens=24, temperature=0)
            if ch.choices
        )
        console.print(f"streamed from {want[0]}: {streamed.strip()!r}")
        receipts = list(client.receipts)
        # Each request carries a voucher for everything before it; one last voucher pays the
        # final request on every lane (the node's risk is one request per lane, never more).
        client.settle_up()

        _step("6. settlement: receipts committed in Merkle batches, vouchers redeemed")

        def all_committed():
            got = [_get(f"{node.url}/v1/receipts/0x{r.receipt.request_id.hex()}") for r in receipts]
            return got if all(g["status"] == "committed" for g in got) else None

        proofs = _wait(all_committed, 180, "receipts to be committed")
        lanes = {r.receipt.adapter_id for r in receipts}
        node_addr = acct["node"].address  # node.toml runs the node with the "node" dev key

        def redeemed(a: int) -> bool:
            got = c.escrow.collected(payer.address, node_addr, a)
            return (got.compute, got.adapter) == tuple(client.wallet.totals(a))

        _wait(lambda: all(redeemed(a) for a in lanes), 180, "vouchers to be redeemed")
        r0, p0 = receipts[0], proofs[0]
        ok = c.receipts.verify_receipt(r0.receipt, p0["batch"]["seq"], [bytes.fromhex(x[2:]) for x in p0["proof"]])
        console.print(
            f"{len(receipts)} receipts committed in batch(es) "
            f"{sorted({p['batch']['seq'] for p in proofs})}; receipt 1 verifyReceipt on chain: {ok}"
        )
        for r, p in zip(receipts, proofs, strict=True):
            att = p["receipt"].get("attribution")
            if att:  # which contributions this answer drew on (exact token spans, see README)
                shares = ", ".join(f"contribution {cid}: {bps / 100:.1f}%" for cid, bps in att.items())
                console.print(f"receipt {r.receipt.seq} ({adapter_model_name(r.receipt.adapter_id)}) attribution: {shares}")
        paid = sum(r.receipt.compute_cost + r.receipt.adapter_cost for r in receipts)
        console.print(f"payer charged {format_amount(paid)} LND in total, redeemed from escrow")
        _wait(
            lambda: c.pool.settled_seq(node_addr) == c.receipts.last_seq(node_addr),
            180,
            "batches to be settled in AttributionPool",
        )
        _attribution_report(c, store, stack.data_dir, node_addr, {r: acct[r].address for r in ("alice", "bob", "carol")})

        _step("7. rewards per address, and a contributor claims")
        rt = Table(title="rewards (LND)")
        cols = ["node fees", "adapter/protocol shares", "datasets (pending)", "claimable now"]
        rt.add_column("who")
        for col in cols:
            rt.add_column(col, justify="right")
        for role in ("node", "deployer", "owner1", "owner2", "alice", "bob", "carol"):
            rewards = summary_row(summarize(c, acct[role].address), places=6)
            rt.add_row(f"{role} {acct[role].address[:10]}…", *[rewards[k] for k in cols])
        console.print(rt)
        alice = acct["alice"]
        s = summarize(c, alice.address)
        before = c.token.balance_of(alice.address)
        if s.pending_contributions:
            c.datasets.harvest(alice, list(s.pending_contributions))
        c.vault.claim(alice)
        after = c.token.balance_of(alice.address)
        console.print(
            f"alice claimed: wallet {format_amount(before)} → {format_amount(after)} LND (+{format_amount(after - before)})"
        )
        console.print(f"[bold green]demo done in {time.monotonic() - t_start:.0f}s")
        return 0 if ok and after > before else 1
    finally:
        if node is not None:
            node.stop()
        stack.anvil.stop()

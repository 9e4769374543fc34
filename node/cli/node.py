"""`loranode node ...`: the node operator's commands.

`run` runs the daemon. `register` publishes the node in NodeRegistry (endpoint, base models, price)
with its bond: only a node holding at least the registry's minimum bond can redeem vouchers.
`dispute` lets a fisherman hold a node to its signed receipts: with one receipt it opens a dispute
(the dispute deposit is approved and locked; the arbitrator set at deployment rules before the
deadline); with `--equivocation OTHER` it proves that the node signed two different receipts with
the same `seq`: the node's bond is slashed at once and half of it is paid to the caller; with
`--attribution` it proves from the committed receipt alone (its file with the batch and Merkle proof)
that the attribution is wrong on chain (a contribution outside the adapter's datasets, or more than
10,000 bps): the same slash, without arbitrator (docs/attribution-rewards.md). While the node has
open disputes, or within the dispute window after its last commit, either proof only condemns its
bond: fishermen may still dispute until the window ends and are paid from it first, and the rest
is slashed for the prover after the window with no dispute open (by `rule` or `expire-dispute`
closing the last one, or by anyone with `execute-condemnation`).
`disputes` lists disputes and their state; `rule` is the arbitrator's ruling on an open dispute
before its deadline (`--slash AMOUNT` upholds it, `--reject` gives the deposit to the node);
`expire-dispute` closes one the arbitrator left past its deadline (anyone; the deposit goes back);
`execute-condemnation` slashes a condemned bond for its prover once its disputes' time is over."""

from __future__ import annotations

from pathlib import Path

import typer

from node.cli.common import chain_time, checksum, connect, emit, event_of, load_account, tx_done
from node.cli.errors import CliError, handle_errors, report
from node.cli.options import DeploymentOpt, JsonOpt, KeystoreOpt, PasswordFileOpt, RpcOpt
from node.services.amounts import format_amount, parse_amount
from node.services.errors import InputError
from node.services.receipt_files import batch_proof, load_receipt_file, signed_receipt

node_app = typer.Typer(name="node", help="The node operator daemon.", no_args_is_help=True)


@node_app.command("run")
def run_cmd(
    config: Path = typer.Option(None, "--config", "-c", help="Node TOML file (LORANODE_* env vars override it)."),
) -> None:
    """Run the node: watch the chain, fetch and load adapters, serve the OpenAI-compatible API,
    sign receipts and settle. Stops gracefully on SIGINT/SIGTERM."""
    from node.config import load_config
    from node.daemon.root import run
    from node.errors import NodeError

    try:
        cfg = load_config(config)
        code = run(cfg)
    except NodeError as e:  # configuration, deployment or chain mismatch: bad input, a clear message, no traceback
        raise report(InputError(str(e))) from e
    raise typer.Exit(code)


@node_app.command("config-options")
def config_options() -> None:
    """Print every configuration option with its default and meaning (Markdown)."""
    from node.config import options_table

    typer.echo(options_table())


@node_app.command("register")
@handle_errors
def register(
    endpoint: str = typer.Option(..., "--endpoint", help="Public URL of the node's API."),
    base_model: list[str] = typer.Option(
        None, "--base-model", help="Base model ids served (repeatable; default: the embedded one)."
    ),
    price: str = typer.Option("0", "--price", help="Compute price per 1K tokens, in tokens."),
    bond: str = typer.Option(
        "min",
        "--bond",
        help="Bond to hold, in tokens (approved and locked): 'min' tops it up to the registry's minimum; more answers for more.",
    ),
    rpc_url: str = RpcOpt,
    deployment: Path = DeploymentOpt,
    keystore: Path = KeystoreOpt,
    password_file: Path = PasswordFileOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Register (or update) the operator's node in NodeRegistry."""
    from inference.embedded_model import EMBEDDED_MODEL_ID

    if not endpoint.startswith(("http://", "https://")) or len(endpoint) > 512:
        raise InputError("--endpoint must be an http(s) URL of at most 512 characters")
    models = base_model or [EMBEDDED_MODEL_ID]
    price_units = parse_amount(price)
    target = None if bond == "min" else parse_amount(bond)
    c = connect(rpc_url, deployment)
    account = load_account(keystore, password_file)
    min_bond = c.nodes.dispute_terms().min_bond
    held = c.nodes.get_node(account.address).bond
    target = min_bond if target is None else target
    if target < min_bond:
        typer.echo(f"warning: a bond below the minimum ({format_amount(min_bond)}) cannot redeem vouchers", err=True)
    add = max(0, target - held)
    if add and c.token.balance_of(account.address) < add:
        raise CliError(f"insufficient token balance for the bond: it needs {format_amount(add)} more")
    if add and c.token.allowance(account.address, c.nodes.address) < add:
        c.token.approve(account, c.nodes.address, add)
    if c.nodes.is_active(account.address):
        receipt = c.nodes.update(account, endpoint, models, price_units)
        if add:
            c.nodes.add_bond(account, add)
        tx_done(receipt, "node updated", as_json, node=account.address, bond=format_amount(held + add))
        return
    receipt = c.nodes.register(account, endpoint, models, price_units, add)
    tx_done(receipt, "node registered", as_json, node=account.address, bond=format_amount(held + add))


def _signed_receipt(path: Path, chain_id: int, receipt_log: str):
    from chain.eip712 import TypedDataError

    raw = load_receipt_file(path)["receipt"]
    try:
        signed = signed_receipt(raw)
        signer = signed.signer(chain_id, receipt_log)
    except InputError as e:
        raise InputError(f"{path}: {e}") from None
    except TypedDataError as e:
        raise InputError(f"{path}: malformed receipt: {e}") from None
    if signer != signed.receipt.node:
        raise InputError(f"{path}: the receipt is not signed by its node {signed.receipt.node} (signer {signer})")
    return signed


@node_app.command("dispute")
@handle_errors
def dispute(
    receipt: Path = typer.Argument(..., help="The disputed receipt (JSON as returned by GET /v1/receipts/{id})."),
    equivocation: Path = typer.Option(
        None, "--equivocation", help="Another receipt of the same node with the same seq: slash at once."
    ),
    attribution: bool = typer.Option(
        False,
        "--attribution",
        help="Slash at once for an attribution provably wrong from this committed receipt (its file needs batch and proof).",
    ),
    rpc_url: str = RpcOpt,
    deployment: Path = DeploymentOpt,
    keystore: Path = KeystoreOpt,
    password_file: Path = PasswordFileOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Dispute a node's receipt (deposit, arbitrated), or slash a node that equivocated or misattributed."""
    if attribution and equivocation is not None:
        raise InputError("--attribution and --equivocation are two different proofs: give one")
    c = connect(rpc_url, deployment)
    a = _signed_receipt(receipt, c.chain_id, c.receipts.address)
    node = a.receipt.node
    _check_disputable(c, node, proof=attribution or equivocation is not None)
    if equivocation is not None:
        b = _signed_receipt(equivocation, c.chain_id, c.receipts.address)
        if b.receipt.node != node or b.receipt.seq != a.receipt.seq:
            raise InputError("an equivocation needs two receipts of the same node with the same seq")
        if c.receipts.hash_receipt(a.receipt) == c.receipts.hash_receipt(b.receipt):
            raise InputError("the two receipts are the same: not an equivocation")
        account = load_account(keystore, password_file)
        rcpt = c.nodes.slash_equivocation(account, a.receipt, a.signature, b.receipt, b.signature)
        _proof_done(c, rcpt, as_json, node)
        return
    if attribution:
        _slash_attribution(c, receipt, a.receipt, keystore, password_file, as_json)
        return
    terms = c.nodes.dispute_terms()
    account = load_account(keystore, password_file)
    if terms.dispute_deposit:
        if c.token.balance_of(account.address) < terms.dispute_deposit:
            raise CliError(f"the dispute deposit is {format_amount(terms.dispute_deposit)}: insufficient balance")
        if c.token.allowance(account.address, c.nodes.address) < terms.dispute_deposit:
            c.token.approve(account, c.nodes.address, terms.dispute_deposit)
    rcpt = c.nodes.open_dispute(account, a.receipt, a.signature)
    dispute_id = c.nodes.dispute_count()
    tx_done(
        rcpt,
        "dispute opened",
        as_json,
        dispute_id=dispute_id,
        node=node,
        deposit=format_amount(terms.dispute_deposit),
        deadline=c.nodes.get_dispute(dispute_id).deadline,
    )


def _check_disputable(c, node: str, proof: bool) -> None:
    """Refuse before any transaction what the registry would: a second proof against a condemned
    node, a dispute once its window is over, anything against a node with no bond."""
    info = c.nodes.get_node(node)
    if info.condemned and (proof or chain_time(c) >= info.condemned_until):
        raise CliError(
            f"node {node} is condemned: its bond is slashed for {info.condemned_by} once no dispute is open "
            f"after {info.condemned_until}; {'its fault is already proven' if proof else 'too late to dispute'}"
        )
    if info.bond == 0:
        raise CliError(f"node {node} holds no bond: nothing to dispute")


def _proof_done(c, rcpt, as_json: bool, node: str, **fields) -> None:
    """Report a proven fault from its event: slashed now, or condemned until the disputes' time is over."""
    events = {type(ev).__name__: ev for ev in c.events_of(rcpt)}  # decoded once
    condemned = events.get("NodeCondemned")
    if condemned is not None:
        what = "node condemned"
        result = {"open_disputes": condemned.open_disputes, "disputes_until": condemned.until, "slashed": format_amount(0)}
    elif (slashed := events.get("NodeSlashed")) is not None:
        what = "node slashed"
        result = {"slashed": format_amount(slashed.amount), "reward": format_amount(slashed.reward)}
    else:
        raise CliError("transaction mined but neither NodeCondemned nor NodeSlashed found")
    tx_done(rcpt, what, as_json, node=node, **fields, **result)


def _condemned_slash(c, rcpt, before) -> dict:
    """Fields for a dispute's closing transaction that also slashed a condemned bond (its last NodeSlashed)."""
    if not before.condemned or c.nodes.get_node(before.node).condemned:
        return {}
    slashes = [ev for ev in c.events_of(rcpt) if type(ev).__name__ == "NodeSlashed"]
    if not slashes or slashes[-1].beneficiary != before.condemned_by:
        return {}
    return {"condemned_slashed": format_amount(slashes[-1].amount), "prover": before.condemned_by}


# AttributionPool.attributionFault's results
_FAULTS = {1: "a contribution outside the adapter's datasets", 2: "more than 10,000 bps"}


def _slash_attribution(c, path: Path, r, keystore: Path, password_file: Path, as_json: bool) -> None:
    """Check the one-leaf proof with the view first (no gas on an honest or uncommitted leaf), then slash."""
    from chain.eip712 import receipt_digest
    from node.attribution_rewards.rule import RuleError, leaf_attribution

    body = load_receipt_file(path)
    found = batch_proof(body)
    if found is None:
        raise InputError(f"{path}: no batch and proof: the receipt is not committed yet (GET /v1/receipts/{{id}} once it is)")
    seq, proof = found
    try:
        weights = leaf_attribution(body["receipt"])
    except RuleError as e:
        raise InputError(f"{path}: {e}") from None
    ids = sorted(weights)
    bps = [weights[i] for i in ids]
    digest = receipt_digest(r, c.chain_id, c.receipts.address)
    if c.nodes.attribution_slashed(digest):
        raise CliError(f"receipt 0x{digest.hex()} was already slashed for its attribution")
    fault = c.pool.attribution_fault(r, seq, proof, ids, bps)  # reverts unless committed and hashing right
    if not fault:
        raise InputError(
            "the attribution is not provably wrong from this leaf alone: "
            f"open an arbitrated dispute instead (loranode node dispute {path})"
        )
    account = load_account(keystore, password_file)
    rcpt = c.nodes.slash_attribution(account, r, seq, proof, ids, bps)
    _proof_done(c, rcpt, as_json, r.node, fault=_FAULTS.get(fault, str(fault)))


# Newest disputes `disputes` reads by default (batched eth_calls).
DISPUTES_LIMIT = 50


def _dispute_state(d, now: int) -> str:
    if not d.open:
        return "closed"
    return "open" if now <= d.deadline else "expirable"


def _open_dispute(c, dispute_id: int):
    """Dispute `dispute_id`, which must exist and be open: checked before any transaction."""
    count = c.nodes.dispute_count()
    if not 1 <= dispute_id <= count:
        raise InputError(f"no dispute {dispute_id} (disputes are numbered 1..{count})")
    d = c.nodes.get_dispute(dispute_id)
    if not d.open:
        raise CliError(f"dispute {dispute_id} is already closed")
    return d


@node_app.command("disputes")
@handle_errors
def disputes(
    node: str = typer.Option(None, "--node", help="Only disputes against this node address."),
    open_only: bool = typer.Option(False, "--open", help="Only disputes not closed yet."),
    limit: int = typer.Option(DISPUTES_LIMIT, "--limit", min=1, max=10_000, help="Newest disputes to read."),
    rpc_url: str = RpcOpt,
    deployment: Path = DeploymentOpt,
    as_json: bool = JsonOpt,
) -> None:
    """List disputes, newest first: node, fisherman, disputed receipt digest, deposit, deadline and
    state (open; expirable: past its deadline, unruled; closed)."""
    only = checksum(node, "node address") if node is not None else None
    c = connect(rpc_url, deployment)
    now = chain_time(c)
    count = c.nodes.dispute_count()
    ids = list(range(count, max(count - limit, 0), -1))
    rows = []
    for dispute_id, d in zip(ids, c.nodes.call_many("getDispute", [(i,) for i in ids]), strict=True):
        if (only is not None and d.node != only) or (open_only and not d.open):
            continue
        rows.append(
            {
                "id": dispute_id,
                "node": d.node,
                "fisherman": d.fisherman,
                "receipt_digest": d.receipt_digest,
                "deposit": format_amount(d.deposit),
                "deadline": d.deadline,
                "state": _dispute_state(d, now),
            }
        )
    emit(rows, as_json, title=f"Disputes (newest {min(limit, count)} of {count})")


@node_app.command("rule")
@handle_errors
def rule(
    dispute_id: int = typer.Argument(..., help="The open dispute's id (see `loranode node disputes`)."),
    slash: str = typer.Option(None, "--slash", help="Uphold it: tokens of the node's bond to slash (capped by the bond)."),
    reject: bool = typer.Option(False, "--reject", help="Reject it: the fisherman's deposit goes to the node."),
    rpc_url: str = RpcOpt,
    deployment: Path = DeploymentOpt,
    keystore: Path = KeystoreOpt,
    password_file: Path = PasswordFileOpt,
    as_json: bool = JsonOpt,
) -> None:
    """The arbitrator's ruling on an open dispute before its deadline (NodeRegistry.resolveDispute).
    Upheld: the fisherman gets its deposit back and half of the slash; rejected: the node gets the deposit."""
    if (slash is None) == (not reject):
        raise InputError("give the ruling: --slash AMOUNT (uphold) or --reject")
    amount = 0
    if slash is not None:
        amount = parse_amount(slash)
        if amount == 0:
            raise InputError("--slash must be positive (use --reject to reject the dispute)")
    c = connect(rpc_url, deployment)
    d = _open_dispute(c, dispute_id)
    if chain_time(c) > d.deadline:
        raise CliError(f"dispute {dispute_id} is past its deadline ({d.deadline}): it can only expire now")
    account = load_account(keystore, password_file)
    arbitrator = c.nodes.dispute_terms().arbitrator
    if account.address != arbitrator:
        raise CliError(f"only the arbitrator {arbitrator} rules on disputes (this wallet is {account.address})")
    before = c.nodes.get_node(d.node)
    rcpt = c.nodes.resolve_dispute(account, dispute_id, amount)
    ruled = event_of(c, rcpt, "DisputeResolved")  # what the chain did: the slash is capped by the bond
    tx_done(
        rcpt,
        "dispute upheld" if ruled.upheld else "dispute rejected",
        as_json,
        dispute_id=dispute_id,
        node=d.node,
        slashed=format_amount(ruled.slashed),
        **_condemned_slash(c, rcpt, before),
    )


@node_app.command("expire-dispute")
@handle_errors
def expire_dispute(
    dispute_id: int = typer.Argument(..., help="An open dispute past its deadline."),
    rpc_url: str = RpcOpt,
    deployment: Path = DeploymentOpt,
    keystore: Path = KeystoreOpt,
    password_file: Path = PasswordFileOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Close a dispute the arbitrator left unruled past its deadline (anyone may): the deposit goes
    back to the fisherman and the node's bond is no longer held by it."""
    c = connect(rpc_url, deployment)
    d = _open_dispute(c, dispute_id)
    if chain_time(c) <= d.deadline:
        raise CliError(f"dispute {dispute_id} is open until {d.deadline}: the arbitrator may still rule")
    account = load_account(keystore, password_file)
    before = c.nodes.get_node(d.node)
    rcpt = c.nodes.expire_dispute(account, dispute_id)
    tx_done(
        rcpt,
        "dispute expired",
        as_json,
        dispute_id=dispute_id,
        node=d.node,
        refunded=format_amount(d.deposit),
        **_condemned_slash(c, rcpt, before),
    )


@node_app.command("execute-condemnation")
@handle_errors
def execute_condemnation(
    node: str = typer.Argument(..., help="A condemned node whose disputes' time is over."),
    rpc_url: str = RpcOpt,
    deployment: Path = DeploymentOpt,
    keystore: Path = KeystoreOpt,
    password_file: Path = PasswordFileOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Slash a condemned node's bond for the one who proved its fault (anyone may), once the dispute
    window of its last commit has passed and no dispute is open (the disputes were paid first)."""
    addr = checksum(node, "node address")
    c = connect(rpc_url, deployment)
    info = c.nodes.get_node(addr)
    if not info.condemned:
        raise CliError(f"node {addr} is not condemned")
    open_now = c.nodes.open_disputes(addr)
    if open_now:
        raise CliError(f"node {addr} still has {open_now} open dispute(s): they are ruled or expire first")
    if chain_time(c) < info.condemned_until:  # the next block is later than the latest
        raise CliError(f"fishermen may dispute node {addr} until {info.condemned_until}: execute it after")
    account = load_account(keystore, password_file)
    rcpt = c.nodes.execute_condemnation(account, addr)
    slashed = event_of(c, rcpt, "NodeSlashed") if info.bond else None
    tx_done(
        rcpt,
        "condemnation executed",
        as_json,
        node=addr,
        prover=info.condemned_by,
        slashed=format_amount(slashed.amount if slashed else 0),
        reward=format_amount(slashed.reward if slashed else 0),
    )

"""`loranode chat MODEL [PROMPT]`: talk to an adapter (or the base model) on whichever registered
node serves it best, paying with vouchers. Logic lives in `node/client/chat/`; this is the terminal side."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from node.cli.common import checksum, connect, load_account, loranode_home
from node.cli.errors import CliError, err_console, handle_errors
from node.cli.options import (
    DeploymentOpt,
    JsonOpt,
    KeystoreOpt,
    PasswordFileOpt,
    PayerOpt,
    RpcOpt,
    SignerKeystoreOpt,
    StateOpt,
)
from node.services.amounts import format_amount
from node.services.errors import InputError

EXIT_COMMANDS = {"/exit", "/quit"}


def state_path(state: Path | None, chain_id: int, payer: str) -> Path:
    return state or loranode_home() / "chat" / f"{chain_id}-{payer}.sqlite"


def payer_and_signer(keystore, password_file, signer_keystore, payer):
    """(payer: account or address, signer account or None)."""
    if signer_keystore is not None:
        if not payer:
            raise InputError("--payer is required with --signer-keystore (the address whose escrow pays)")
        return checksum(payer, "payer address"), load_account(signer_keystore, password_file)
    if payer:
        raise InputError("--payer is only for --signer-keystore; the keystore's own address pays otherwise")
    return load_account(keystore, password_file), None


def _note(text: str) -> None:
    err_console.print(text, markup=False, highlight=False)


def _api_error(e) -> CliError:
    """An HTTP error of the node as one line, its message shown as untrusted text."""
    from node.services.terminal_text import shown

    body = getattr(e, "body", None)
    err = body.get("error", body) if isinstance(body, dict) else {}
    code = err.get("code") if isinstance(err, dict) else None
    msg = err.get("message") if isinstance(err, dict) else str(e)
    return CliError(
        f"the node refused the request (HTTP {getattr(e, 'status_code', '?')}"
        f"{', ' + shown(code, 40) if code else ''}): {shown(msg, 300)}"
    )


@handle_errors
def chat(
    model: str = typer.Argument(..., help='"adapter-<id>" or the base model id.'),
    prompt: str = typer.Argument(None, help="Ask this once and exit (- reads it from stdin); without it, one question per line."),
    node: str = typer.Option(None, "--node", help="Use this node URL instead of discovering nodes on chain."),
    max_tokens: int = typer.Option(256, "--max-tokens", min=1, max=100_000, help="Most tokens per answer."),
    temperature: float = typer.Option(None, "--temperature", min=0.0, max=2.0, help="Sampling temperature (node default 1.0)."),
    system: str = typer.Option(None, "--system", help="A system message before the conversation."),
    rpc_url: str = RpcOpt,
    deployment: Path = DeploymentOpt,
    keystore: Path = KeystoreOpt,
    password_file: Path = PasswordFileOpt,
    signer_keystore: Path = SignerKeystoreOpt,
    payer: str = PayerOpt,
    state: Path = StateOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Chat with a model on the cheapest, fastest registered node serving it, paying with vouchers."""
    import openai

    from node.client.chat.discovery import ProbeError, discover
    from node.client.chat.endpoints import BadEndpoint
    from node.services.terminal_text import clean_output, shown
    from node.client.chat.session import ChatSession, Refused
    from node.client.chat.state import ChatState

    payer_acct, signer = payer_and_signer(keystore, password_file, signer_keystore, payer)
    payer_addr = payer_acct if isinstance(payer_acct, str) else payer_acct.address
    c = connect(rpc_url, deployment)
    try:
        found = discover(c, model, node_url=node)
    except (ProbeError, BadEndpoint) as e:
        raise CliError(str(e)) from None
    for who, why in found.refused:
        _note(f"skipped node {who}: {why}")
    if not found.chosen:
        raise CliError(
            f"no node serves {shown(model)}" + (f" ({len(found.refused)} refused, see above)" if found.refused else "")
        )
    best = found.chosen[0]
    _note(
        f"node {best.address} at {shown(best.url)}: {format_amount(best.price_per_1k)} tokens per 1K, "
        f"{best.latency_s * 1000:.0f} ms ({len(found.chosen)} serving)"
    )

    store = ChatState(state_path(state, c.chain_id, payer_addr))
    try:
        with store.locked():
            session = ChatSession(best, payer_acct, store, signer=signer, max_tokens=max_tokens, temperature=temperature)
            try:
                for rid in session.recover_pending():
                    _note(f"paid the receipt of an interrupted answer: {rid}")
                history = [{"role": "system", "content": system}] if system else []
                questions = [sys.stdin.read() if prompt == "-" else prompt] if prompt is not None else _lines()
                for question in questions:
                    history.append({"role": "user", "content": question})
                    on_text = (lambda _: None) if as_json else (lambda t: (sys.stdout.write(clean_output(t)), sys.stdout.flush()))
                    answer = session.ask(model, history, on_text)
                    history.append({"role": "assistant", "content": answer.text})
                    _report(answer, best, model, as_json)
            except Refused as e:
                raise CliError(f"node {best.address} at {shown(best.url)} refused: {e}; nothing was paid for it") from None
            except openai.APIStatusError as e:
                raise _api_error(e) from None
            except openai.APIConnectionError:
                raise CliError(
                    f"lost the connection to {shown(best.url)}; an interrupted answer is paid from its receipt next time"
                ) from None
    finally:
        store.close()


def _lines():
    """Questions from stdin, one per line (a prompt on a terminal), until EOF or /exit."""
    interactive = sys.stdin.isatty()
    while True:
        if interactive:
            sys.stderr.write("> ")
            sys.stderr.flush()
        line = sys.stdin.readline()
        if not line:
            return
        line = line.strip()
        if line in EXIT_COMMANDS:
            return
        if line:
            yield line


def _report(answer, node, model: str, as_json: bool) -> None:
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "model": model,
                    "node": node.address,
                    "url": node.url,
                    "text": answer.text,
                    "usage": {"prompt_tokens": answer.prompt_tokens, "completion_tokens": answer.completion_tokens},
                    "cost": {"compute": str(answer.compute_cost), "adapter": str(answer.adapter_cost), "total": str(answer.cost)},
                    "receipt_id": answer.request_id,
                    "receipt_verified": True,
                    "lane_totals": {"compute": str(answer.totals[0]), "adapter": str(answer.totals[1])},
                }
            )
        )
        return
    sys.stdout.write("\n")
    _note(
        f"cost {format_amount(answer.cost)} tokens (compute {format_amount(answer.compute_cost)}, adapter "
        f"{format_amount(answer.adapter_cost)}; {answer.prompt_tokens}+{answer.completion_tokens} tokens) · receipt "
        f"{answer.request_id} verified (node signature, lane, cost, output hash)"
    )

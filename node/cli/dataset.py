"""`loranode dataset create|contribute|accept|reject|show|list`: community datasets on chain."""

from __future__ import annotations

from pathlib import Path

import typer

from node.cli.common import connect, emit, event_of, load_account, tx_done
from node.cli.errors import CliError, handle_errors
from node.cli.options import DeploymentOpt, IpfsStoreOpt, JsonOpt, KeystoreOpt, KuboOpt, PasswordFileOpt, RpcOpt
from node.services.contributions import all_contributions, count_tokens
from node.services.errors import InputError
from node.services.uploads import upload

dataset_app = typer.Typer(name="dataset", help="Community datasets and their contributions.", no_args_is_help=True)


@dataset_app.command("create")
@handle_errors
def create(
    name: str = typer.Argument(..., help="Dataset name."),
    license: str = typer.Option("CC-BY-4.0", "--license", help="SPDX license of the data."),
    metadata: Path = typer.Option(None, "--metadata", help="Optional README/metadata file uploaded to IPFS."),
    rpc_url: str = RpcOpt,
    deployment: Path = DeploymentOpt,
    keystore: Path = KeystoreOpt,
    password_file: Path = PasswordFileOpt,
    ipfs_store: Path = IpfsStoreOpt,
    kubo_url: str = KuboOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Create a dataset; you become its curator."""
    if not name.strip() or len(name) > 200:
        raise InputError("dataset name must be 1-200 characters")
    c = connect(rpc_url, deployment)
    account = load_account(keystore, password_file)
    meta_cid = upload(metadata, ipfs_store, kubo_url) if metadata else ""
    receipt = c.datasets.create_dataset(account, name, license, meta_cid)
    ev = event_of(c, receipt, "DatasetCreated")
    tx_done(receipt, "dataset created", as_json, dataset_id=ev.dataset_id, metadata_cid=meta_cid)


@dataset_app.command("contribute")
@handle_errors
def contribute(
    dataset_id: int = typer.Argument(..., min=1),
    file: Path = typer.Argument(..., help="JSONL ({prompt,response} or {text}) or plain text."),
    rpc_url: str = RpcOpt,
    deployment: Path = DeploymentOpt,
    keystore: Path = KeystoreOpt,
    password_file: Path = PasswordFileOpt,
    ipfs_store: Path = IpfsStoreOpt,
    kubo_url: str = KuboOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Validate a data file, upload it to IPFS and submit it to a dataset (the curator accepts it)."""
    tokens = count_tokens(file)
    c = connect(rpc_url, deployment)
    if not c.datasets.dataset_exists(dataset_id):
        raise CliError(f"dataset {dataset_id} does not exist")
    account = load_account(keystore, password_file)
    cid = upload(file, ipfs_store, kubo_url)
    receipt = c.datasets.contribute(account, dataset_id, cid, tokens)
    ev = event_of(c, receipt, "ContributionSubmitted")
    tx_done(receipt, "contribution submitted", as_json, contribution_id=ev.contribution_id, cid=cid, tokens=tokens)


@dataset_app.command("accept")
@handle_errors
def accept(
    contribution_id: int = typer.Argument(..., min=1),
    weight: int = typer.Option(None, "--weight", min=1, help="Weight in the reward split (default: its size in tokens)."),
    rpc_url: str = RpcOpt,
    deployment: Path = DeploymentOpt,
    keystore: Path = KeystoreOpt,
    password_file: Path = PasswordFileOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Accept a pending contribution (curator only)."""
    c = connect(rpc_url, deployment)
    info = c.datasets.get_contribution(contribution_id)
    account = load_account(keystore, password_file)
    w = weight if weight is not None else max(1, info.size_tokens)
    receipt = c.datasets.accept(account, contribution_id, w)
    tx_done(receipt, "contribution accepted", as_json, contribution_id=contribution_id, weight=w)


@dataset_app.command("reject")
@handle_errors
def reject(
    contribution_id: int = typer.Argument(..., min=1),
    rpc_url: str = RpcOpt,
    deployment: Path = DeploymentOpt,
    keystore: Path = KeystoreOpt,
    password_file: Path = PasswordFileOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Reject a pending contribution (curator only)."""
    c = connect(rpc_url, deployment)
    account = load_account(keystore, password_file)
    receipt = c.datasets.reject(account, contribution_id)
    tx_done(receipt, "contribution rejected", as_json, contribution_id=contribution_id)


@dataset_app.command("show")
@handle_errors
def show(
    dataset_id: int = typer.Argument(..., min=1),
    rpc_url: str = RpcOpt,
    deployment: Path = DeploymentOpt,
    as_json: bool = JsonOpt,
) -> None:
    """A dataset and its contributions."""
    c = connect(rpc_url, deployment)
    if not c.datasets.dataset_exists(dataset_id):
        raise CliError(f"dataset {dataset_id} does not exist")
    info = c.datasets.get_dataset(dataset_id)
    contribs = [ci for ci in all_contributions(c) if ci.dataset_id == dataset_id]
    if as_json:
        emit({"dataset": info, "contributions": contribs}, True)
        return
    emit(
        info,
        False,
        title=f"dataset {dataset_id}",
        columns=["dataset_id", "name", "curator", "license", "total_weight", "contribution_count"],
    )
    emit(
        contribs,
        False,
        title="contributions",
        columns=["contribution_id", "contributor", "status", "weight", "size_tokens", "cid"],
    )


@dataset_app.command("list")
@handle_errors
def list_(rpc_url: str = RpcOpt, deployment: Path = DeploymentOpt, as_json: bool = JsonOpt) -> None:
    """Every dataset on chain."""
    c = connect(rpc_url, deployment)
    rows = [c.datasets.get_dataset(i) for i in range(1, c.datasets.dataset_count() + 1)]
    emit(
        rows,
        as_json,
        title="datasets",
        columns=["dataset_id", "name", "curator", "license", "total_weight", "contribution_count"],
    )

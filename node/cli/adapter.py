"""`loranode adapter publish|new-version|deprecate|show|list`: LoRA adapters on chain."""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import typer

from chain.protocol import TOTAL_BPS, adapter_model_name
from node.cli.common import connect, emit, event_of, load_account, tx_done
from node.cli.errors import CliError, handle_errors
from node.cli.options import DeploymentOpt, IpfsStoreOpt, JsonOpt, KeystoreOpt, KuboOpt, PasswordFileOpt, RpcOpt
from node.services.amounts import parse_amount
from node.services.errors import InputError
from node.services.uploads import upload

if TYPE_CHECKING:
    from inference.adapters import AdapterSpec

adapter_app = typer.Typer(name="adapter", help="Publish and manage LoRA adapters.", no_args_is_help=True)

MAX_RANK = 256


def parse_dataset_splits(text: str | None) -> tuple[list[int], list[int]]:
    """'3:2000,5:1000' -> ([3, 5], [2000, 1000])."""
    if not text:
        return [], []
    ids, bps = [], []
    for part in text.split(","):
        try:
            a, b = part.split(":")
            ids.append(int(a))
            bps.append(int(b))
        except ValueError:
            raise InputError(f"--datasets wants ID:BPS pairs separated by commas, got {part!r}") from None
    if len(set(ids)) != len(ids):
        raise InputError("--datasets names a dataset twice")
    if any(i <= 0 for i in ids) or any(b <= 0 for b in bps):
        raise InputError("dataset ids and bps must be positive")
    if sum(bps) > TOTAL_BPS:
        raise InputError(f"dataset bps sum to {sum(bps)}, more than {TOTAL_BPS}")
    pairs = sorted(zip(ids, bps, strict=True))  # the registry wants dataset ids ascending
    return [i for i, _ in pairs], [b for _, b in pairs]


def check_adapter_folder(folder: Path, base_model_id: str):
    """Validate the PEFT folder against the local base model before any gas is spent."""
    from transformers import AutoConfig

    from inference.adapters import AdapterValidationError, validate_adapter
    from inference.base_model import EMBEDDED_MODEL_ID, resolve_model_folder

    if base_model_id != EMBEDDED_MODEL_ID:
        raise InputError(f"only the embedded base model {EMBEDDED_MODEL_ID} can be validated locally, got {base_model_id!r}")
    config = AutoConfig.from_pretrained(str(resolve_model_folder(None)))
    try:
        return validate_adapter(folder, config, base_model_id=base_model_id, max_rank=MAX_RANK)
    except AdapterValidationError as e:
        raise InputError(f"adapter folder refused: {e}") from None


@contextlib.contextmanager
def prepared_adapter(folder: Path, base_model_id: str) -> Iterator[tuple[AdapterSpec, Path]]:
    """(spec, folder to upload). An adapter trained on a local copy of the served base names that
    folder in base_model_name_or_path: it is accepted when the folder holds the same model (config
    and weights fingerprint, `inference.base_match`), and a copy naming the base model id is what
    gets uploaded (nodes know the model by its id, not by a path on the trainer's machine)."""
    from inference.adapters import CONFIG_NAME, DEFAULT_MAX_CONFIG_BYTES, AdapterValidationError, _read_config
    from inference.base_match import BaseMismatch, check_same_base
    from inference.base_model import resolve_model_folder

    check_adapter_folder_exists(folder)
    try:
        config = _read_config(folder, DEFAULT_MAX_CONFIG_BYTES)
    except AdapterValidationError as e:
        raise InputError(f"adapter folder refused: {e}") from None
    declared = config.get("base_model_name_or_path")
    local = _local_base_path(declared, base_model_id)
    if local is None or not isinstance(declared, str):  # a local folder is only ever named by a string
        yield check_adapter_folder(folder, base_model_id), folder
        return
    fix = (
        f"set base_model_name_or_path in {folder / CONFIG_NAME} to {base_model_id!r} if it was trained on that "
        f"model, or train it on {base_model_id}"
    )
    if base_model_id == _default_base():
        try:
            check_same_base(local, resolve_model_folder(None))
        except BaseMismatch as e:
            raise InputError(
                f"adapter was trained on the local folder {declared[:200]!r}, which is not the served base "
                f"model {base_model_id}: {e.reason}; {fix}"
            ) from None
    with tempfile.TemporaryDirectory(prefix="loranode-publish-") as tmp:
        staged = Path(tmp) / folder.name
        shutil.copytree(folder, staged, symlinks=True)  # links stay links: validation refuses them
        (staged / CONFIG_NAME).unlink()
        (staged / CONFIG_NAME).write_text(json.dumps({**config, "base_model_name_or_path": base_model_id}, indent=2))
        yield check_adapter_folder(staged, base_model_id), staged


def check_adapter_folder_exists(folder: Path) -> None:
    if not folder.is_dir():
        raise InputError(f"adapter folder {folder} does not exist or is not a folder")


def _local_base_path(declared: object, base_model_id: str) -> Path | None:
    """The local folder an adapter's base_model_name_or_path names, or None when it is a model id."""
    from inference.adapters import _matches_base

    if not isinstance(declared, str) or not declared or len(declared) > 4096 or "\0" in declared:
        return None  # validation says what is wrong with it
    if _matches_base(declared, base_model_id, ()):
        return None
    path = Path(declared).expanduser()
    if declared.startswith(("/", "~", ".")) or path.is_dir():
        return path
    return None


def _default_base() -> str:
    from inference.embedded_model import EMBEDDED_MODEL_ID

    return EMBEDDED_MODEL_ID


@adapter_app.command("publish")
@handle_errors
def publish(
    folder: Path = typer.Argument(..., help="PEFT LoRA folder (adapter_config.json + adapter_model.safetensors)."),
    base_model: str = typer.Option(None, "--base-model", help="Base model id (default: the embedded SmolLM2-135M-Instruct)."),
    price: str = typer.Option(..., "--price", help="Price per 1K tokens, in tokens (e.g. 0.01)."),
    datasets: str = typer.Option(None, "--datasets", help="Dataset splits ID:BPS,...; the owner keeps the rest of 10,000."),
    rpc_url: str = RpcOpt,
    deployment: Path = DeploymentOpt,
    keystore: Path = KeystoreOpt,
    password_file: Path = PasswordFileOpt,
    ipfs_store: Path = IpfsStoreOpt,
    kubo_url: str = KuboOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Validate, upload to IPFS and register an adapter on chain."""
    base = base_model or _default_base()
    price_units = parse_amount(price)
    ids, bps = parse_dataset_splits(datasets)
    with prepared_adapter(folder, base) as (spec, upload_dir):
        c = connect(rpc_url, deployment)
        for d in ids:
            if not c.datasets.dataset_exists(d):
                raise CliError(f"dataset {d} does not exist")
        account = load_account(keystore, password_file)
        cid = upload(upload_dir, ipfs_store, kubo_url)
    receipt = c.adapters.register(account, base, cid, spec.rank, price_units, TOTAL_BPS - sum(bps), ids, bps)
    ev = event_of(c, receipt, "AdapterPublished")
    tx_done(receipt, "adapter published", as_json, adapter_id=ev.adapter_id, model=adapter_model_name(ev.adapter_id), cid=cid)


@adapter_app.command("new-version")
@handle_errors
def new_version(
    adapter_id: int = typer.Argument(..., min=1),
    folder: Path = typer.Argument(...),
    price: str = typer.Option(None, "--price", help="New price per 1K tokens (default: unchanged)."),
    rpc_url: str = RpcOpt,
    deployment: Path = DeploymentOpt,
    keystore: Path = KeystoreOpt,
    password_file: Path = PasswordFileOpt,
    ipfs_store: Path = IpfsStoreOpt,
    kubo_url: str = KuboOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Publish new weights for an adapter you own (splits stay as registered)."""
    c = connect(rpc_url, deployment)
    info = c.adapters.get_adapter(adapter_id)
    price_units = parse_amount(price) if price is not None else info.price_per_1k
    with prepared_adapter(folder, info.base_model_id) as (spec, upload_dir):
        account = load_account(keystore, password_file)
        if account.address != info.owner:
            raise CliError(f"adapter {adapter_id} belongs to {info.owner}, not to {account.address}")
        cid = upload(upload_dir, ipfs_store, kubo_url)
    receipt = c.adapters.publish_version(account, adapter_id, cid, spec.rank, price_units)
    ev = event_of(c, receipt, "AdapterPublished")
    tx_done(receipt, "new version published", as_json, adapter_id=adapter_id, version=ev.version, cid=cid)


@adapter_app.command("deprecate")
@handle_errors
def deprecate(
    adapter_id: int = typer.Argument(..., min=1),
    rpc_url: str = RpcOpt,
    deployment: Path = DeploymentOpt,
    keystore: Path = KeystoreOpt,
    password_file: Path = PasswordFileOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Deprecate an adapter you own; nodes unload it."""
    c = connect(rpc_url, deployment)
    account = load_account(keystore, password_file)
    receipt = c.adapters.deprecate(account, adapter_id)
    tx_done(receipt, "adapter deprecated", as_json, adapter_id=adapter_id)


_COLUMNS = [
    "adapter_id",
    "owner",
    "version",
    "rank",
    "price_per_1k",
    "owner_bps",
    "dataset_ids",
    "dataset_bps",
    "deprecated",
    "cid",
]


@adapter_app.command("show")
@handle_errors
def show(
    adapter_id: int = typer.Argument(..., min=1), rpc_url: str = RpcOpt, deployment: Path = DeploymentOpt, as_json: bool = JsonOpt
) -> None:
    """One adapter's registration."""
    c = connect(rpc_url, deployment)
    emit(c.adapters.get_adapter(adapter_id), as_json, title=adapter_model_name(adapter_id), columns=["base_model_id", *_COLUMNS])


@adapter_app.command("list")
@handle_errors
def list_(rpc_url: str = RpcOpt, deployment: Path = DeploymentOpt, as_json: bool = JsonOpt) -> None:
    """Every adapter on chain."""
    c = connect(rpc_url, deployment)
    rows = [c.adapters.get_adapter(i) for i in range(1, c.adapters.adapter_count() + 1)]
    emit(rows, as_json, title="adapters", columns=_COLUMNS)

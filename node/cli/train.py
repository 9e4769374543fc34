"""`loranode train`: fine-tune a LoRA adapter on CPU against the embedded base model."""

from __future__ import annotations

from pathlib import Path

import typer

from node.cli.common import connect, console, emit, run_async
from node.cli.errors import CliError, handle_errors
from node.cli.options import DeploymentOpt, IpfsStoreOpt, JsonOpt, RpcOpt
from node.services.contributions import all_contributions
from node.services.errors import InputError


def fetch_dataset_file(dataset_id: int, rpc_url: str, deployment: Path | None, store: Path | None, dest: Path) -> list[Path]:
    """Accepted contributions of an on-chain dataset, fetched from the embedded store and CID-verified."""
    from node.ipfs import EmbeddedStore
    from node.services.content import store_root
    from node.services.progress import transfer_bar

    c = connect(rpc_url, deployment)
    if not c.datasets.dataset_exists(dataset_id):
        raise CliError(f"dataset {dataset_id} does not exist")
    st = EmbeddedStore(store_root(store))
    files = []
    for info in all_contributions(c):
        if info.dataset_id == dataset_id and info.status == "accepted":
            dest_i = dest / f"contribution-{info.contribution_id}"
            with transfer_bar(f"fetching contribution {info.contribution_id}") as advance:
                files.append(run_async(st.fetch(info.cid, dest_i, 64 << 20, progress=advance)))
    if not files:
        raise CliError(f"dataset {dataset_id} has no accepted contributions")
    return files


@handle_errors
def train(
    data: Path = typer.Option(None, "--data", help="Local JSONL ({prompt,response} or {text}) or text file."),
    dataset: int = typer.Option(None, "--dataset", min=1, help="Train on an on-chain dataset's accepted contributions."),
    out: Path = typer.Option(..., "--out", help="Output PEFT folder."),
    rank: int = typer.Option(8, "--rank", min=1, max=256),
    alpha: int = typer.Option(16, "--alpha", min=1),
    steps: int = typer.Option(60, "--steps", min=1, max=100_000),
    batch_size: int = typer.Option(4, "--batch-size", min=1, max=512),
    lr: float = typer.Option(2e-3, "--lr", min=1e-7, max=1.0),
    max_length: int = typer.Option(96, "--max-length", min=8, max=4096),
    seed: int = typer.Option(0, "--seed"),
    last_layers: int = typer.Option(None, "--last-layers", min=1, help="Adapt only the last N layers (faster on CPU)."),
    rpc_url: str = RpcOpt,
    deployment: Path = DeploymentOpt,
    ipfs_store: Path = IpfsStoreOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Fine-tune a LoRA with PEFT on CPU; writes a folder ready for `loranode adapter publish`."""
    import tempfile

    from inference.base_model import load_base_model
    from inference.training import TrainConfig, TrainingDataError, read_records, train_lora

    if (data is None) == (dataset is None):
        raise InputError("give exactly one of --data FILE or --dataset ID")
    if data is not None and not data.exists():
        raise InputError(f"cannot read {data}: no such file or folder")
    if out.exists() and any(out.iterdir()):
        raise InputError(f"{out} exists and is not empty")
    with tempfile.TemporaryDirectory() as tmp:
        files = [data] if data else fetch_dataset_file(dataset, rpc_url, deployment, ipfs_store, Path(tmp))
        records = []
        try:
            for f in files:
                for p in [f] if f.is_file() else sorted(x for x in f.rglob("*") if x.is_file()):
                    records += read_records(p)
        except TrainingDataError as e:
            raise InputError(str(e)) from None
    if not records:
        raise InputError("no training records found")  # checked before the model is loaded
    base = load_base_model()
    cfg = TrainConfig(
        rank=rank,
        alpha=alpha,
        steps=steps,
        batch_size=batch_size,
        learning_rate=lr,
        max_length=max_length,
        seed=seed,
        last_layers=last_layers,
    )
    from rich.progress import Progress

    with Progress(console=console, transient=True, disable=as_json) as bar:
        task = bar.add_task("training", total=steps)
        report = train_lora(
            base, records, out, cfg, progress=lambda s, loss: bar.update(task, completed=s, description=f"loss {loss:.3f}")
        )
    emit(
        {
            "out": str(out),
            "steps": report.steps,
            "examples": report.examples,
            "seconds": round(report.seconds, 1),
            "first_loss": round(report.first_loss, 4),
            "last_loss": round(report.last_loss, 4),
        },
        as_json,
        title="trained",
    )

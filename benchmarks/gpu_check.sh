#!/usr/bin/env bash
# The GPU checks in one run, for a machine with CUDA (under 10 minutes on one modern GPU):
#   1. tests/gpu            the engine on CUDA against PEFT, bf16 path, pinned host tier, side-stream loads
#   2. bench_engine --quick the multi-LoRA engine benchmark (RESULT line)
#   3. bench_vllm --quick   the node as gateway in front of vLLM (the `vllm` package, CUDA build)
#                           and builtin vs vLLM on 16 distinct adapters (RESULT line)
# Needs: `make install build` done (.venv with a CUDA torch, compiled contracts, anvil), and a vLLM
# virtualenv with the CUDA `vllm` package at $VLLM_VENV (default .venv-vllm-cuda); when it is
# missing the script builds it with `make vllm-venv` (needs the package index). Every step's output
# goes to $OUT_DIR (default gpu-check-out/); the exit status is non-zero if any step failed.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${OUT_DIR:-gpu-check-out}
VLLM_VENV=${VLLM_VENV:-.venv-vllm-cuda}
PY=.venv/bin/python
mkdir -p "$OUT_DIR"
status=0
started=$(date +%s)

step() {  # step NAME SECONDS COMMAND...: bounded in time, output kept, failures counted
  local name=$1 limit=$2; shift 2
  echo "== $name (limit ${limit}s, at +$(( $(date +%s) - started ))s)"
  timeout --kill-after=15 "$limit" "$@" >"$OUT_DIR/$name.log" 2>&1
  local rc=$?
  tail -n 5 "$OUT_DIR/$name.log"
  grep '^RESULT ' "$OUT_DIR/$name.log" >>"$OUT_DIR/results.txt" || true
  if [ $rc -ne 0 ]; then echo "!! $name failed (exit $rc)"; status=1; fi
}

"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
  || { echo "no CUDA visible to $PY: this script is for a GPU machine"; exit 2; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT_DIR/gpu.txt"

if [ ! -f "$VLLM_VENV/.stamp-install" ]; then
  step vllm-venv 300 make vllm-venv VLLM_VENV="$VLLM_VENV" VLLM_PACKAGE=vllm VLLM_TORCH= VLLM_REMOVE=
fi

step tests-gpu 150 "$PY" -m pytest tests/gpu -q -x -p no:cacheprovider
step bench-engine 150 "$PY" benchmarks/bench_engine.py --quick
if [ -f "$VLLM_VENV/.stamp-install" ]; then
  # on a GPU vLLM's defaults are right: 16-bit weights; a third of the GPU leaves room for the builtin engine's run
  step bench-vllm 240 "$PY" benchmarks/bench_vllm.py --quick --venv "$VLLM_VENV" --vllm-dtype auto --memory-fraction 0.3
else
  echo "!! no vLLM virtualenv at $VLLM_VENV: the gateway benchmark did not run"; status=1
fi
echo "== done in $(( $(date +%s) - started ))s; RESULT lines in $OUT_DIR/results.txt"
exit $status

#!/usr/bin/env bash
# GPU check of DynSDPB on a machine with CUDA, torch and transformers but no TRL and no network:
#   1. installs TRL, the transformers version this project is tested with, datasets and this project from the wheels
#      in scripts/wheels/ (offline, --no-deps, into $SITE, put first on PYTHONPATH: the machine's packages stay as
#      they are);
#   2. python -m scripts.gpu_check: the fused kernel in bf16 against the naive logits path on CUDA, the trainer on the GPU
#      (JSON: benchmarks/results/gpu_check_cuda.json);
#   3. python -m benchmarks.bench_step on a Qwen2.5-0.5B-shaped model in bf16, DynSDPB against plain SFTTrainer
#      (JSON: benchmarks/results/step_qwen25_05b_cuda.json).
#
# Usage:   bash scripts/gpu_check.sh                 (on the GPU machine; ~5 minutes on an H200)
#          bash scripts/gpu_check.sh --device cpu    (dry run of the same steps, small, here; JSON to /tmp)
#
# Build the wheels first, on a machine with this project's .venv and access to PyPI (the GPU image is Python 3.12;
# PYVER=3.11 for a dry run with this .venv's Python):
#          bash scripts/gpu_check.sh --build-wheels
# which runs, for the versions installed in .venv (trl, transformers, datasets and the two datasets needs that a
# CUDA image rarely has, dill and multiprocess):
#          .venv/bin/python -m pip wheel --no-deps --no-build-isolation -w scripts/wheels .
#          .venv/bin/python -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#              --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d scripts/wheels \
#              trl==X transformers==X datasets==X dill==X multiprocess==X
# EXTRA="name==version ..." adds wheels; gpu_check.py reports any requirement the machine still does not meet.
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE=cuda
BUILD=0
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE=$2; shift 2 ;;
    --build-wheels) BUILD=1; shift ;;
    *) echo "gpu_check.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
WHEELS=${WHEELS:-scripts/wheels}

if [ "$BUILD" = 1 ]; then
  VPY=${VENV_PYTHON:-.venv/bin/python}
  PKGS=$("$VPY" -c 'from importlib.metadata import version as v; print(" ".join(f"{n}=={v(n)}" for n in
    ("trl", "transformers", "datasets", "dill", "multiprocess")))')
  mkdir -p "$WHEELS"
  "$VPY" -m pip wheel -q --no-deps --no-build-isolation -w "$WHEELS" .
  # shellcheck disable=SC2086
  "$VPY" -m pip download -q --no-deps --only-binary=:all: --python-version "${PYVER:-3.12}" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d "$WHEELS" $PKGS ${EXTRA:-}
  ls "$WHEELS"
  exit 0
fi

PY=${PYTHON:-python3}
if [ "$DEVICE" = cpu ]; then
  RESULTS=${RESULTS:-/tmp/dynsdpb-gpu-check-dryrun}
  SITE=${SITE:-/tmp/dynsdpb-gpu-check-dryrun/site}
  STEP_ARGS=(--model tiny --steps 3 --warmup 1 --repeats 1 --batch 2 --seq-len 64 --no-memory --dtype float32)
  STEP_OUT=step_tiny_cpu.json
else
  RESULTS=${RESULTS:-benchmarks/results}
  SITE=${SITE:-/tmp/dynsdpb-site}
  STEP_ARGS=(--model qwen2.5-0.5b-shape --steps 8 --warmup 2 --repeats 2 --batch 4 --seq-len 512 --dtype bfloat16)
  STEP_OUT=step_qwen25_05b_cuda.json
fi
ls "$WHEELS"/*.whl >/dev/null 2>&1 || {
  echo "gpu_check.sh: no wheels in $WHEELS; build them where PyPI is reachable: bash scripts/gpu_check.sh --build-wheels" >&2
  exit 2
}
rm -rf "$SITE"
"$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$WHEELS"/*.whl
# $SITE first, then this checkout for the benchmarks package; `-P` below keeps the checkout's own dynsdpb_selfplay from
# coming first (python -m would put the current folder ahead of PYTHONPATH).
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# From $SITE, not from this checkout: drop the current folder that `python -c` puts first on sys.path.
"$PY" -c 'import sys; sys.path.pop(0); import dynsdpb_selfplay, trl, transformers
print("dynsdpb_selfplay", dynsdpb_selfplay.__file__, "| trl", trl.__version__, "| transformers", transformers.__version__)'
mkdir -p "$RESULTS"
status=0
"$PY" -P -m scripts.gpu_check --device "$DEVICE" --out "$RESULTS/gpu_check_$DEVICE.json" || status=$?
"$PY" -P -m benchmarks.bench_step "${STEP_ARGS[@]}" --out "$RESULTS/$STEP_OUT" || status=$?
echo "gpu_check.sh: exit $status; results in $RESULTS"
exit $status

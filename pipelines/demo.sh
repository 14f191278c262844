#!/usr/bin/env bash
# The README's main command: set up (idempotent), then two self-training rounds of SmolLM2-135M-Instruct with
# DynSDPB on the built-in arith task, and print where the report is. Re-running starts the demo over.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
.venv/bin/dynsdpb models prepare smollm2-135m-instruct
exec .venv/bin/dynsdpb run pipelines/configs/demo.yaml --overwrite "$@"

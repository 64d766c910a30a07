# Two commands from a fresh clone with Python 3.11: `make demo`, `make test`.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DIR ?= runs/demo

.PHONY: setup demo test bench clean

$(STAMP): requirements.lock pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found; install Python 3.11 or run 'make PYTHON=/path/to/python3.11 ...'"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e .
	@touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(PY) -m jest_jax.demo --workdir $(DEMO_DIR)

test: $(STAMP)
	$(PY) -m pytest -n 2 -q tests

clean:
	rm -rf $(VENV) runs

# Two commands matter: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.tunebot-installed

.PHONY: demo test lint install clean-venv

$(STAMP): pyproject.toml requirements/runner-cpu.txt requirements/ray.txt .ci/torchaudio-standin/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# 1. the bot side (no torch) and the test tools
	$(PIP) install -q -e '.[test]'
	# 2. the runner side, pinned, CPU torch (a GPU host follows the README's GPU install instead)
	$(PIP) install -q -r requirements/runner-cpu.txt
	# 3. llamafactory without its GPU-host dependencies, and the CPU-only torchaudio stand-in
	$(PIP) install -q --no-deps llamafactory==0.9.5
	$(PIP) install -q --no-deps ./.ci/torchaudio-standin
	# 4. the Ray backend (its tests start a real local Ray head)
	$(PIP) install -q -r requirements/ray.txt
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/tunebot demo

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean-venv:
	rm -rf $(VENV)

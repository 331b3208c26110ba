# The whole set-up on a fresh machine is `make run` or `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: run test bench reliability-long soak clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,broker]'
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m omsd.dev.demo

# Two test files at a time (a module's tests stay together, in one process with its own broker).
test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile

bench: $(STAMP)
	$(PY) bench/run_all.py

# Release checks, not in CI: the long forms of the reliability suites, and an hour of uploads and kills.
reliability-long: $(STAMP)
	OMSD_SLOW=1 $(PY) -m pytest -q -m slow tests/reliability

soak: $(STAMP)
	$(PY) -m tests.reliability.soak --minutes 60

clean:
	rm -rf $(VENV) var .pytest_cache

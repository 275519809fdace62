# Two commands for a fresh machine (each creates .venv when missing):
#   make demo   install, then the main job on the built-in synthetic data
#   make test   install, then lint + the test suite
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEMO_DIR ?= runs/demo
# pytest-xdist workers (by test file: module fixtures are built once); 0 runs serially.
TEST_WORKERS ?= 2

.PHONY: venv demo test lint bazel-test clean

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip check
	touch $@

demo: venv
	bash scripts/demo.sh $(DEMO_DIR)

lint: venv
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

test: lint
	$(PY) -m pytest -q --durations=15 -n $(TEST_WORKERS) --dist loadfile

bazel-test: venv
	bash .ci/bazel_test

clean:
	rm -rf $(DEMO_DIR)

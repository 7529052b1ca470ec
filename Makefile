# Two commands for a newcomer: `make run` and `make test`. Every target
# creates the virtual environment from the pinned requirements first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PIP    := $(BIN)/pip --disable-pip-version-check -q

.PHONY: venv run test bench clean

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -r requirements-dev.txt
	$(PIP) install --no-deps --no-build-isolation -e .
	touch $(STAMP)

venv: $(STAMP)

# Train, evaluate and predict on the sample dataset the package ships.
run: $(STAMP)
	$(BIN)/python -m mlbackend.demo

test: $(STAMP)
	$(BIN)/pytest --cov=mlbackend --cov-report=term-missing

clean:
	rm -rf build dist *.egg-info .pytest_cache .coverage htmlcov

# Speed, memory and quality on the shared real datasets, beside the old
# backend's figures (needs ../shared/datasets; see bench/bench.py --help).
bench: $(STAMP)
	$(BIN)/python bench/bench.py $(BENCH_ARGS)

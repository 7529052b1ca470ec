# Two commands for a newcomer: `make run` and `make test`. Every target
# creates the virtual environment from the pinned requirements first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PIP    := $(BIN)/pip --disable-pip-version-check -q

.PHONY: venv run test fuzz bench clean

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

# Hostile input at length: the property-based tests with thousands of fresh
# examples (make test runs a few, the same every time). Failing examples are
# kept in .hypothesis/ and replayed first by the next run.
fuzz: $(STAMP)
	MLBACKEND_FUZZ=1 $(BIN)/pytest tests/test_fuzz.py tests/test_server_hostile.py \
		--hypothesis-show-statistics

clean:
	rm -rf build dist *.egg-info .pytest_cache .coverage htmlcov

# Set-up in two commands: `make run` and `make test` keep a virtual environment in .venv in step
# with the requirements, then run the pipeline or the test suite. Needs only make and Python 3.11+;
# without make, the README's long form does the same by hand.
#
#   make run                          # python main.py in .venv (created or updated first when needed)
#   make run ARGS="--coins bitcoin"   # options pass through
#   make test                         # adds requirements-dev.txt, runs the whole suite
#   make run PYTHON=python3.12        # the interpreter that creates .venv (default python3)
#   make run VENV=/srv/venv           # another virtual environment, created there when missing
PYTHON ?= python3
VENV ?= .venv
ARGS ?=
BIN = $(VENV)/bin
# Stamps inside the venv: newer than the requirements they name means installed and current,
# so an edited (or pulled) requirements file triggers one `pip install` and nothing else does.
RUNTIME_STAMP = $(VENV)/.installed-requirements
DEV_STAMP = $(VENV)/.installed-requirements-dev
PIP = $(BIN)/python -m pip install --quiet --disable-pip-version-check

.DEFAULT_GOAL := help

help:
	@echo "make run [ARGS=\"--coins bitcoin\"]   run the pipeline once (creates .venv when needed)"
	@echo "make test [ARGS=\"-k cli\"]           run the test suite on 2 processes (adds the test requirements)"
	@echo "make test-fast                      the quick tier, on 3 processes: no crash, hostile or fault-matrix module, no heavy tests"
	@echo "make lint                           ruff (lint, format check), mypy, cfn-lint template.yaml, lint-imports"

run: $(RUNTIME_STAMP)
	$(BIN)/python main.py $(ARGS)

# The tests are unittest test cases (`python -m unittest discover -s tests` runs them all, one at a time);
# make runs them with pytest and pytest-xdist on TEST_WORKERS processes at once. Each test has its own temp
# folder, fake CoinGecko on port 0 and S3 bucket, so nothing is shared between the processes.
TEST_WORKERS ?= 2
PYTEST = $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist worksteal
# The project's byte code, compiled once before the tests: hundreds of tests start a `python main.py` child,
# and where PYTHONDONTWRITEBYTECODE is set (many CI images and containers) each child would otherwise compile
# every module it imports from source again (about half of `python main.py status`'s start-up).
COMPILE = $(BIN)/python -m compileall -q main.py flows lambdas utils tests

test: $(DEV_STAMP)
	$(COMPILE)
	$(PYTEST) tests $(ARGS)

# The suite without its three slowest modules (crash concurrency, hostile servers, the fault matrix), and
# without the heavy rest of a few checks whose quick part stays (TEST_FAST=1 skips the tests marked slow_part
# and those listed in tests/conftest.py, each with what it adds).
SLOW_MODULES = tests/test_crash_concurrency.py tests/test_hostile.py tests/test_fault_matrix.py
FAST_MODULES = $(filter-out $(SLOW_MODULES),$(sort $(wildcard tests/test_*.py)))

# On three processes by default (FAST_WORKERS): on 2 cores a third one uses the time the other two spend waiting
# on their `python main.py` children, sockets and real back-off (79 s against 90 s on two, same tests).
FAST_WORKERS ?= 3

test-fast: $(DEV_STAMP)
	$(COMPILE)
	TEST_FAST=1 $(BIN)/python -m pytest -n $(FAST_WORKERS) --dist worksteal $(FAST_MODULES) $(ARGS)

# Tool settings live in pyproject.toml (ruff, mypy) and .importlinter (the import contracts).
lint: $(DEV_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/cfn-lint template.yaml
	$(BIN)/lint-imports

$(RUNTIME_STAMP): requirements.txt
	@if [ ! -x "$(BIN)/python" ]; then \
		$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null || { \
			echo "make: Python 3.11 or newer is needed to create $(VENV), and '$(PYTHON)' is not one;" \
			     "install it, or name one: make $(MAKECMDGOALS) PYTHON=python3.12" >&2; exit 2; }; \
		echo "$(PYTHON) -m venv $(VENV)"; $(PYTHON) -m venv "$(VENV)"; \
	fi
	$(PIP) -r requirements.txt
	@touch "$@"

$(DEV_STAMP): $(RUNTIME_STAMP) requirements-dev.txt requirements-aws.txt
	$(PIP) -r requirements-dev.txt
	@touch "$@"

# Lambda build for `sam build` (template.yaml uses BuildMethod: makefile): the code and each function's own
# requirements (requirements-lambda-*.txt), so each zip stays under Lambda's 250 MB unzipped; the Lambda
# runtime brings boto3, and the test tools stay out. The Load and Charts functions, which need the Delta
# table's packages, are a container image (lambdas/Dockerfile). Lambda's Python 3.12 runs on glibc 2.34:
# any manylinux wheel up to 2_34 fits.
LAMBDA_TARGETS = build-ExtractFunction build-TransformFunction
LAMBDA_PLATFORMS = --platform manylinux2014_aarch64 --platform manylinux_2_24_aarch64 \
	--platform manylinux_2_28_aarch64 --platform manylinux_2_34_aarch64
build-ExtractFunction build-TransformFunction: LAMBDA_REQUIREMENTS = requirements-lambda-fetch.txt

$(LAMBDA_TARGETS):
	@test -n "$(ARTIFACTS_DIR)" || { echo "make $@: ARTIFACTS_DIR is unset; run it through sam build" >&2; exit 2; }
	cp -r lambdas utils "$(ARTIFACTS_DIR)/"
	cp "$(LAMBDA_REQUIREMENTS)" "$(ARTIFACTS_DIR)/"
	echo 'python-dateutil>=2.8.2,<3  # the Lambda runtime'"'"'s botocore needs <3' >> "$(ARTIFACTS_DIR)/$(LAMBDA_REQUIREMENTS)"
	python3 -m pip install --quiet --target "$(ARTIFACTS_DIR)" $(LAMBDA_PLATFORMS) \
		--implementation cp --python-version 3.12 --only-binary=:all: -r "$(ARTIFACTS_DIR)/$(LAMBDA_REQUIREMENTS)"
	# Test suites and byte-code caches of the packages: dead weight in a function.
	find "$(ARTIFACTS_DIR)" -type d \( -name tests -o -name __pycache__ \) -prune -exec rm -rf {} +
	rm -f "$(ARTIFACTS_DIR)"/requirements-lambda-*.txt

.PHONY: help run test test-fast lint $(LAMBDA_TARGETS)

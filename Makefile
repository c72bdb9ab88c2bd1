# Two commands for users: `make run` (install everything, run the main job) and `make test`.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# llama-cpp-python is built from source. A native build (the default) uses CPU instructions some hypervisors do
# not pass through and crashes on the first decode, so it is built portably, once per machine, into a
# wheelhouse keyed by version and flags. pip's own wheel cache ignores CMAKE_ARGS, so it is bypassed.
LLAMA_VERSION := 0.3.36
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF
WHEELHOUSE ?= $(HOME)/.cache/prompt-workspace/wheelhouse/llama-cpp-python-$(LLAMA_VERSION)-ggml-native-off

.PHONY: install run test bench lab clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	@if ! ls $(WHEELHOUSE)/llama_cpp_python-$(LLAMA_VERSION)-*.whl >/dev/null 2>&1; then \
	  echo "building llama-cpp-python $(LLAMA_VERSION) with CMAKE_ARGS=$(LLAMA_CMAKE_ARGS) (about 5 minutes, once)"; \
	  rm -rf $(WHEELHOUSE).partial && mkdir -p $(WHEELHOUSE).partial && \
	  CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/python -m pip wheel --quiet --no-cache-dir --no-deps \
	    llama-cpp-python==$(LLAMA_VERSION) -w $(WHEELHOUSE).partial && \
	  rm -rf $(WHEELHOUSE) && mv $(WHEELHOUSE).partial $(WHEELHOUSE); \
	fi
	$(BIN)/python -m pip install --quiet --no-deps --force-reinstall $(WHEELHOUSE)/llama_cpp_python-$(LLAMA_VERSION)-*.whl
	$(BIN)/python -m pip install --quiet --find-links $(WHEELHOUSE) -e '.[dev]'
	$(BIN)/prompt-workspace doctor
	@touch $@

run: $(STAMP)
	$(BIN)/prompt-workspace demo

# Lint, format and types first (a minute), then the suite. Three workers on two cores: much of the suite waits on
# PostgreSQL, subprocesses and servers rather than the CPU.
test: $(STAMP)
	$(BIN)/ruff check workspace udfs tests bench
	$(BIN)/ruff format --check workspace udfs tests bench
	$(BIN)/python -m mypy workspace udfs
	$(BIN)/python -m pytest -n 3 --maxschedchunk=2 --durations=25

bench: $(STAMP)
	$(BIN)/python bench/run.py

lab: $(STAMP)
	$(BIN)/prompt-workspace lab

clean:
	rm -rf $(VENV) .pixeltable runs reports

# vmr: every install step lives here, so a fresh clone needs only `make demo` or `make test`.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
# llama-cpp-python is compiled here; native CPU tuning off so the build runs on any x86-64.
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF

.PHONY: install install-dev system-deps demo serve test lint typecheck pytest bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/pip install -q -e '.[dev,llm,speech,ray]'
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev system-deps

system-deps:
	bash scripts/system-deps.sh

demo: install
	bash scripts/demo.sh

lint: install-dev
	$(BIN)/ruff check agent streams llm_server bench tests
	$(BIN)/ruff format --check agent streams llm_server bench tests

typecheck: install-dev
	$(BIN)/mypy

pytest: install-dev
	$(BIN)/pytest -q -ra

test: lint typecheck pytest

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache

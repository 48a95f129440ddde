PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test lint contract bench-mnist bench-methods bench-throughput bench-load clean

# Idempotent: re-installs only when pyproject.toml changed.
install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

run: install
	$(BIN)/distillery up

test: install
	$(BIN)/python -m pytest

bench-mnist: install
	$(BIN)/python benchmarks/mnist_service.py

bench-methods: install
	$(BIN)/python benchmarks/methods.py

# kdcore vs torchdistill (the benchmark-only extra `bench`) vs a textbook loop; see docs/benchmarks.md
bench-throughput: install
	$(BIN)/python -m pip install -q -e '.[dev,bench]'
	$(BIN)/python benchmarks/throughput.py $(ARGS)

# 500 jobs in a burst while 100 clients poll and stream; see docs/operations.md#load
bench-load: install
	$(BIN)/python benchmarks/load.py $(ARGS)

lint: install
	$(BIN)/ruff check .

contract: install
	$(BIN)/python ../shared/checks/contract.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info

PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install browser docs-screenshots ui-screenshot run test lint contract bench-mnist bench-methods bench-throughput bench-load bench-data-scale clean

# Idempotent: re-installs only when pyproject.toml changed.
install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

# Headless Chromium for tests/api/test_docs_ui.py: Debian's package (playwright's own browser downloads
# are not reachable here). Installed when missing and make runs as root; otherwise that test fails
# naming the command to run.
browser:
	@command -v chromium >/dev/null 2>&1 || [ "$$(id -u)" -ne 0 ] || \
		{ apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; }

run: install
	$(BIN)/distillery up

# Two pytest processes on the 2 cores CI has (see pyproject's pytest-xdist note); `pytest -n 0` runs in one.
test: install browser
	$(BIN)/python -m pytest -n 2 --dist loadfile

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

# Image-folder uploads at scale: upload, prepare once, train from the store, input pipelines side by side;
# see docs/benchmarks.md#data-at-scale (ARGS="--images 50000" for the issue's full scale)
bench-data-scale: install
	$(BIN)/python benchmarks/data_scale.py $(ARGS)

# Refreshes docs/swagger-ui.png from the real page (the same test, with its screenshot kept under docs/)
docs-screenshots: install browser
	KD_DOCS_SCREENSHOTS=docs $(BIN)/python -m pytest -q -p no:cacheprovider tests/api/test_docs_ui.py -k swagger_ui

# Refreshes docs/dashboard.png: the dashboard test following a real job, its screenshot kept under docs/
ui-screenshot: install browser
	KD_DOCS_SCREENSHOTS=docs $(BIN)/python -m pytest -q -p no:cacheprovider -n 0 tests/api/test_dashboard.py -k follows

lint: install
	$(BIN)/ruff check .

contract: install
	$(BIN)/python ../shared/checks/contract.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info

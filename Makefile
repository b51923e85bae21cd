# The two commands of the README are `make demo` and `make test`; the rest are steps of theirs.
PYTHON := .venv/bin/python
.DEFAULT_GOAL := help

.PHONY: help setup demo test test-fast bench bench-serving serve serve-prod stop clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

setup:  ## create .venv with the pinned packages (fast when nothing changed)
	@bash scripts/setup.sh

demo: setup  ## demo data → train → export → .mar → TorchServe → two predictions (server keeps running)
	$(PYTHON) -m scripts.demo

test: setup  ## the whole test suite, end-to-end tests included
	$(PYTHON) -m pytest

test-fast: setup  ## the suite without the slow (minutes-long) tests
	$(PYTHON) -m pytest -m "not slow"

bench: setup  ## training throughput: real data pipeline vs bare loop (docs/BENCHMARKS.md)
	$(PYTHON) -m benchmarks.train_throughput
	$(PYTHON) -m benchmarks.train_throughput --model-name mobilenetv2_100

bench-serving: setup  ## serving: TorchServe vs in-process limit vs naive Flask server, c=1..64 (docs/BENCHMARKS.md)
	@test -f build/demo/run/export/model.torchscript.pt || $(PYTHON) -m scripts.demo --stop
	$(PYTHON) -m benchmarks.serving

serve: setup  ## serve model_store/deepfake.mar with the dev config (no auth!) in the foreground; Ctrl-C stops it
	$(PYTHON) -m scripts.serve start --foreground

serve-prod: setup  ## serve it with config/production.properties (token auth on) in the foreground
	$(PYTHON) -m scripts.serve start --config production --foreground

stop:  ## stop the TorchServe that make demo / make serve started
	@if [ -x $(PYTHON) ]; then $(PYTHON) -m scripts.serve stop; else echo "nothing to stop"; fi

clean: stop  ## remove build outputs (keeps .venv)
	rm -rf build model_store/*.mar .pytest_cache

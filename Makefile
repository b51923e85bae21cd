# The two commands of the README are `make demo` and `make test`; the rest are steps of theirs.
PYTHON := .venv/bin/python
.DEFAULT_GOAL := help

.PHONY: help setup demo test test-fast bench bench-serving serve serve-prod stop web screenshot clean ensemble

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

setup:  ## create .venv with the pinned packages (fast when nothing changed)
	@bash scripts/setup.sh

demo: setup  ## demo data → train → export → .mar → TorchServe → two predictions (server keeps running)
	$(PYTHON) -m scripts.demo

# When pytest dies in native code (no report of its own), name the test it was running (tests/conftest.py).
NAME_CRASHED_TEST = || { status=$$?; test ! -f build/test-output/running-test || \
	echo "pytest died (exit $$status) while running $$(cat build/test-output/running-test)" >&2; exit $$status; }

test: setup  ## the whole test suite, end-to-end tests included
	$(PYTHON) -m pytest $(NAME_CRASHED_TEST)

test-fast: setup  ## the suite without the slow (minutes-long) tests
	$(PYTHON) -m pytest -m "not slow" $(NAME_CRASHED_TEST)

bench: setup  ## training throughput: real data pipeline vs bare loop (docs/BENCHMARKS.md)
	$(PYTHON) -m benchmarks.train_throughput
	$(PYTHON) -m benchmarks.train_throughput --model-name mobilenetv2_100

bench-serving: setup  ## serving: TorchServe vs in-process limit vs naive Flask server, c=1..64 (docs/BENCHMARKS.md)
	@test -f build/demo/run/export/model.torchscript.pt || $(PYTHON) -m scripts.demo --stop
	$(PYTHON) -m benchmarks.serving

ENSEMBLE_RUN := build/ensemble
ensemble: setup  ## ResNet18 + EfficientNet-Lite0 ensemble: train (~6 min CPU), evaluate, package, serve as a workflow
	@test -f build/demo/run/export/model.torchscript.pt || $(PYTHON) -m scripts.demo --stop
	@test -f $(ENSEMBLE_RUN)/resnet18/export/model.torchscript.pt || $(PYTHON) -m training.train \
		--dataset build/demo/data/manifest.csv --output-dir $(ENSEMBLE_RUN)/resnet18 \
		--model-name resnet18 --weights none --epochs 5 --lr 0.001
	$(PYTHON) -m training.ensemble --member resnet18=$(ENSEMBLE_RUN)/resnet18/export \
		--member efficientnet_lite0=build/demo/run/export --output-dir $(ENSEMBLE_RUN)/eval
	$(PYTHON) -m scripts.package_workflow --ensemble $(ENSEMBLE_RUN)/eval/ensemble.json --model-store model_store
	-@$(PYTHON) -m scripts.serve stop
	$(PYTHON) -m scripts.serve start --workflow-store model_store
	$(PYTHON) -m scripts.package_workflow --ensemble $(ENSEMBLE_RUN)/eval/ensemble.json --reuse-members \
		--register http://127.0.0.1:8081
	curl -s -H "Content-Type: image/jpeg" --data-binary @build/demo/samples/fake_sample.jpg \
		http://127.0.0.1:8080/wfpredict/deepfake_ensemble

serve: setup  ## serve model_store/deepfake.mar with the dev config (no auth!) in the foreground; Ctrl-C stops it
	$(PYTHON) -m scripts.serve start --foreground

serve-prod: setup  ## serve it with config/production.properties (token auth on) in the foreground
	$(PYTHON) -m scripts.serve start --config production --foreground

web: setup  ## web page on http://127.0.0.1:8090 for the running TorchServe (make serve/demo); Ctrl-C stops it
	$(PYTHON) -m scripts.webapp

screenshot: setup  ## regenerate docs/images/web-page.png: the browser test (chromium, its own TorchServe) at 1280x800
	WEB_SCREENSHOT=1 $(PYTHON) -m pytest tests/browser/test_web_page.py -q -p no:cacheprovider

stop:  ## stop the TorchServe that make demo / make serve started
	@if [ -x $(PYTHON) ]; then $(PYTHON) -m scripts.serve stop; else echo "nothing to stop"; fi

clean: stop  ## remove build outputs (keeps .venv)
	rm -rf build model_store/*.mar .pytest_cache

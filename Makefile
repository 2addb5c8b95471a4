# One-line targets. A fresh machine needs only `make run` or `make test`: both set up .venv first.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
SHARED_DATA ?= ../shared/data/ai-vs-real
SERVICE_CODE := common training export

.PHONY: setup run test lint typecheck pytest train evaluate data-report clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV) && $(BIN)/pip install --quiet --upgrade pip && $(BIN)/pip install --quiet -e ".[dev]" && touch $@

run: setup
	@echo "make run (the detector served locally) lands with the serving and gateway issues (#4, #5); today: make train / make evaluate" && exit 1

test: setup lint typecheck pytest

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

typecheck: setup
	$(BIN)/mypy $(SERVICE_CODE)

pytest: setup
	$(BIN)/pytest

train: setup
	$(BIN)/python -m training.train --data $(SHARED_DATA) --backbone efficientnet_lite0 --output runs/efficientnet_lite0

data-report: setup
	$(BIN)/python -m training.data report $(SHARED_DATA)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache

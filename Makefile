# One-line targets. A fresh machine needs only `make run` or `make test`: both set up .venv first.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
SHARED_DATA ?= ../shared/data/ai-vs-real
SERVICE_CODE := common training export serving gateway k8s
# checkov (policy scan of k8s/) pins packages that conflict with .venv's (packaging, networkx,
# python-dateutil...), so it lives in a virtualenv of its own.
TOOLS_VENV := .venv-tools

.PHONY: setup tools run test lint typecheck pytest train evaluate data-report clean k8s-render

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV) && $(BIN)/pip install --quiet --upgrade pip && $(BIN)/pip install --quiet -e ".[dev]" && touch $@

tools: $(TOOLS_VENV)/.installed

$(TOOLS_VENV)/.installed: k8s/checkov-requirements.txt
	$(PYTHON) -m venv $(TOOLS_VENV) && echo '*' > $(TOOLS_VENV)/.gitignore && $(TOOLS_VENV)/bin/pip install --quiet -r k8s/checkov-requirements.txt && touch $@

run: setup
	$(BIN)/python -m gateway.run_local

test: setup tools lint typecheck pytest

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

typecheck: setup
	$(BIN)/mypy $(SERVICE_CODE)

pytest: setup tools
	$(BIN)/pytest

train: setup
	$(BIN)/python -m training.train --data $(SHARED_DATA) --backbone efficientnet_lite0 --output runs/efficientnet_lite0

data-report: setup
	$(BIN)/python -m training.data report $(SHARED_DATA)

# The manifests as applied: kubectl kustomize needs the flag to read serving/*.config (k8s/README.md).
k8s-render:
	kubectl kustomize --load-restrictor LoadRestrictionsNone k8s/overlays/$${OVERLAY:-dev}

clean:
	rm -rf $(VENV) $(TOOLS_VENV) .mypy_cache .ruff_cache .pytest_cache

# One-line targets. A fresh machine needs only `make run` or `make test`: both set up .venv first.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
SHARED_DATA ?= ../shared/data/ai-vs-real
SERVICE_CODE := common training export serving gateway k8s loadtest
# checkov (policy scan of k8s/) pins packages that conflict with .venv's (packaging, networkx,
# python-dateutil...), so it lives in a virtualenv of its own.
TOOLS_VENV := .venv-tools
# make loadtest: Locust users, users started per second, run time; URL (and MODEL_SERVER) = a running stack.
USERS ?= 10
SPAWN_RATE ?= 2
DURATION ?= 60s

.PHONY: setup lock tools browser nginx redis run test lint typecheck pytest train evaluate data-report clean k8s-render loadtest soak fuzz

setup: $(VENV)/.installed

# Installs exactly requirements.lock (every package pinned, with hashes), then the project itself.
$(VENV)/.installed: pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV) && $(BIN)/pip install --quiet --require-hashes -r requirements.lock && $(BIN)/pip install --quiet --no-deps --no-build-isolation -e . && touch $@

# Re-resolve the locks after a change to pyproject.toml's dependencies: versions already locked
# stay unless they must move (UPGRADE=1 lets them all move). The gateway image's lock takes the
# same versions. Needs the package index; commit both files.
UV_VERSION := 0.13.9
LOCK_FLAGS := --generate-hashes --python-version 3.11 --python-platform x86_64-manylinux_2_28 --annotation-style line --custom-compile-command "make lock"
lock:
	$(PYTHON) -m venv .venv-lock && .venv-lock/bin/pip install --quiet uv==$(UV_VERSION)
	.venv-lock/bin/uv pip compile pyproject.toml --extra dev $(LOCK_FLAGS) $(if $(UPGRADE),--upgrade) -o requirements.lock
	.venv-lock/bin/uv pip compile pyproject.toml --extra gateway -c requirements.lock $(LOCK_FLAGS) -o gateway/requirements.lock

tools: $(TOOLS_VENV)/.installed browser nginx redis

# The browser test drives Debian's Chromium (never a downloaded browser); installed once, as root.
browser:
	@command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null)

# Debian's redis-server: the gateways' shared rate limits are tested against it.
redis:
	@command -v redis-server >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null)

# The model server's API filter (k8s/base/tf-serving/api-filter.conf) is tested with Debian's nginx.
nginx:
	@command -v nginx >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light >/dev/null)

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

loadtest: setup
	$(BIN)/python -m loadtest.run --users $(USERS) --spawn-rate $(SPAWN_RATE) --duration $(DURATION) $(if $(URL),--gateway-url $(URL)) $(if $(MODEL_SERVER),--model-server-address $(MODEL_SERVER))

train: setup
	$(BIN)/python -m training.train --data $(SHARED_DATA) --backbone efficientnet_lite0 --output runs/efficientnet_lite0

# Reliability (docs/reliability.md): 10+ minutes at half the saturation rate (measured first, or SOAK_RATE=
# half of docs/performance.md's), real model; and the long fuzz run.
soak: setup
	$(BIN)/python -m tests.reliability.soak --minutes $${SOAK_MINUTES:-10} $${SOAK_RATE:+--rate $${SOAK_RATE}}

fuzz: setup
	AIDETECT_FUZZ_SCALE=$${FUZZ_SCALE:-10} AIDETECT_FUZZ_SEED=$${FUZZ_SEED:-$$(date +%s)} AIDETECT_RELIABILITY_RESULTS=results/reliability/fuzz $(BIN)/pytest -p no:cacheprovider tests/reliability/test_bad_input.py tests/reliability/test_properties.py tests/reliability/test_model_server_bad_input.py

data-report: setup
	$(BIN)/python -m training.data report $(SHARED_DATA)

# The manifests as applied: kubectl kustomize needs the flag to read serving/*.config (k8s/README.md).
k8s-render:
	kubectl kustomize --load-restrictor LoadRestrictionsNone k8s/overlays/$${OVERLAY:-dev}

clean:
	rm -rf $(VENV) $(TOOLS_VENV) .mypy_cache .ruff_cache .pytest_cache

# clipfleet — every target installs into .venv first if it is missing.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONFIG ?= serve_config.yaml

.PHONY: install run test test-unit test-integration test-e2e lint format weights clean \
	loadtest loadtest-ui bench bench-peers overload hostile bench-priority cluster-sync

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Every Ray process `serve run` starts (its proxy too) gets clipfleet.tools.configgen.RAY_PROCESS_ENV.
run: $(STAMP)
	env $$($(BIN)/python -m clipfleet.tools.configgen --ray-env) $(BIN)/serve run $(CONFIG)

# The unit tier runs first as a fast gate; the Ray tiers only run when it passes.
test: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/unit
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/integration tests/e2e

test-unit: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit

test-integration: $(STAMP)
	$(BIN)/python -m pytest -q tests/integration

test-e2e: $(STAMP)
	$(BIN)/python -m pytest -q tests/e2e

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

weights: $(STAMP)
	$(BIN)/python -m clipfleet.tools.weights $(CONFIG)

# Load tests against a running service (`make run` in another terminal).
LOADTEST_URL ?= http://127.0.0.1:8000
LOADTEST_USERS ?= 32
LOADTEST_TIME ?= 60s
# The service under test must list this port in fetch.allowed_ports (loadtests/bench_config.yaml does).
IMAGE_PORT ?= 8091
LOADTEST_PROFILES ?= fast,accurate
RESULTS ?= results
LOCUST = CLIPFLEET_IMAGE_BASE=http://127.0.0.1:$(IMAGE_PORT) CLIPFLEET_PROFILES=$(LOADTEST_PROFILES) \
	$(BIN)/locust -f loadtests/locustfile.py \
	--host $(LOADTEST_URL)
# Start the image server and wait (bounded) until it and the service answer: requests sent
# before the image server listens would fail with 502 and count against the service.
WITH_IMAGE_SERVER = $(BIN)/python -m loadtests.images --port $(IMAGE_PORT) & server=$$!; \
	trap 'kill $$server' EXIT; \
	$(BIN)/python -m loadtests.wait_ready --timeout 60 \
		http://127.0.0.1:$(IMAGE_PORT)/img/0.jpg $(LOADTEST_URL)/readyz || exit 1;

loadtest: $(STAMP)
	mkdir -p $(RESULTS)
	$(WITH_IMAGE_SERVER) $(LOCUST) --headless -u $(LOADTEST_USERS) -r 8 -t $(LOADTEST_TIME) \
		--csv $(RESULTS)/locust --html $(RESULTS)/locust.html --only-summary

loadtest-ui: $(STAMP)
	$(WITH_IMAGE_SERVER) $(LOCUST) --web-host 127.0.0.1

# The benchmarks write loadtests/results/<kind>-<time>-<commit>.json and a .png chart (three runs
# per row: medians and min-max), then regenerate the docs' figures from the newest results of each
# kind (python -m loadtests.report); commit the results, the chart and the docs together.
# BENCH_ARGS / PEERS_ARGS pass options (e.g. PEERS_ARGS='--runs 1 --seconds 10 --label smoke').
BENCH_ARGS ?=
PEERS_ARGS ?=

bench: $(STAMP)
	$(BIN)/python -m loadtests.bench --runs 3 $(BENCH_ARGS)
	$(BIN)/python -m loadtests.report

# infinity-emb against clipfleet on the same box (loadtests/peers.py). infinity lives in its own
# venv under build/ (git-ignored), torch/torchvision pinned as .venv pins them; the model
# directory (random weights) and the 2,000 JPEGs are built there once.
PEERS_VENV := build/peers/venv
PEERS_STAMP := $(PEERS_VENV)/.installed

$(PEERS_STAMP): loadtests/peers-requirements.txt loadtests/peers-constraints.txt
	test -x $(PEERS_VENV)/bin/python || $(PYTHON) -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/python -m pip install -q -c loadtests/peers-constraints.txt \
		-r loadtests/peers-requirements.txt
	touch $@

bench-peers: $(STAMP) $(PEERS_STAMP)
	$(BIN)/python -m loadtests.peers --runs 3 $(PEERS_ARGS)
	$(BIN)/python -m loadtests.report

# Overload: 32 clients (capacity), then 8 x 32, against $(CONFIG) as shipped (`make run`'s
# serve_config.yaml unless CONFIG= names another); shedding figures (docs/fleet.md).
overload: $(STAMP)
	mkdir -p $(RESULTS)
	$(BIN)/python -m loadtests.overload --config $(CONFIG) --out $(RESULTS)/overload.json

# Hostile requests against `make run`'s config: what each costs (docs/security.md).
hostile: $(STAMP)
	mkdir -p $(RESULTS)
	$(BIN)/python -m loadtests.hostile --out $(RESULTS)/hostile.json

# Priority classes: interactive p95 alone, beside a saturating bulk load, and beside the same
# load sent without classes (loadtests/priority.py; docs/fleet.md). Not in CI.
PRIORITY_SECONDS ?= 30
bench-priority: $(STAMP)
	mkdir -p $(RESULTS)
	$(BIN)/python -m loadtests.priority --seconds $(PRIORITY_SECONDS) --out $(RESULTS)/priority.json

# Generate the GPU, bench and fast-int8 configs and the RayServices' serveConfigV2 from
# serve_config.yaml + cluster/overlays/*.yaml (clipfleet/tools/configgen.py).
cluster-sync: $(STAMP)
	$(BIN)/python -m clipfleet.tools.configgen

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info

# Batch scoring, one run: naive open_clip vs `clipfleet batch score` vs score-csv over the
# service (loadtests/bench_batch.py; PAIRS=600 unique JPEG + caption pairs).
.PHONY: bench-batch
PAIRS ?= 600
bench-batch: $(STAMP)
	mkdir -p $(RESULTS)
	$(BIN)/python -m loadtests.bench_batch --pairs $(PAIRS) --out $(RESULTS)/bench_batch.json

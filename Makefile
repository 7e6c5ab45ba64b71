# Concordance developer commands. Every target installs what it needs first.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
SEEDS   ?= 5000
SEED    ?=
NODE_SEEDS ?= 200
NODE_SEED  ?=
NODE_FROM  ?= 0
LISTEN  ?= 127.0.0.1:4100
DATA    ?= ./data

.PHONY: install fmt lint test unit sim integration fuzz run cluster bench clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[server,dev]'
	touch $(STAMP)

install: $(STAMP)

fmt: $(STAMP)
	$(BIN)/ruff format concordance procs tests bench
	$(BIN)/ruff check --fix concordance procs tests bench

lint: $(STAMP)
	$(BIN)/ruff check concordance procs tests bench
	$(BIN)/ruff format --check concordance procs tests bench
	$(BIN)/mypy

# The whole suite: unit, raft paper tests, 1,000 simulation seeds, integration.
test: $(STAMP)
	PYTHONHASHSEED=0 $(BIN)/pytest -n auto --dist loadgroup -q

unit: $(STAMP)
	PYTHONHASHSEED=0 $(BIN)/pytest -n auto -q -m "not integration"

integration: $(STAMP)
	$(BIN)/pytest -n auto --dist loadgroup -q -m integration

# Long fuzzing of a real node: schemathesis from /api/v1/openapi.json (FUZZ_EXAMPLES per
# operation) and the /stream JSON-RPC fuzzer (FUZZ_FRAMES frames); make test runs both short.
FUZZ_EXAMPLES ?= 500
FUZZ_FRAMES   ?= 20000
fuzz: $(STAMP)
	FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) FUZZ_FRAMES=$(FUZZ_FRAMES) $(BIN)/pytest -p no:xdist -q \
		tests/integration/test_fuzz_http.py tests/integration/test_fuzz_stream.py

# Long seeded sweeps of both simulations (docs/TESTING.md): the Raft core's (SEEDS=20000,
# replay SEED=42) and the whole nodes' (NODE_SEEDS=1000 NODE_FROM=5000, replay NODE_SEED=7).
# A replay runs only the simulation it names.
sim: $(STAMP)
ifeq ($(NODE_SEED),)
	PYTHONHASHSEED=0 $(BIN)/python -m concordance.testing.sim_cli $(if $(SEED),--seed $(SEED),--seeds $(SEEDS))
endif
ifeq ($(SEED),)
	PYTHONHASHSEED=0 $(BIN)/python -m concordance.testing.node_sim_cli \
		$(if $(NODE_SEED),--seed $(NODE_SEED),--seeds $(NODE_SEEDS) --from $(NODE_FROM))
endif

run: $(STAMP)
	@mkdir -p $(DATA)
	$(BIN)/python -m concordance.node.devrun --listen $(LISTEN) --data $(DATA)

cluster: $(STAMP)
	$(BIN)/concordance cluster --nodes 3 --base-port 4100 --data $(DATA)/cluster

bench: $(STAMP)
	$(if $(SCALE),,$(BIN)/python -m bench $(if $(QUICK),--quick))
	$(if $(SCALE),$(BIN)/python -m bench --scale $(if $(QUICK),--quick))
	$(if $(SCALE),$(BIN)/python -m bench.scale_data $(if $(QUICK),--quick))

# Chaos run against a real cluster (tests/chaos), report in chaos-report.json; exits non-zero
# on a violation: make chaos DURATION=300 SEED=7 NODES=5
DURATION ?= 120
NODES    ?= 3
.PHONY: chaos
chaos: $(STAMP)
	PYTHONHASHSEED=0 $(BIN)/python -m tests.chaos.run --duration $(DURATION) \
		--seed $(or $(SEED),1) --nodes $(NODES) --report chaos-report.json

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info

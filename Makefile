# Huifang — `make run` brings the whole system up locally; `make test` runs the suite on real parts.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
# Development defaults for local runs only; production refuses to start without real values.
DEV_ENV := HUIFANG_API_KEYS=$${HUIFANG_API_KEYS:-agent:dev-agent,supervisor:dev-supervisor,admin:dev-admin} \
	HUIFANG_NOTIFY_WEBHOOK_URL=$${HUIFANG_NOTIFY_WEBHOOK_URL:-http://127.0.0.1:8009/hooks} \
	HUIFANG_WEBHOOK_SECRET=$${HUIFANG_WEBHOOK_SECRET:-dev-webhook-secret} \
	HUIFANG_SMS_WEBHOOK_URL=$${HUIFANG_SMS_WEBHOOK_URL:-http://127.0.0.1:8009/sms}

.PHONY: asyncapi-parser schemas setup run demo test test-fault test-load test-chaos test-chaos-short test-unit test-props lint kafka-jars clean bench bench-timers lock

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

setup: $(STAMP) kafka-jars

kafka-jars: $(STAMP)
	$(BIN)/python -c "from cli.devstack import ensure_kafka_jars; from shared.settings import ROOT; print(ensure_kafka_jars(ROOT / '.local'))"

# The local run is for the demo: its policy (a short notice lead, calls at any hour, the caller-code experiment),
# and the dashboard's "simulated" banner. Production takes policy.toml or the bank's own file.
run: setup
	$(DEV_ENV) HUIFANG_POLICY_FILE=$${HUIFANG_POLICY_FILE:-policy.demo.toml} HUIFANG_DEMO=$${HUIFANG_DEMO:-true} \
		$(BIN)/huifang dev

# `make demo` runs the caller-code experiment; `make demo DEMO_ARGS=` the plain demo.
DEMO_ARGS ?= --experiment
demo: $(STAMP)
	$(DEV_ENV) HUIFANG_DEMO_API_KEY=$${HUIFANG_DEMO_API_KEY:-dev-agent} $(BIN)/huifang demo $(DEMO_ARGS)

test: setup asyncapi-parser
	$(BIN)/python -m pytest -p no:cacheprovider -q tests/unit tests/integration

# The official AsyncAPI parser (npm, pinned by infra/asyncapi/package-lock.json) checks docs/asyncapi.yaml.
ASYNCAPI := .local/asyncapi
asyncapi-parser: $(ASYNCAPI)/.installed-$(shell cat infra/asyncapi/package-lock.json | cksum | cut -d' ' -f1)
$(ASYNCAPI)/.installed-%: infra/asyncapi/package.json infra/asyncapi/package-lock.json
	mkdir -p $(ASYNCAPI)
	cp infra/asyncapi/package.json infra/asyncapi/package-lock.json $(ASYNCAPI)/
	npm ci --prefix $(ASYNCAPI) --ignore-scripts --no-audit --no-fund --loglevel=error
	touch $@

# Regenerate docs/schemas and docs/asyncapi.yaml from the event models.
schemas: $(STAMP)
	$(BIN)/huifang schemas

# Fault scenarios: a broker or database goes away mid-run. CI runs these after `make test`.
test-fault: setup
	$(BIN)/python -m pytest -p no:cacheprovider -q tests/fault

test-unit: $(STAMP) asyncapi-parser
	$(BIN)/python -m pytest -p no:cacheprovider -q tests/unit

# The planner's property tests on many random examples; `make test` runs them on a fixed set only.
test-props: $(STAMP)
	HUIFANG_HYPOTHESIS_PROFILE=props $(BIN)/python -m pytest -p no:cacheprovider -q tests/unit/test_planner_properties.py

lint: $(STAMP)
	$(BIN)/ruff check shared services cli tests bench
	$(BIN)/mypy shared services cli bench

# The Docker image installs only what requirements.lock pins, hash-checked; rerun after changing dependencies.
lock: $(STAMP)
	$(BIN)/pip install --quiet pip-tools
	$(BIN)/pip-compile --quiet --generate-hashes --strip-extras --allow-unsafe --all-build-deps --no-emit-find-links -o requirements.lock pyproject.toml

clean:
	rm -rf .local/test .local/*.db .local/*.db-* .local/kafka/node

# Expensive scenarios (marker `load`): two scheduler processes over thousands of callbacks on PostgreSQL.
test-load: setup
	$(BIN)/python -m pytest -p no:cacheprovider -q -m load tests/load

# Black-box chaos (marker `chaos`) at the issue's scale (200 loans, 20 kills per scenario): kill -9 (also at the
# crash points), broker kills, PostgreSQL stopped -m immediate, replica churn, slow batches, receivers down; prints
# a table per scenario and fails on any lost or doubled effect, wrong attempt number or call without notice.
test-chaos: setup
	$(BIN)/python -m pytest -p no:cacheprovider -q -s -m chaos tests/chaos

# Every kind of fault at a smaller scale, in two systems (SQLite; PostgreSQL with two replicas), 20 loans each:
# what CI runs (about 6 minutes here).
test-chaos-short: setup
	HUIFANG_CHAOS_SCALE=short $(BIN)/python -m pytest -p no:cacheprovider -q -s -m chaos tests/chaos

# Every issue-13 figure against its fair baseline (ingest, timers, attempt POST, outbox, end to end, 300k tables),
# on its own broker and PostgreSQL; prints the table and writes bench/results/summary.json (~8 min on 2 cores).
bench: setup wrk vegeta
	$(BIN)/python -m bench.run

# The timer part alone: backlog rate and lateness of a burst of 1,000, policy on, against the raw-SQL loop.
bench-timers: setup
	$(BIN)/python -m bench.run --only timers

# vegeta, the open-loop load generator of the POST p99 at half peak, from the Go module proxy when Go is
# here (the bench falls back to its Python client, whose own CPU then competes with the service's).
VEGETA := .local/bin/vegeta
.PHONY: vegeta
vegeta:
	@test -x $(VEGETA) || { command -v go >/dev/null && GOBIN=$(CURDIR)/.local/bin go install github.com/tsenart/vegeta/v12@v12.13.0; } \
		|| echo "vegeta not installed: the bench paces POSTs with its Python client"

# wrk, the HTTP load generator of the attempt POST figure, from Debian (the bench falls back to a Python client).
.PHONY: wrk
wrk:
	@test -x /usr/bin/wrk || { if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
		$$SUDO apt-get update && $$SUDO apt-get install -y wrk; } || echo "wrk not installed: the bench uses its Python client"

# Browser tests drive Debian's chromium through Playwright (never `playwright install`); CJK fonts for the page.
.PHONY: chromium
test: chromium
chromium:
	@test -x /usr/bin/chromium && fc-list :lang=zh | grep -q . || { if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
		$$SUDO apt-get update && $$SUDO apt-get install -y chromium fonts-wqy-microhei; }

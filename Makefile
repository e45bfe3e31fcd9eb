# Film-review sentiment as a stateless serving function on TorchServe. `make help` lists targets.
PYTHON_SYS ?= python3
VENV       := .venv
PY         := $(VENV)/bin/python
BIN        := $(VENV)/bin
MODEL_NAME := sentiment
VERSION    ?= 1
SEED       ?= $(VERSION)
# VERSION=2 is the fine-tuned transformer (sentiment/training/transformer.py, under 60 minutes on 2 cores), any other the NBSVM
# (sentiment/training/nbsvm.py, ~2 minutes: rt-polarity + IMDB train); ARCH says otherwise, e.g. `make archive VERSION=3 ARCH=nbsvm TRAIN_ARGS="--fresh samples/fresh.csv"`.
ARCH       ?= $(if $(filter 2,$(VERSION)),transformer,nbsvm)
TRANSFORMER := $(filter transformer,$(ARCH))
# `make serve VERSION=N` serves v1 beside it. Comments stay on their own lines: make keeps the blanks
# before a trailing comment in the value, and a blank is not empty to $(if).
BESIDE_V1  := $(filter-out 1,$(VERSION))
TRAINER    := sentiment.training.$(if $(TRANSFORMER),transformer,nbsvm)
TRAIN_ARGS ?=
# export.py's options, e.g. EXPORT_ARGS="--runtime torchscript" to serve v2's float32 TorchScript core
EXPORT_ARGS ?=
BUILD      ?= build/v$(VERSION)
EXPORT     := $(BUILD)/export
STORE      ?= model_store
MODEL_CONFIG := $(if $(TRANSFORMER),model-config-v2.yaml,model-config.yaml)
MAR_NAME   := $(if $(filter 1,$(VERSION)),$(MODEL_NAME),$(MODEL_NAME)_v$(VERSION))
MAR        := $(STORE)/$(MAR_NAME).mar
PRETRAINED := build/pretrained
# What a worker imports: handler.py and the sentiment.serving package (the archive ships nothing else of the tree)
SERVED_CODE := handler.py sentiment/__init__.py $(wildcard sentiment/serving/*.py)
# The ports of `make serve` (config.properties holds the same defaults; other values are written into a
# copy of it under LOGS, e.g. `make serve INFERENCE_PORT=18080` when 8080 is taken).
INFERENCE_PORT  ?= 8080
MANAGEMENT_PORT ?= 8081
METRICS_PORT    ?= 8082
GRPC_INFERENCE_PORT  ?= 7070
GRPC_MANAGEMENT_PORT ?= 7071
INFERENCE  := http://127.0.0.1:$(INFERENCE_PORT)
MANAGEMENT := http://127.0.0.1:$(MANAGEMENT_PORT)
METRICS    := http://127.0.0.1:$(METRICS_PORT)
LOGS       ?= logs
# `make monitor`'s Prometheus (PROMETHEUS_PORT=19090 PROM_HOME=logs/prometheus-19090 beside another one)
PROMETHEUS_PORT ?= 9090
PROMETHEUS := http://127.0.0.1:$(PROMETHEUS_PORT)
PROM_HOME  ?= logs/prometheus
# versions whose reference distribution the committed drift rules hold (make rules)
REFERENCE_EXPORTS ?= build/v1/export
# TS_FRONTEND is in the command line of TorchServe's frontend (torchserve --stop checks it too), TS_WORKER in a worker's;
# `make stop` waits STOP_WAIT seconds for each server to exit.
TS_FRONTEND := org.pytorch.serve.ModelServer
TS_WORKER  := model_service_worker
STOP_WAIT  ?= 20
# where `torchserve --start` writes the frontend's pid: $TMPDIR (or /tmp)/.model_server.pid
# TOKEN=on: TorchServe 0.12's token authorization, which guards management and inference together (one switch,
# docs/security.md); TorchServe writes key_file.json (mode 0600) in its working directory, KEY_DIR, outside the
# tree. The make targets below send its key whenever the file is there, make stop removes it; TOKEN_MINUTES is the
# keys' lifetime.
TOKEN      ?= off
KEY_DIR    ?= $(HOME)/.config/sentiment-serving
KEY_FILE   := $(KEY_DIR)/key_file.json
TOKEN_MINUTES ?= 60
# `curl $(call AUTH,management) ...`: that API's key as a bearer token, read when curl runs (empty without a key
# file; TorchServe without token authorization ignores the header)
AUTH = --oauth2-bearer "$$($(PY) -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]]["key"])' $(KEY_FILE) $(1) 2>/dev/null)"
TS_PID_FILE = $(or $(TMPDIR),/tmp)/.model_server.pid
# where TorchServe unpacks each archive it registers (one folder a registration, kept after it stops): the
# JVM's temp dir, $TEMP (which torchserve passes to it as java.io.tmpdir) or /tmp
TS_MODELS = $(or $(TEMP),/tmp)/models
WINDOW     ?= 30m
N          ?= 2
MINUTES    ?= 5
TEXT       ?= A gorgeous, moving film with a wonderful cast.
export TEXT  # recipes read it from the environment, so quotes in it need no escaping

.PHONY: help install install-dev train export archive serve stop predict explain scale status test fuzz bench overload soak chaos batch evaluate kserve-layout clean prometheus rules monitor drift-report promote

help:
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(VENV)/.installed: requirements.txt
	$(PYTHON_SYS) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed requirements-dev.txt
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $@

install: $(VENV)/.installed ## create .venv with the pinned serving dependencies

install-dev: $(VENV)/.installed-dev ## add test and benchmark dependencies

$(PRETRAINED)/model.safetensors: sentiment/training/pretrained.py | $(VENV)/.installed
	$(PY) -m sentiment.training.pretrained $(PRETRAINED)

# v1 retrains (~2 min) when its code changes; the transformer (under 60 min on 2 cores) only when its
# checkpoint is missing: `rm build/v2/checkpoint.pt` to fine-tune again. Export re-runs on any change.
$(BUILD)/checkpoint.pt: $(if $(TRANSFORMER),,sentiment/training/nbsvm.py sentiment/data.py sentiment/serving/text.py sentiment/serving/core.py) | $(VENV)/.installed $(if $(TRANSFORMER),$(PRETRAINED)/model.safetensors)
	$(PY) -m $(TRAINER) --out $(BUILD) --seed $(SEED) $(TRAIN_ARGS)

train: $(BUILD)/checkpoint.pt ## train if no model exists: VERSION=1 the NBSVM (~2 min), VERSION=2 the transformer (under 60 min)

$(EXPORT)/signature.json: $(BUILD)/checkpoint.pt export.py sentiment/training/export.py sentiment/data.py $(wildcard sentiment/serving/*.py)
	$(PY) export.py --checkpoint $(BUILD) --out $(EXPORT) --version $(VERSION) --name $(MODEL_NAME) $(EXPORT_ARGS)

export: $(EXPORT)/signature.json ## TorchScript + ONNX core and signature.json into build/vN/export

# The archive holds the TorchScript core, handler.py, the sentiment.serving package as a folder (staged in
# $(BUILD)/served: --extra-files copies a folder's contents) and the export's JSON files (signature, and
# vocab.json for v1 or tokenizer.json for v2), and the int8 ONNX core when the signature serves it (v2); the
# float32 model.onnx is not served.
$(MAR): $(EXPORT)/signature.json $(SERVED_CODE) $(MODEL_CONFIG)
	mkdir -p $(STORE)
	rm -rf $(BUILD)/served && mkdir -p $(BUILD)/served/sentiment/serving
	cp sentiment/__init__.py $(BUILD)/served/sentiment/
	cp $(filter sentiment/serving/%,$(SERVED_CODE)) $(BUILD)/served/sentiment/serving/
	$(BIN)/torch-model-archiver --force --model-name $(MODEL_NAME) --version $(VERSION) \
		--serialized-file $(EXPORT)/model.pt --handler handler.py --config-file $(MODEL_CONFIG) \
		--extra-files "$(BUILD)/served,$$(echo $(EXPORT)/*.json $(wildcard $(EXPORT)/*.int8.onnx) | tr ' ' ',')" \
		--export-path $(BUILD)
	mv $(BUILD)/$(MODEL_NAME).mar $@
	@echo "built $@"

archive: $(MAR) ## model_store/sentiment.mar (VERSION=2: sentiment_v2.mar, the transformer)

# VERSION=2 serves v1 and v2 side by side, v2 the default (/predictions/sentiment/1 keeps working).
serve: archive ## start TorchServe on 127.0.0.1:8080-8082 (INFERENCE_PORT, MANAGEMENT_PORT, METRICS_PORT) and wait until it answers (VERSION=2: v2 default, v1 beside it; MODEL_API=on: allow registering versions)
	@# v1's own build: command-line variables (BUILD, ARCH, TRAIN_ARGS, SEED) would otherwise pass down to it
	$(if $(BESIDE_V1),$(MAKE) --no-print-directory archive VERSION=1 BUILD=build/v1 ARCH=nbsvm SEED=1 TRAIN_ARGS= STORE=$(STORE))
	mkdir -p $(LOGS)
	sed -e 's|^inference_address=.*|inference_address=$(INFERENCE)|' -e 's|^management_address=.*|management_address=$(MANAGEMENT)|' \
		-e 's|^metrics_address=.*|metrics_address=$(METRICS)|' -e 's|^model_store=.*|model_store=$(STORE)|' \
		-e 's|^grpc_inference_port=.*|grpc_inference_port=$(GRPC_INFERENCE_PORT)|' \
		-e 's|^grpc_management_port=.*|grpc_management_port=$(GRPC_MANAGEMENT_PORT)|' \
		$(if $(filter on,$(TOKEN)),-e 's|^disable_token_authorization=.*|disable_token_authorization=false\ntoken_expiration_min=$(TOKEN_MINUTES)|') \
		config.properties > $(LOGS)/config.properties
	$(if $(filter on,$(TOKEN)),mkdir -p -m 700 $(KEY_DIR))
	cd $(if $(filter on,$(TOKEN)),$(KEY_DIR),.) && LOG_LOCATION=$(abspath $(LOGS)) METRICS_LOCATION=$(abspath $(LOGS)) $(abspath $(BIN))/torchserve --start --ncs \
		--ts-config $(abspath $(LOGS))/config.properties --log-config $(abspath log4j2.xml) --model-store $(abspath $(STORE)) \
		$(if $(BESIDE_V1),--models $(MODEL_NAME).mar $(MAR_NAME).mar) \
		$(if $(filter on,$(MODEL_API)),--enable-model-api) > $(abspath $(LOGS))/console.log 2>&1 || { cat $(LOGS)/console.log; exit 1; }
	@for i in $$(seq 180); do \
		curl -sf --max-time 2 $(call AUTH,management) $(MANAGEMENT)/models/$(MODEL_NAME)/$(VERSION) | grep -q '"status": "READY"' && { \
			$(if $(BESIDE_V1),curl -sf -X PUT $(call AUTH,management) $(MANAGEMENT)/models/$(MODEL_NAME)/$(VERSION)/set-default > /dev/null || exit 1;) \
			echo "TorchServe is healthy: $(INFERENCE)/predictions/$(MODEL_NAME) (default version $(VERSION))"; exit 0; }; \
		kill -0 $$(cat "$(TS_PID_FILE)" 2>/dev/null) 2>/dev/null || { echo "TorchServe exited while starting:"; break; }; \
		sleep 1; done; tail -20 $(LOGS)/ts_log.log 2>/dev/null; echo "TorchServe did not become healthy; see $(LOGS)/ts_log.log"; exit 1

# alive PID MARK: PID runs (not a zombie) with MARK in its command line; gone PID MARK: waits STOP_WAIT s for it to end.
# It also removes the archives TorchServe unpacked for that server's workers (their working folders under TS_MODELS).
stop: ## stop TorchServe started by `make serve` (and Prometheus started by `make monitor`); fails if TorchServe has not exited after STOP_WAIT (20) s
	@alive() { s=$$(ps -ww -p $$1 -o stat=,args= 2>/dev/null); case "$$s" in Z*|"") return 1;; *"$$2"*) return 0;; *) return 1;; esac; }; \
	gone() { for i in $$(seq $$(( $(STOP_WAIT) * 5 ))); do alive $$1 "$$2" || return 0; sleep 0.2; done; ! alive $$1 "$$2"; }; \
	pid=$$(cat $(PROM_HOME)/prometheus.pid 2>/dev/null); \
	if [ -n "$$pid" ] && alive $$pid prometheus; then kill $$pid; gone $$pid prometheus || kill -9 $$pid; echo "Prometheus stopped"; fi; \
	rm -f $(PROM_HOME)/prometheus.pid; \
	pid=$$(cat "$(TS_PID_FILE)" 2>/dev/null); \
	keys=$$([ -n "$$pid" ] && readlink /proc/$$pid/cwd)/key_file.json; [ -f "$$keys" ] || keys=; \
	workers=$$([ -n "$$pid" ] && pgrep -P $$pid); \
	unpacked=$$(for w in $$workers; do readlink /proc/$$w/cwd; done | grep "^$(TS_MODELS)/" | sort -u); \
	$(BIN)/torchserve --stop; \
	if [ -n "$$pid" ] && ! gone $$pid $(TS_FRONTEND); then \
		echo "TorchServe (pid $$pid) is still running $(STOP_WAIT) s after torchserve --stop: see $(LOGS)/ts_log.log; kill -9 $$pid ends it" >&2; exit 1; fi; \
	for w in $$workers; do gone $$w $(TS_WORKER) || { echo "TorchServe's worker (pid $$w) is still running: kill -9 $$w ends it" >&2; exit 1; }; done; \
	rm -rf $$unpacked; [ -z "$$keys" ] || rm -f "$$keys"

explain: $(if $(TRANSFORMER),,$(EXPORT)/signature.json) | $(VENV)/.installed ## which words made the prediction of TEXT="...", coloured and ranked (VERSION=2: the transformer's build/v2/export)
	$(PY) -W ignore::DeprecationWarning -m sentiment.serving.explain --artifact $(EXPORT) "$$TEXT"

predict: ## curl one prediction (TEXT="...")
	curl -s -X POST $(call AUTH,inference) $(INFERENCE)/predictions/$(MODEL_NAME) -H 'Content-Type: application/json' \
		-d "$$($(PY) -c 'import json,sys; print(json.dumps({"text": sys.argv[1]}))' "$$TEXT")"; echo

scale: ## set the worker count through the management API (N=2)
	curl -s -X PUT $(call AUTH,management) "$(MANAGEMENT)/models/$(MODEL_NAME)?min_worker=$(N)&max_worker=$(N)&synchronous=true"; echo

status: ## describe the model and its workers
	curl -s $(call AUTH,management) $(MANAGEMENT)/models/$(MODEL_NAME); echo

# The tests run in TEST_WORKERS processes, a file each at a time (a file's servers stay in one process); most of
# their time is spent waiting on servers, so more processes than cores pays. The quick transformer the tests share
# is built once before they start.
TEST_WORKERS ?= 3
test: install-dev archive prometheus ## run the whole test suite (unit + integration against a real TorchServe), in TEST_WORKERS (3) processes; prints the 15 slowest tests
	$(PY) tests/quick_v2.py
	$(BIN)/pytest -q tests -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=15

# An example is 3-4 generated requests, each sent to both versions: FUZZ_EXAMPLES=650 is ~2,250 requests a version.
FUZZ_EXAMPLES ?= 650
fuzz: install-dev archive ## Hypothesis through one real TorchServe (v1 + the quick v2): FUZZ_EXAMPLES (650) examples, 2,000+ generated requests a version; prints its random seed (FUZZ_SEED=N repeats a run), keeps its database in build/hypothesis, saves each failure to tests/edge_regressions.json (make test replays it)
	@seed=$(or $(FUZZ_SEED),$$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')); echo "fuzz seed: $$seed (make fuzz FUZZ_SEED=$$seed repeats this run)"; \
	FUZZ_SEED=$$seed FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/pytest -q -s -p no:cacheprovider --hypothesis-show-statistics \
		tests/test_edges.py -k "odd_requests_never_fail or fuzz_run_sent"

bench: install-dev archive ## TorchServe vs FastAPI (1 and N workers) vs LitServe vs /ping, grid, ceilings -> bench/results/ (VERSION=2: results_v2.json), ~10 min; needs a clean tree
	$(PY) bench/run.py --model-version $(VERSION)

overload: install-dev archive ## open-loop Poisson load from 25 % to 200 % of capacity, then 2x for 30 s: TorchServe vs FastAPI-2 -> bench/results/overload.json + .png, ~6 min; needs a clean tree
	$(PY) bench/overload.py

soak: install-dev archive ## 32 clients for MINUTES (5): every request answered? errors, RSS -> bench/results/soak.json
	$(PY) scripts/soak.py --minutes $(MINUTES) --concurrency 32

chaos: install-dev archive ## the soak while kill -9'ing a worker at 1/3 and 2/3: replacement and recovery times -> bench/results/chaos.json
	$(PY) scripts/soak.py --minutes $(MINUTES) --concurrency 32 --kill-worker --out bench/results/chaos.json

batch: install-dev export ## score a CSV/JSONL/Parquet file offline with the exported core: make batch IN=samples/reviews.csv OUT=scored.csv
	$(PY) -m sentiment.ops.batch_predict $(IN) $(OUT) --artifact $(EXPORT)

kserve-layout: install-dev archive ## build/kserve/: model-store/ + config/config.properties for KServe's TorchServe runtime
	$(PY) -m sentiment.ops.kserve_layout --mar $(MAR) --out build/kserve

evaluate: install-dev ## accuracy and ROC AUC of the served model on the held-out split (VERSION=2; DATA=file.csv|.jsonl)
	$(PY) -m sentiment.ops.evaluate --url $(INFERENCE) --model $(MODEL_NAME) --version $(VERSION) --artifact $(EXPORT) $(if $(DATA),--data $(DATA)) --out $(BUILD)/served-evaluation.json

prometheus: ## install Debian's prometheus package (prometheus, promtool) if missing; monitor and test need it
	@command -v prometheus >/dev/null && command -v promtool >/dev/null || { \
		echo "installing Debian's prometheus package (prometheus, promtool)"; \
		sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq --no-install-recommends prometheus >/dev/null || exit 1; \
		if [ -d /run/systemd/system ]; then $$sudo systemctl disable --now prometheus >/dev/null 2>&1 || true; fi; }
	@# (the package enables a system service on every interface; this project runs its own, on 127.0.0.1)

rules: install-dev $(REFERENCE_EXPORTS:%=%/signature.json) ## regenerate the committed deploy/prometheus/rules/ + tests: v1's reference (REFERENCE_EXPORTS=...), latency thresholds from bench/results/
	$(PY) -m sentiment.ops.rules $(foreach e,$(REFERENCE_EXPORTS),--export $(e))

# The rules of `make monitor` follow the versions the server serves (read through its management API,
# each reference from the archive it registered); they and their config go under $(PROM_HOME), never
# over the committed files. Run it again after registering a version or a set-default: it reloads.
monitor: prometheus install-dev ## start Prometheus on 127.0.0.1:PROMETHEUS_PORT (9090; data in logs/prometheus/): scrapes make serve's /metrics, evaluates the drift, latency and health rules of the versions it serves (make serve first)
	@mkdir -p $(PROM_HOME)
	@$(PY) -m sentiment.ops.rules --server $(MANAGEMENT) --model-store $(STORE) --rules-out $(PROM_HOME)/rules \
		--tests-out '' --config-out $(PROM_HOME)/prometheus.yml --scrape $(METRICS:http://%=%) >/dev/null
	@promtool check config $(PROM_HOME)/prometheus.yml >/dev/null || exit 1
	@pid=$$(cat $(PROM_HOME)/prometheus.pid 2>/dev/null); \
	if [ -n "$$pid" ] && ps -p $$pid -o comm= 2>/dev/null | grep -q prometheus; then \
		kill -HUP $$pid; echo "Prometheus is already running (pid $$pid): reloaded its config and rules. $(PROMETHEUS)/alerts"; exit 0; fi; \
	if curl -s --max-time 1 -o /dev/null $(PROMETHEUS); then echo "something else already listens on $(PROMETHEUS)"; exit 1; fi; \
	nohup prometheus --config.file=$(PROM_HOME)/prometheus.yml --storage.tsdb.path=$(PROM_HOME)/data \
		--web.listen-address=$(PROMETHEUS:http://%=%) > $(PROM_HOME)/prometheus.log 2>&1 & echo $$! > $(PROM_HOME)/prometheus.pid; \
	for i in $$(seq 60); do \
		curl -sf --max-time 1 -o /dev/null $(PROMETHEUS)/-/ready && { echo "Prometheus is ready: $(PROMETHEUS) (alerts: $(PROMETHEUS)/alerts); make drift-report"; exit 0; }; \
		kill -0 $$(cat $(PROM_HOME)/prometheus.pid) 2>/dev/null || { tail -5 $(PROM_HOME)/prometheus.log; rm -f $(PROM_HOME)/prometheus.pid; exit 1; }; \
		sleep 0.5; done; echo "Prometheus did not become ready; see $(PROM_HOME)/prometheus.log"; exit 1

drift-report: install-dev ## live vs reference distributions per model version from Prometheus, a verdict, build/drift-report.png (WINDOW=30m)
	$(PY) -m sentiment.ops.drift_report --prometheus $(PROMETHEUS) --window $(WINDOW) --png build/drift-report.png

# README's loop from the canary on, as one run of sentiment/ops/promote.py (its docstring says why each step): the archive of
# CANDIDATE registered beside the default, both scored on labels neither trained on (a paired exact test), a bake of
# paired shadow traffic (SHADOW=recent-requests.csv, default IMDB's test reviews) judged on what its client got and on
# Prometheus, then set-default (compare and set) or roll back. One run at a time (a lock); a rerun finishes or undoes
# a killed one. Needs `make serve MODEL_API=on`. make exits 0 promoted, 2 otherwise (make's status for any failed
# recipe; the last line says which: rolled back, sentiment/ops/promote.py's 1, nothing done, its 2, or stopped, its 3).
promote: monitor ## canary CANDIDATE=N (model_store/sentiment_vN.mar): scores (FRESH=fresh.csv), a BAKE (600 s) of paired shadow traffic (SHADOW=file), then promote or roll back; evidence in build/promotions/
	@test -n "$(CANDIDATE)" || { echo "usage: make promote CANDIDATE=N [FRESH=fresh.csv] [SHADOW=requests.csv] [BAKE=seconds]" >&2; exit 2; }
	$(PY) -m sentiment.ops.promote --candidate $(CANDIDATE) --inference $(INFERENCE) --management $(MANAGEMENT) --metrics $(METRICS) \
		--prometheus $(PROMETHEUS) --prom-home $(PROM_HOME) --model-store $(STORE) $(if $(FRESH),--fresh $(FRESH)) \
		$(if $(SHADOW),--shadow $(SHADOW)) $(if $(BAKE),--bake $(BAKE)) \
		|| { s=$$?; echo "make promote: $$(case $$s in 1) echo 'rolled back';; 3) echo 'stopped: someone else changed the default';; *) echo 'nothing done';; esac) (sentiment/ops/promote.py exit $$s; make itself exits 2)" >&2; exit $$s; }

# and the archives TorchServe unpacked for sentiment that no running process works in (make stop removes its server's own)
clean: ## remove build outputs and archives, and sentiment's unpacked archives no TorchServe uses any more
	rm -rf build logs model_store/*.mar
	@used=$$(readlink /proc/[0-9]*/cwd 2>/dev/null | grep "^$(TS_MODELS)/" | sort -u); \
	for d in $(TS_MODELS)/*/; do d=$${d%/}; \
		grep -qs '"modelName": "$(MODEL_NAME)"' "$$d/MAR-INF/MANIFEST.json" && ! echo "$$used" | grep -qxF "$$d" && rm -rf "$$d" && echo "removed $$d"; \
	done; true

# Film-review sentiment as a stateless serving function on TorchServe. `make help` lists targets.
PYTHON_SYS ?= python3
VENV       := .venv
PY         := $(VENV)/bin/python
BIN        := $(VENV)/bin
MODEL_NAME := sentiment
VERSION    ?= 1
SEED       ?= $(VERSION)
BUILD      := build/v$(VERSION)
EXPORT     := $(BUILD)/export
MAR_NAME   := $(if $(filter 1,$(VERSION)),$(MODEL_NAME),$(MODEL_NAME)_v$(VERSION))
MAR        := model_store/$(MAR_NAME).mar
INFERENCE  := http://127.0.0.1:8080
MANAGEMENT := http://127.0.0.1:8081
METRICS    := http://127.0.0.1:8082
N          ?= 2
MINUTES    ?= 5
TEXT       ?= A gorgeous, moving film with a wonderful cast.
export TEXT  # recipes read it from the environment, so quotes in it need no escaping

.PHONY: help install install-dev train export archive serve stop predict scale status test bench soak chaos batch evaluate kserve-layout clean

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

$(BUILD)/checkpoint.pt: train.py text.py model_def.py | $(VENV)/.installed
	$(PY) train.py --out $(BUILD) --seed $(SEED)

train: $(BUILD)/checkpoint.pt ## train on rt-polarity if no model exists (VERSION=1, SEED=VERSION)

$(EXPORT)/signature.json: $(BUILD)/checkpoint.pt export.py model_def.py signature.py text.py
	$(PY) export.py --checkpoint $(BUILD) --out $(EXPORT) --version $(VERSION) --name $(MODEL_NAME)

export: $(EXPORT)/signature.json ## TorchScript + ONNX core and signature.json into build/vN/export

$(MAR): $(EXPORT)/signature.json handler.py payload.py prediction_metrics.py text.py model_def.py signature.py model-config.yaml
	$(BIN)/torch-model-archiver --force --model-name $(MODEL_NAME) --version $(VERSION) \
		--serialized-file $(EXPORT)/model.pt --handler handler.py --config-file model-config.yaml \
		--extra-files text.py,model_def.py,signature.py,payload.py,prediction_metrics.py,$(EXPORT)/signature.json,$(EXPORT)/vocab.json \
		--export-path $(BUILD)
	mv $(BUILD)/$(MODEL_NAME).mar $@
	@echo "built $@"

archive: $(MAR) ## model_store/sentiment.mar (VERSION=2 builds sentiment_v2.mar)

serve: archive ## start TorchServe on 127.0.0.1:8080-8082 and wait until it answers (MODEL_API=on: allow registering versions)
	mkdir -p logs
	LOG_LOCATION=logs METRICS_LOCATION=logs $(BIN)/torchserve --start --ncs --ts-config config.properties \
		$(if $(filter on,$(MODEL_API)),--enable-model-api) > logs/console.log 2>&1 || { cat logs/console.log; exit 1; }
	@for i in $$(seq 120); do \
		curl -sf --max-time 2 $(MANAGEMENT)/models/$(MODEL_NAME) | grep -q '"status": "READY"' && { echo "TorchServe is healthy: $(INFERENCE)/predictions/$(MODEL_NAME)"; exit 0; }; \
		sleep 1; done; echo "TorchServe did not become healthy; see logs/ts_log.log"; exit 1

stop: ## stop TorchServe started by `make serve` and wait until it has exited
	@pid=$$(cat "$$($(PY) -c 'import tempfile; print(tempfile.gettempdir())')/.model_server.pid" 2>/dev/null); \
	$(BIN)/torchserve --stop; \
	for i in $$(seq 100); do [ -n "$$pid" ] && kill -0 $$pid 2>/dev/null || exit 0; sleep 0.2; done

predict: ## curl one prediction (TEXT="...")
	curl -s -X POST $(INFERENCE)/predictions/$(MODEL_NAME) -H 'Content-Type: application/json' \
		-d "$$($(PY) -c 'import json,sys; print(json.dumps({"text": sys.argv[1]}))' "$$TEXT")"; echo

scale: ## set the worker count through the management API (N=2)
	curl -s -X PUT "$(MANAGEMENT)/models/$(MODEL_NAME)?min_worker=$(N)&max_worker=$(N)&synchronous=true"; echo

status: ## describe the model and its workers
	curl -s $(MANAGEMENT)/models/$(MODEL_NAME); echo

test: install-dev archive ## run the whole test suite (unit + integration against a real TorchServe)
	$(BIN)/pytest -q tests

bench: install-dev archive ## naive FastAPI vs TorchServe grid vs ceilings -> bench/results/ (JSON, summary.md, PNG), ~6 min
	$(PY) bench/run.py

soak: install-dev archive ## 32 clients for MINUTES (5): every request answered? errors, RSS -> bench/results/soak.json
	$(PY) scripts/soak.py --minutes $(MINUTES) --concurrency 32

chaos: install-dev archive ## the soak while kill -9'ing a worker at 1/3 and 2/3: replacement and recovery times -> bench/results/chaos.json
	$(PY) scripts/soak.py --minutes $(MINUTES) --concurrency 32 --kill-worker --out bench/results/chaos.json

batch: install-dev export ## score a CSV/JSONL/Parquet file offline with the exported core: make batch IN=reviews.csv OUT=scored.csv
	$(PY) batch_predict.py $(IN) $(OUT) --artifact $(EXPORT)

kserve-layout: install-dev archive ## build/kserve/: model-store/ + config/config.properties for KServe's TorchServe runtime
	$(PY) deploy/kserve/build_layout.py --mar $(MAR) --out build/kserve

evaluate: install-dev ## accuracy and ROC AUC of the served model on the held-out split (VERSION=2; DATA=file.csv|.jsonl)
	$(PY) evaluate.py --url $(INFERENCE) --model $(MODEL_NAME) --version $(VERSION) $(if $(DATA),--data $(DATA)) --out $(BUILD)/served-evaluation.json

clean: ## remove build outputs and archives
	rm -rf build logs model_store/*.mar

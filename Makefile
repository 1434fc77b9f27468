# komorebi-worker — every entry point a developer or CI needs.
# `make test` and `make demo` set everything up on a fresh Debian machine.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
UV_VERSION := 0.13.9
STAMP := $(VENV)/.installed
PY_DIRS := $(wildcard worker tests bench)

.PHONY: help setup system-deps emulators demo test test-suite test-fast test-unit test-media \
        test-aws test-e2e test-image lint lint-python lint-infra \
        lint-docker lint-compose audit bench capacity soak clean image image-test test-image image-rm push \
        deploy deploy-dry-run pipeline-dry-run lock recordings

help: ## list targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

system-deps: ## ffmpeg, prometheus, chromium, firefox-esr, podman, node (tests, image test) from apt when root and missing
	@./.ci/system-deps

# The second AWS implementation of the end-to-end tests (LocalStack + dynalite), in .cache/.
emulators: $(STAMP)
	@./.ci/emulators/install

$(STAMP): pyproject.toml requirements.lock
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install -q --disable-pip-version-check uv==$(UV_VERSION)
	@# Compiled bytecode, as in the image: this environment sets PYTHONDONTWRITEBYTECODE, and
	@# without .pyc files every `komorebi-worker` start compiles its imports (about 1 s of CPU).
	@$(BIN)/uv pip sync -q --compile-bytecode --python $(BIN)/python requirements.lock
	@$(BIN)/uv pip install -q --compile-bytecode --python $(BIN)/python --no-deps -e .
	@touch $(STAMP)

setup: system-deps $(STAMP) emulators ## .venv from the lock file, system tools, test emulators

lock: ## re-resolve requirements.lock from pyproject.toml
	$(BIN)/uv pip compile pyproject.toml --extra dev --python-version 3.11 -q -o requirements.lock
	@# The image installs only runtime dependencies, pinned exactly as in requirements.lock.
	$(BIN)/uv pip compile pyproject.toml --python-version 3.11 -q -c requirements.lock \
		-o requirements-runtime.lock

demo: system-deps $(STAMP) ## run the whole pipeline once on the embedded AWS emulator
	$(BIN)/komorebi-worker dev --once

test: setup lint test-suite ## lint, then every test lane, then the image test

# Test lanes (tests/<lane>/; CONTRIBUTING.md, "Tests"). The unit lane is pure code: its
# conftest fails a test that spawns a process or opens a socket. Bytecode is written (to
# __pycache__, ignored by git and .dockerignore) even where the environment sets
# PYTHONDONTWRITEBYTECODE: recompiling the worker and its dependencies on every run costs
# more than the unit lane's tests themselves.
PYTEST := env -u PYTHONDONTWRITEBYTECODE $(BIN)/pytest -q
# The media, aws and e2e lanes mostly wait (process start-up, visibility timeouts, polling,
# browsers, emulators), so they run on TEST_WORKERS pytest-xdist workers (TEST_WORKERS=0: in
# this process, as before). Each worker starts its own moto server, emulators and tmp folders.
# --dist loadscope keeps a module (tests/conftest.py: or modules sharing a costly session
# fixture) on one worker: its module-scoped world (one worker process
# for a whole batch, cached speech cases and merges) is then built once, not once per worker.
TEST_WORKERS ?= 2
PARALLEL := $(if $(filter-out 0,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadscope,)

test-suite: setup ## every lane (unit, media, aws, e2e) in one run, then the image test (Jenkins' Test stage)
	$(PYTEST) $(PARALLEL)
	@$(MAKE) --no-print-directory test-image

test-unit: $(STAMP) ## pure tests: no subprocess, no socket (well under a minute)
	$(PYTEST) tests/unit

test-fast: test-unit ## the unit lane, for while you edit

test-media: setup ## real ffmpeg on real media, no AWS
	$(PYTEST) $(PARALLEL) tests/media

test-aws: setup ## adapters, job and consumer against moto (and LocalStack), in-process
	$(PYTEST) $(PARALLEL) tests/aws

test-e2e: setup ## worker and CLI processes, Prometheus, the browser, the small soak
	$(PYTEST) $(PARALLEL) tests/e2e

test-image: setup ## build the image with podman and run it for real (IMAGE_TEST=skip skips)
	@./.ci/image-test

image-test: test-image ## the image lane's former name

lint: setup lint-python lint-infra lint-docker lint-compose audit ## every static check

lint-python:
	$(BIN)/ruff check $(PY_DIRS)
	$(BIN)/ruff format --check $(PY_DIRS)
	$(BIN)/mypy
	@# The layer contracts (pyproject.toml [tool.importlinter], CONTRIBUTING.md "Layers").
	$(BIN)/lint-imports --no-cache

# checkov's skip list, each entry with its reason, lives in infra/checkov.yaml.
CHECKOV := $(BIN)/checkov --config-file infra/checkov.yaml

lint-infra: pipeline-dry-run
	$(BIN)/cfn-lint infra/template.yaml
	$(CHECKOV) -f infra/template.yaml

lint-docker:
	$(BIN)/hadolint --failure-threshold warning Dockerfile
	$(CHECKOV) -f Dockerfile

lint-compose:
	@test ! -f docker-compose.yml || ./.ci/compose-config docker-compose.yml

audit:
	@./.ci/audit

recordings: setup ## re-record tests/data's browser recordings (Chromium + Firefox ESR)
	$(BIN)/python -m tests.recorder

bench: setup ## performance benchmarks (writes bench/results/)
	$(BIN)/python -m bench

capacity: $(STAMP) ## capacity simulation of 500/2,000/10,000 agents on the template's scaling (writes bench/results/capacity/)
	$(BIN)/python -m bench.capacity --agents 500,2000,10000 --search

soak: setup ## long fault-injection soak (3 workers, 300+ messages)
	$(BIN)/python -m tests.harness.soak --messages 300

# --- image and deployment: each Jenkinsfile stage calls one of these ------------------------
# DRY_RUN=1 prints the commands of image, push and deploy instead of running them.
AWS_REGION ?= eu-west-1
IMAGE_TAG ?= $(shell git rev-parse --short=12 HEAD 2>/dev/null || echo dev)
STACK_NAME ?= komorebi-worker
DEPLOY_ENV ?= staging
DEPLOY_PARAMS ?= infra/params/$(DEPLOY_ENV).env
DRY_RUN ?=
RUN := $(if $(DRY_RUN),@echo +,)
# One repository name for push, task and IAM, one CPU for the build and the tasks: the
# template's ImageRepositoryName and CpuArchitecture, as DEPLOY_PARAMS (else the template's
# defaults) sets them. Each is read once, when first used.
PARAMETER = $(BIN)/python .ci/deploy.py --params $(DEPLOY_PARAMS) --lenient --get
IMAGE_REPO ?= $(eval IMAGE_REPO := $(shell $(PARAMETER) ImageRepositoryName))$(IMAGE_REPO)
CPU_ARCHITECTURE ?= $(eval CPU_ARCHITECTURE := $(shell $(PARAMETER) CpuArchitecture))$(CPU_ARCHITECTURE)
PLATFORM_X86_64 := linux/amd64
PLATFORM_ARM64 := linux/arm64
IMAGE_PLATFORM = $(PLATFORM_$(CPU_ARCHITECTURE))
CHECK_PARAMS = $(BIN)/python .ci/deploy.py --params $(DEPLOY_PARAMS) --get ImageRepositoryName
DEPLOY = $(BIN)/python .ci/deploy.py --image-tag $(IMAGE_TAG) --stack-name $(STACK_NAME) \
	--region $(AWS_REGION) --image-repository $(IMAGE_REPO)

image: $(STAMP) ## build IMAGE_REPO:IMAGE_TAG for the tasks' CpuArchitecture (tag: the commit)
	@test -n "$(IMAGE_REPO)" && test -n "$(IMAGE_PLATFORM)" || { echo "image: no repository \
	or CPU architecture from $(DEPLOY_PARAMS) (CpuArchitecture='$(CPU_ARCHITECTURE)')" >&2; exit 2; }
	$(RUN) docker build --pull --platform $(IMAGE_PLATFORM) -t $(IMAGE_REPO):$(IMAGE_TAG) .

image-rm: ## remove the image `make image` built (Jenkins' clean-up)
	docker image rm -f "$(IMAGE_REPO):$(IMAGE_TAG)"

push: $(STAMP) ## push the image to ECR (creates the repository on first use)
	@$(CHECK_PARAMS) >/dev/null
	./.ci/push-image $(IMAGE_REPO) $(IMAGE_TAG) $(AWS_REGION) $(if $(DRY_RUN),--dry-run)

deploy: $(STAMP) ## aws cloudformation deploy with IMAGE_TAG (params: infra/params/DEPLOY_ENV.env)
	$(DEPLOY) --params $(DEPLOY_PARAMS) $(if $(DRY_RUN),--dry-run)

deploy-dry-run: $(STAMP) ## validate infra/params/example.env, print the deploy command
	@$(MAKE) --no-print-directory deploy DRY_RUN=1 DEPLOY_PARAMS=infra/params/example.env

pipeline-dry-run: $(STAMP) ## the image, push and deploy stages' commands, printed, not run
	@$(MAKE) --no-print-directory image push deploy DRY_RUN=1 \
		DEPLOY_PARAMS=infra/params/example.env

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

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

.PHONY: help setup system-deps demo test test-fast lint lint-python lint-infra lint-docker \
        lint-compose audit bench soak clean image push deploy deploy-dry-run \
        pipeline-dry-run lock recordings

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

system-deps: ## ffmpeg (+ prometheus, chromium for tests) from apt when root and missing
	@./.ci/system-deps

$(STAMP): pyproject.toml requirements.lock
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install -q --disable-pip-version-check uv==$(UV_VERSION)
	@$(BIN)/uv pip sync -q --python $(BIN)/python requirements.lock
	@$(BIN)/uv pip install -q --python $(BIN)/python --no-deps -e .
	@touch $(STAMP)

setup: system-deps $(STAMP) ## create .venv from the lock file and check system tools

lock: ## re-resolve requirements.lock from pyproject.toml
	$(BIN)/uv pip compile pyproject.toml --extra dev --python-version 3.11 -q -o requirements.lock
	@# The image installs only runtime dependencies, pinned exactly as in requirements.lock.
	$(BIN)/uv pip compile pyproject.toml --python-version 3.11 -q -c requirements.lock \
		-o requirements-runtime.lock

demo: setup ## run the whole pipeline once on the embedded AWS emulator
	$(BIN)/komorebi-worker dev --once

test: setup lint ## lint, then the whole test suite
	$(BIN)/pytest -q

test-fast: setup ## tests without lint
	$(BIN)/pytest -q -x

lint: setup lint-python lint-infra lint-docker lint-compose audit ## every static check

lint-python:
	$(BIN)/ruff check $(PY_DIRS)
	$(BIN)/ruff format --check $(PY_DIRS)
	$(BIN)/mypy

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
	@./.ci/system-deps recorder
	$(BIN)/python -m tests.recorder

bench: setup ## performance benchmarks (writes bench/results/)
	$(BIN)/python -m bench

soak: setup ## long fault-injection soak (3 workers, 300+ messages)
	$(BIN)/python -m tests.soak --messages 300

# --- image and deployment: each Jenkinsfile stage calls one of these ------------------------
AWS_REGION ?= eu-west-1
IMAGE_REPO ?= komorebi-worker
IMAGE_TAG ?= $(shell git rev-parse --short=12 HEAD 2>/dev/null || echo dev)
STACK_NAME ?= komorebi-worker
DEPLOY_ENV ?= staging
DEPLOY_PARAMS ?= infra/params/$(DEPLOY_ENV).env
DEPLOY := $(BIN)/python .ci/deploy.py --image-tag $(IMAGE_TAG) --stack-name $(STACK_NAME) \
	--region $(AWS_REGION)

image: ## build the worker image (IMAGE_REPO:IMAGE_TAG, tag defaults to the commit)
	docker build --pull -t $(IMAGE_REPO):$(IMAGE_TAG) .

push: ## push the image to ECR (creates the repository on first use)
	./.ci/push-image $(IMAGE_REPO) $(IMAGE_TAG) $(AWS_REGION)

deploy: $(STAMP) ## aws cloudformation deploy with IMAGE_TAG (params: infra/params/DEPLOY_ENV.env)
	$(DEPLOY) --params $(DEPLOY_PARAMS)

deploy-dry-run: $(STAMP) ## validate infra/params/example.env, print the deploy command
	@$(DEPLOY) --params infra/params/example.env --dry-run

pipeline-dry-run: deploy-dry-run ## the push and deploy stages' commands, printed, not run
	@./.ci/push-image $(IMAGE_REPO) $(IMAGE_TAG) $(AWS_REGION) --dry-run

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

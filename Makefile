# Two commands on a fresh machine: `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SECRET_FILE := var/auth-secret

ROLE ?= staff
SUB ?= $(ROLE)-1
PROVIDER_ID ?=
EMPLOYER_ID ?=
SCALE ?= default
PYTEST_ARGS ?=

.PHONY: install run test lint e2e drills bench token up down clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	@touch $(STAMP)

install: $(STAMP)

$(SECRET_FILE):
	@mkdir -p var && $(PYTHON) -c 'import secrets; print(secrets.token_urlsafe(32))' > $(SECRET_FILE) && chmod 600 $(SECRET_FILE)

## Embedded mode: SQLite files, certificate folder and .eml mail under var/; three services.
run: $(STAMP) $(SECRET_FILE)
	AUTH_SECRET="$${AUTH_SECRET:-$$(cat $(SECRET_FILE))}" $(BIN)/python deploy/run_embedded.py

## The whole suite: unit, integration (SQLite and PostgreSQL), e2e with separate processes, drills.
test: $(STAMP)
	$(BIN)/pytest -n 2 --dist loadfile $(PYTEST_ARGS)

## Style and correctness checks (ruff): what CI requires before the tests.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

e2e: $(STAMP)
	$(BIN)/pytest tests/e2e $(PYTEST_ARGS)

drills: $(STAMP)
	$(BIN)/pytest -m drill $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python -m tests.bench --scale $(SCALE)

## A development token: make token ROLE=provider SUB=u1 PROVIDER_ID=<uuid>
token: $(STAMP) $(SECRET_FILE)
	@AUTH_SECRET="$${AUTH_SECRET:-$$(cat $(SECRET_FILE))}" $(BIN)/mint-token --role $(ROLE) --sub $(SUB) \
		$(if $(PROVIDER_ID),--provider-id $(PROVIDER_ID)) $(if $(EMPLOYER_ID),--employer-id $(EMPLOYER_ID))

## Production-like stack with Docker (needs a Docker engine): PostgreSQL, MinIO, Mailpit, APIs, workers.
up:
	docker compose -f deploy/compose.yaml up -d --build

down:
	docker compose -f deploy/compose.yaml down

clean:
	rm -rf var test-output .pytest_cache

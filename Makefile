# Two commands for a newcomer: `make run` and `make test`. Both install into .venv when needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test test-fast lint histories migration clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/dsr up --demo

lint: $(STAMP)
	$(BIN)/ruff check .

test: $(STAMP) lint
	$(BIN)/pytest

# The inner loop: leaves out what needs PostgreSQL, Dovecot or Chromium and the tests marked slow (whole stacks,
# killed workers, fuzzing), in two processes (pytest-xdist); `make test` (and CI) still runs everything, in one.
FAST := not slow and not postgres and not imap and not browser and not chaos
test-fast: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/pytest -q -n 2 -m "$(FAST)"

# Re-record the saved workflow histories that the replay test checks (after an intended change).
histories: $(STAMP)
	DSR_RECORD_HISTORIES=1 $(BIN)/pytest -q tests/workflows/test_request.py tests/workflows/test_subject_order.py

# Write the next ledger migration from the models: make migration MESSAGE="add requests.closed_at"
migration: $(STAMP)
	$(BIN)/python scripts/new-migration "$(MESSAGE)"

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis

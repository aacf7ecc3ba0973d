# lockcell — every target bootstraps its own virtual environment from a clean clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SEEDS ?= 20000
CHAOS_SEEDS ?= $(if $(filter command line,$(origin SEEDS)),$(SEEDS),1)
DURATION ?= 60

.PHONY: all run test lint typecheck unit bench soak chaos clean

all: test

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(BIN)/lockcell cell up

lint: $(STAMP)
	$(BIN)/ruff check server operator tests bench
	$(BIN)/mypy --strict server/lockcell operator/lockcell_operator

typecheck: lint

unit: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 -p no:cacheprovider

test: lint unit

bench: $(STAMP)  # BENCH_ARGS="--quick" or "--only files --files 100000"
	$(BIN)/python -m bench $(BENCH_ARGS)

soak: $(STAMP)
	LOCKCELL_SIM_SEEDS=$(SEEDS) $(BIN)/python -m pytest -q -n 2 -p no:cacheprovider tests/raft/test_simulation.py

chaos: $(STAMP)
	$(BIN)/python -m tests.chaos.run --duration $(DURATION) --seeds $(CHAOS_SEEDS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache

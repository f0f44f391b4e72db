# The two commands of the README:
#   make run    install into .venv, train the default models if their bundles are missing, serve them
#   make test   install what the tests need into .venv, then lint, type-check and run every test
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: run test lint typecheck pytest bench-serving bench-serving-ab bench-instructions bench-grpc bench-batch bench-training bench-digits clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Reinstall only when pyproject.toml changes (the install is editable: code changes need none).
$(VENV)/.installed-run: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet --editable '.[train,serve,batch]'
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet --editable '.[train,serve,batch,tracing,dev]'
	touch $@

run: $(VENV)/.installed-run
	$(BIN)/python -m training models --if-missing
	$(BIN)/python -m serving --repo models

test: $(VENV)/.installed-test lint typecheck pytest

lint: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(VENV)/.installed-test
	$(BIN)/mypy

pytest: $(VENV)/.installed-test
	$(BIN)/pytest

# Benchmarks need wrk (Debian: apt-get install wrk); results go to bench/RESULTS.md.
bench-serving: $(VENV)/.installed-test
	$(BIN)/python bench/serving_bench.py

# An image model over v2 binary, and the tabular hot path against an older commit (valgrind
# adds instruction counts).
bench-serving-ab: $(VENV)/.installed-test
	$(BIN)/python bench/serving_ab.py

# Instructions per request in the app (needs valgrind): for changes too small for wall time.
bench-instructions: $(VENV)/.installed-test
	$(BIN)/python bench/instructions.py

# gRPC against HTTP v2 on one server (tabular model, one row per request).
bench-grpc: $(VENV)/.installed-test
	$(BIN)/python bench/grpc_bench.py

# Our gRPC against KServe 0.21's gRPC server (its own venv, bench/.venvs/kserve, made on first run).
bench-grpc-kserve: $(VENV)/.installed-test
	$(BIN)/python bench/kserve_grpc_bench.py --write

bench-batch: $(VENV)/.installed-test
	$(BIN)/python bench/batch_bench.py

bench-training: $(VENV)/.installed-test
	$(BIN)/python bench/training_bench.py

# The digits CNN: ours against a plain PyTorch loop, and Keras 3 (torch backend) if installed.
bench-digits: $(VENV)/.installed-test
	$(BIN)/python bench/digits_bench.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

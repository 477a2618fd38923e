# Two commands set up everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: venv demo test test-fast test-compat lint format protos bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml tests/tf_agents_compat/wheel-requirements.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@# TF-Agents' wheel, whose own tests tests/tf_agents_compat runs on our modules:
	@# downloaded into the venv's folder, hash-checked by pip, never installed.
	$(BIN)/python -m pip download --quiet --no-deps --only-binary=:all: --require-hashes \
		-r tests/tf_agents_compat/wheel-requirements.txt --dest $(VENV) \
		|| echo "make venv: TF-Agents' wheel not downloaded; tests/tf_agents_compat will skip"
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/demo.py

# Two workers, one per core; a test file stays on one worker so its cached exports are shared.
# Bytecode is written even where the environment says not to (PYTHONDONTWRITEBYTECODE):
# the suite starts over a hundred Python processes, each of which would compile the
# project's modules again (~0.25 s of CPU for one that imports the exporters).
test: $(STAMP)
	PYTHONDONTWRITEBYTECODE= $(BIN)/python -m pytest -n 2 --dist loadfile

# Skips the tests marked slow; for quick local iterations only.
test-fast: $(STAMP)
	PYTHONDONTWRITEBYTECODE= $(BIN)/python -m pytest -n 2 --dist loadfile -m "not slow"

# TF-Agents' own tests of the mirrored modules, alone (make test runs them too).
test-compat: $(STAMP)
	$(BIN)/python -m pytest tests/tf_agents_compat -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-cache

# Regenerates the gRPC protocols' messages (runtimes/serving/proto/README.md).
protos: $(STAMP)
	$(BIN)/python -m grpc_tools.protoc -I runtimes/serving/proto \
	    --python_out=runtimes/serving/proto --pyi_out=runtimes/serving/proto \
	    runtimes/serving/proto/kserve_v2.proto runtimes/serving/proto/tfserving.proto

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache

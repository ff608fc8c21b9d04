# The two commands of the README. Both are idempotent.
.PHONY: demo test setup setup-test

demo: setup
	.venv/bin/semisup demo

test: setup-test
	.venv/bin/python -m pytest -q $(PYTEST_ARGS)

setup:
	scripts/setup.sh

setup-test:
	scripts/setup-test.sh

# OpenClipart (Debian openclipart-png + openclipart-svg, 156 MB of .debs; opt-in) imported with
# its real keywords at the demo's 28x28 grey, for WSL's transfer from another collection's tags:
# semisup stage wsl-run -c configs/wsl_demo.yaml --set external=runs/data/openclipart-28
.PHONY: openclipart
openclipart: setup
	@[ -d /usr/share/openclipart/png ] && [ -d /usr/share/openclipart/svg ] || { \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq openclipart-png openclipart-svg >/dev/null; }
	[ -f runs/data/openclipart-28/dataset.json ] || .venv/bin/semisup data import \
	  --set source=openclipart --set size=28 --set channels=1 --set out=runs/data/openclipart-28

# A real Kubernetes control plane on 127.0.0.1 (etcd, kube-apiserver, controller-manager,
# scheduler, kwok nodes, the training operator) plus a kubectl, all built from pinned Go
# modules; prints `export KUBECONFIG=...` and runs until Ctrl-C (README "A Kubernetes
# control plane on loopback").
.PHONY: k8s-env
k8s-env: setup
	scripts/ensure_k8s_env.sh --kubectl >/dev/null
	.venv/bin/python scripts/k8s_env.py up

# Container images (images/README.md): semisup-base first, then one image per stage, every
# tag at one version. `make images VERSION=0.2.0`, `make push-images REGISTRY=...`.
REGISTRY ?= ghcr.io/semisup
VERSION ?= $(shell sed -n '/^\[project\]/,/^\[/s/^version = "\(.*\)"/\1/p' pyproject.toml)
DOCKER ?= docker
DOCKER_BUILD_ARGS ?=
STAGES := data select launcher evaluate train score embed dedup llp contrastive distill synsets \
          weak-train
COMMIT ?= $(shell git rev-parse --short=12 HEAD 2>/dev/null)
LABELS = --label org.opencontainers.image.version=$(VERSION) \
         --label org.opencontainers.image.revision=$(COMMIT)
# every image is tagged twice: <version> (what the manifests and components name) and
# <version>-<commit> (which source it was built from; immutable across rebuilds of a version)
TAGS = -t $(REGISTRY)/semisup-$(1):$(VERSION) -t $(REGISTRY)/semisup-$(1):$(VERSION)-$(COMMIT)

.PHONY: images push-images image-base $(addprefix image-,$(STAGES))

images: $(addprefix image-,$(STAGES))

image-base:
	@test -n "$(VERSION)" || { echo "make: no VERSION (none in pyproject.toml)" >&2; exit 2; }
	$(DOCKER) build --pull $(DOCKER_BUILD_ARGS) $(LABELS) \
		$(call TAGS,base) images/base

$(addprefix image-,$(STAGES)): image-%: image-base
	$(DOCKER) build $(DOCKER_BUILD_ARGS) $(LABELS) -f images/$*/Dockerfile \
		--build-arg BASE_IMAGE=$(REGISTRY)/semisup-base:$(VERSION)-$(COMMIT) $(call TAGS,$*) .

push-images: images
	$(foreach i,base $(STAGES),$(DOCKER) push $(REGISTRY)/semisup-$(i):$(VERSION) && \
		$(DOCKER) push $(REGISTRY)/semisup-$(i):$(VERSION)-$(COMMIT) &&) true

# The images' hash locks (images/<stage>/requirements.lock, images/requirements-build.lock):
# rerun after changing requirements.lock, images/requirements-gpu.lock or a requirements.txt.
.PHONY: image-locks
image-locks: setup
	.venv/bin/python scripts/lock_images.py

# Pin the base image's FROM to the digest the registry serves for its tag now
# (python:3.11-slim-bookworm -> python:3.11-slim-bookworm@sha256:...); needs registry access.
.PHONY: pin-base
pin-base:
	@ref=$$(sed -n 's/^FROM \([^@ ]*\).*/\1/p' images/base/Dockerfile); \
	digest=$$($(DOCKER) buildx imagetools inspect "$$ref" --format '{{json .Manifest.Digest}}' | tr -d '"'); \
	case "$$digest" in sha256:*) ;; *) echo "make pin-base: no digest for $$ref" >&2; exit 1;; esac; \
	sed -i "s|^FROM [^ ]*|FROM $$ref@$$digest|" images/base/Dockerfile; \
	echo "images/base/Dockerfile: FROM $$ref@$$digest"

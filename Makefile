# lesionseg: every target works from a fresh clone and is idempotent.
# The virtual environment is rebuilt only when requirements.lock or pyproject.toml change.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PORT   ?= 3000
WORKER_PORT ?= 3001
# Loopback: without API keys the service serves loopback clients only, and refuses to start
# bound elsewhere (docs/security.md); HOST=0.0.0.0 needs LESIONSEG_API_KEYS(_FILE) or
# LESIONSEG_ALLOW_ANONYMOUS=true.
HOST   ?= 127.0.0.1
BENTOML_HOME ?= $(CURDIR)/.bentoml
export BENTOML_HOME
EXAMPLE := data/examples/lits117-z110.png
EXAMPLES := data/examples/lits117.nii.gz
LITS_NNUNET := data/lits117-nnunet/dataset.json
LOCK_HASH := $(shell cat requirements.lock pyproject.toml | sha256sum | cut -c1-16)
STAMP  := $(VENV)/.installed-$(LOCK_HASH)
PYTEST_ARGS ?=

export YOLO_OFFLINE := 1
export YOLO_AUTOINSTALL := false

.DEFAULT_GOAL := help
.PHONY: help setup data export engines models serve demo build bench bench-encoder test test-fast \
	lint format train train-default clean pacs-deps train-unet \
	bench-accuracy bench-gpu browser-deps container-deps container container-gpu \
	bench-container soak docs bench-detectors doctor ohif-deps worker postgres-deps

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-15s %s\n", $$1, $$2}'

$(STAMP): requirements.lock pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip==26.3 setuptools==84.2.1 wheel==0.48.0
	# torch==2.14.1 / torchvision==0.29.1 come from the machine's local wheel store
	$(PY) -m pip install -q --no-deps -r requirements.lock
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	@rm -f $(VENV)/.installed-*
	@touch $@

setup: $(STAMP) ## create .venv from requirements.lock (cached)

$(EXAMPLES): $(STAMP) lesionseg/datasets/examples.py
	$(PY) -m lesionseg.cli fetch-data
	$(PY) -m lesionseg.cli example --slice 110 --out data/examples

data: $(EXAMPLES) $(LITS_NNUNET) ## fetch the LiTS case; write the examples and data/lits117-nnunet

# Whether the export is current depends on LESIONSEG_MODEL_DIR and the model settings, which
# make cannot see: python decides (--if-stale), keyed by the bundle's fingerprint.
export: setup ## ONNX of the bundle in force, parity-checked (only when stale; `make models` imports it)
	$(PY) -m export onnx --if-stale

engines: export ## TensorRT engines from the ONNX files (NVIDIA GPU + pip install tensorrt)
	$(PY) -m export tensorrt

models: setup ## import SAM, detector, exports and the bundle into the BentoML store (idempotent)
	$(PY) -m service.model_store

serve: setup data export models ## serve on $(HOST):$(PORT), loopback by default; LESIONSEG_MODEL_DIR=DIR serves that bundle
	$(VENV)/bin/bentoml serve service.app:LesionSeg --host $(HOST) --port $(PORT)

worker: setup data export models ## a job worker apart from the API (python -m service.worker) on $(HOST):$(WORKER_PORT); see docs/pacs-integration.md
	$(PY) -m service.worker --host $(HOST) --port $(WORKER_PORT)

doctor: setup ## the deployment check of the settings in force on $(HOST): exit 1 if unsafe
	$(PY) -m service.doctor --host $(HOST)

demo: setup data export ## run the pipeline once from the command line on the example image
	$(PY) -m lesionseg.cli predict $(EXAMPLE) --out out/demo

build: export models ## bentoml build: a bento with the service, the library and the served bundle
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(VENV)/bin/bentoml build

# BENCH_ARGS narrows a run, e.g. BENCH_ARGS="--configs default --users 1 --seconds 3".
BENCH_ARGS ?=
bench: setup data export models ## naive vs default vs fastest servers, 1-8 users, issue 13 targets (~7 min)
	$(PY) -m benchmarks.load $(BENCH_ARGS)

# SOAK_ARGS shortens a run, e.g. SOAK_ARGS="--seconds 120 --warmup 60" (the verdicts need a quiet machine).
SOAK_ARGS ?=
soak: setup data export models ## 10 min at 80 % of the measured capacity: every request answered, RSS, p99 (~13 min)
	$(PY) -m benchmarks.soak $(SOAK_ARGS)

bench-gpu: setup data export ## GPU: encoder batch 1-32 per runtime, HTTP at 8/32/64 users (CUDA needed)
	$(PY) -m benchmarks.gpu $(BENCH_ARGS)

bench-encoder: setup export ## SAM encoder ms/img, decoder ms: torch, onnxruntime, openvino fp32/bf16
	$(PY) -m benchmarks.encoder_latency

# The sam-head side: the shipped bundle's not-selected head by default; BENCH_ARGS="--sam-head DIR"
# for another bundle, or "--fixture" (an untrained head).
bench-detectors: setup ## YOLO vs sam-head bundle: /segment and a 100-slice series, interleaved (~10 min)
	$(PY) -m benchmarks.detectors $(or $(BENCH_ARGS),--head-of lesionseg/models/lits117)

# Orthanc + its DICOMweb plugin from Debian, for the PACS integration tests (installed only when
# missing; needs root or sudo).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
pacs-deps: ## install Orthanc and orthanc-dicomweb (Debian packages) if missing
	@dpkg -s orthanc orthanc-dicomweb >/dev/null 2>&1 || { \
		$(SUDO) apt-get update -q && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
			orthanc orthanc-dicomweb; }

# PostgreSQL for the tests of the job table in PostgreSQL: they start a cluster of their own
# (tests/postgres.py); nothing is configured here.
postgres-deps: ## install PostgreSQL (Debian package) if missing
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
		$(SUDO) apt-get update -q && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
			postgresql; }

# Headless Chromium and its WebDriver from Debian, for the viewer's browser tests (Selenium
# drives them; nothing is downloaded at test time).
browser-deps: ## install chromium and chromium-driver (Debian packages) if missing
	@dpkg -s chromium chromium-driver >/dev/null 2>&1 || { \
		$(SUDO) apt-get update -q && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
			chromium chromium-driver; }

# OHIF Viewer 3 (npm's prebuilt @ohif/app, version pinned in tests/ohif.py) unpacked into
# .cache/ohif/ for tests/test_ohif.py and docs/viewer.md; Node's npm from Debian if missing.
# Offline, the fetch's error is printed and ignored: tests/test_ohif.py then skips, saying why.
ohif-deps: setup ## fetch OHIF Viewer (npm @ohif/app) into .cache/ohif (npm from Debian if missing)
	@command -v npm >/dev/null 2>&1 || { \
		$(SUDO) apt-get update -q && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
			nodejs npm; }
	-$(PY) -m tests.ohif

# Podman, runc and debootstrap from Debian, for `make container` where no Docker daemon answers
# (installed only when missing; needs root or sudo; deploy/engine.py says how podman runs here).
container-deps: ## install podman, runc and debootstrap (Debian packages) unless Docker runs
	@docker info >/dev/null 2>&1 || dpkg -s podman runc debootstrap >/dev/null 2>&1 || { \
		$(SUDO) apt-get update -q && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
			podman runc debootstrap; }

container: container-deps export models ## image lesionseg:<version> and :latest (docs/deployment.md)
	$(PY) -m deploy.container build

container-gpu: container-deps export models ## CUDA image lesionseg-gpu (onnxruntime-gpu, TensorRT)
	$(PY) -m deploy.container build --gpu

bench-container: container-deps export models ## image size, build times, cold start -> benchmarks/results
	$(PY) -m benchmarks.container

test: setup data pacs-deps postgres-deps browser-deps container-deps ohif-deps ## the whole test suite: unit, slow, integration, OHIF, docs build and examples, wheel, container
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: setup ## unit tests only (no slow real-model checks)
	$(PY) -m pytest -m "not slow and not integration" $(PYTEST_ARGS)

# The site of docs/ (MkDocs Material); tests/test_docs.py builds it the same way in `make test`.
docs: setup ## build the docs site (mkdocs --strict) into site/
	$(PY) docs/settings_page.py --check
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

lint: setup ## ruff lint and format check
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

format: setup ## ruff format and autofix
	$(VENV)/bin/ruff format . && $(VENV)/bin/ruff check --fix .

# lesionseg train: one training path for every dataset (lesionseg/train/train.py).
DATA ?=
OUT ?=
TRAIN_ARGS ?=
train: setup ## train on your data: make train DATA=dir OUT=dir [TRAIN_ARGS="--window abdomen ..."]
	@test -n "$(DATA)" -a -n "$(OUT)" || { echo "usage: make train DATA=<dataset dir> OUT=<bundle dir> [TRAIN_ARGS=...]"; exit 2; }
	$(PY) -m lesionseg.cli train $(DATA) --out $(OUT) $(TRAIN_ARGS)

# The shipped bundle, rebuilt with the same command from the LiTS case (about 80 min on 2 cores).
$(LITS_NNUNET): $(STAMP) lesionseg/datasets/examples.py
	$(PY) -m lesionseg.cli fetch-data --nnunet data/lits117-nnunet

train-default: setup $(LITS_NNUNET) ## rebuild the shipped LiTS bundle lesionseg/models/lits117 (~80 min, 2 cores)
	$(PY) -m lesionseg.cli train data/lits117-nnunet --labels tumour --window abdomen \
		--val-fraction 0.22 --axes all --epochs 200 --sam lora --sam-epochs 3 --sam-steps 40 \
		--time-budget 70 --name lits117 --out lesionseg/models/lits117

train-unet: setup data ## 2-D U-Net baseline (MONAI) -> models/unet/lits-unet2d.pt
	$(PY) -m lesionseg.train.unet --epochs 30 --out models/unet/lits-unet2d

bench-accuracy: setup data export ## accuracy tables on the LiTS validation slab -> benchmarks/results
	$(PY) -m benchmarks.accuracy
	$(PY) -m benchmarks.openvino_accuracy

clean: ## remove caches and outputs (keeps .venv and fetched data)
	rm -rf out runs .pytest_cache .ruff_cache

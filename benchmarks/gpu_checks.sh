#!/usr/bin/env bash
# The GPU figures in one go, for a session that is lent a GPU for a few minutes (issue 13):
# Stage-1 training and embedding throughput of the main design (ResNeXt-101 32x8d at 256 px) with
# deterministic kernels on/off and augmentation in the loader or on the device, one compiled run,
# and the 3D baselines at the main design's volume size.
#
#   bash benchmarks/gpu_checks.sh --prepare   # here, once: wheels the GPU image lacks -> benchmarks/out/wheels
#   bash benchmarks/gpu_checks.sh             # on the GPU machine (device `run`, carry benchmarks/out/wheels)
#   bash benchmarks/gpu_checks.sh --smoke     # on any machine: the same steps, tiny (checks this script)
#
# Tables go to $OUT (device runs) or benchmarks/out/gpu/. The steps stop within 9 minutes (timeouts
# 240 + 120 + 180 s): give the device run timeout_s=600. The GPU image brings its own python3,
# torch and timm; only the packages it lacks are installed, from the wheels, without their deps.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=benchmarks/out/wheels
MISSING=(zarr numcodecs donfig google-crc32c monai)

if [[ "${1:-}" == --prepare ]]; then
    # The project venv's versions, as wheels for the GPU image's CPython 3.12 on x86-64.
    pins=$(.venv/bin/python -m pip freeze | grep -iE "^($(IFS='|'; echo "${MISSING[*]}"))==")
    mkdir -p "$WHEELS"
    # shellcheck disable=SC2086  # one argument per pin
    .venv/bin/python -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --abi cp312 --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux_2_28_x86_64 -d "$WHEELS" $pins
    ls -l "$WHEELS"
    exit 0
fi

SMOKE=false
[[ "${1:-}" == --smoke ]] && SMOKE=true
PY=${PYTHON:-python3}
OUT=${OUT:-benchmarks/out/gpu}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src" PYTHONUNBUFFERED=1
if ! "$PY" -c "import zarr, numcodecs, monai" 2>/dev/null; then
    "$PY" -m pip install --quiet --no-index --no-deps --find-links "$WHEELS" "${MISSING[@]}"
fi
{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || echo "no nvidia-smi"
    "$PY" -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__, 'cuda', torch.cuda.is_available())"
    nproc
} | tee "$OUT/machine.txt"

if $SMOKE; then
    s1=(--backbone resnet10t --image-size 64 --batch-size 16 --workers 2 --train-steps 4 --warmup-steps 1
        --embed-sizes 32 64)
    s1c=(--backbone resnet10t --image-size 64 --batch-size 16 --workers 2 --train-steps 2 --warmup-steps 1 --no-embed)
    vol=(--families resnet10,acs --depth 32 --size 64 --batch-size 2 --steps 2)
else
    workers=$(( $(nproc) > 2 ? $(nproc) - 2 : 1 ))
    s1=(--backbone resnext101_32x8d --image-size 256 --batch-size 64 --workers "$workers" --train-steps 40
        --warmup-steps 10 --embed-sizes 2000 8000)
    s1c=(--backbone resnext101_32x8d --image-size 256 --batch-size 64 --workers "$workers" --train-steps 40
         --warmup-steps 15 --no-embed)
    vol=(--depth 64 --size 256 --batch-size 4 --steps 5)
fi
# Each step has its own limit, so one that hangs still leaves the others' tables.
timeout 240 "$PY" benchmarks/stage1_throughput.py "${s1[@]}" --deterministic on,off --augment-on loader,device \
    | tee "$OUT/stage1.md" || echo "stage1_throughput: exit $?"
timeout 120 "$PY" benchmarks/stage1_throughput.py "${s1c[@]}" --deterministic off --augment-on device --compile on \
    | tee "$OUT/stage1_compile.md" || echo "stage1_throughput --compile on: exit $?"
timeout 180 "$PY" benchmarks/volume_throughput.py "${vol[@]}" | tee "$OUT/volume.md" || echo "volume_throughput: exit $?"

#!/usr/bin/env bash
# The GPU checks (bench/gpu_check.py) on this project's lent GPU machine, in one call.
#
# That machine has no network. Its python3 (3.12) holds torch, torchvision,
# Cython, scikit-image, pytest, pytest-timeout, uvloop, xxhash and tqdm, but
# not simplejpeg or backports.zstd, and the kernels must be compiled there for
# its Python. So, here, once (.whl/ is ignored by git, and travels when carried):
#
#   bash bench/gpu_device.sh --fetch
#
# (the two wheels, and libjpeg-turbo unpacked into build/release/ by a build
# here), then, through the device tool:
#
#   run(command="bash bench/gpu_device.sh --images 8000",
#       carry=[".whl", "build/release/libjpeg-turbo-3.1.0"], timeout_s=540)
#
# It builds the kernels in place (about a minute on 16 cores), then runs every
# check (about 4-5 minutes for 8,000 images); $OUT gets gpu_check.json, the
# whole log and the build's log. Arguments after the first go to gpu_check.py.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" == "--fetch" ]]; then
    rm -rf .whl && mkdir -p .whl
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d .whl simplejpeg==1.9.0 backports.zstd==1.8.0
    [[ -f build/release/libjpeg-turbo-3.1.0/lib/libjpeg.a ]] \
        || python3 setup.py -q build_ext --inplace -j 2  # fetches and unpacks it
    ls -l .whl build/release/libjpeg-turbo-3.1.0/lib
    exit 0
fi

out="${OUT:-/tmp/gpu-device-out}"
mkdir -p "$out"
work=/tmp/gpu-device
rm -rf "$work" && mkdir -p "$work"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$work/site" .whl/*.whl
export PYTHONPATH="$work/site:$PWD" PYTHONUNBUFFERED=1
python3 --version
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
if ! FASTFORWARD_LIBJPEG="$PWD/build/release/libjpeg-turbo-3.1.0" \
        python3 setup.py build_ext --inplace -j "$(nproc)" > "$out/build.log" 2>&1; then
    tail -40 "$out/build.log"
    exit 1
fi
python3 -c "import fastforward, fastforward.fields.rgb_image as r; print('fastforward', fastforward.__version__, 'crop decoding:', r.CROP_DECODING)"
# gpu_check.py's own files (the tests' temporary folders among them) stay in $work:
# only a few files come back from $OUT
# (gpu_check.json is saved after each step, and copied back whatever happens; the
# checks get what is left of the device tool's 540 s after the install and build)
trap 'cp "$work/out/gpu_check.json" "$out/" 2>/dev/null || echo "no gpu_check.json was written"' EXIT
left=$((510 - SECONDS))
if (( left < 60 )); then
    echo "the install and build took $SECONDS s: no time left for the checks"
    exit 1
fi
echo "checks: at most $left s"
status=0
timeout "$left" python3 bench/gpu_check.py --out "$work/out" "$@" 2>&1 | tee "$out/gpu_check.log" \
    || status=$?
exit "$status"

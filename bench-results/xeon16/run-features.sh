#!/usr/bin/env bash
# How bench-results/xeon16/features.* were made on the device machine (16-core Xeon):
# a snapshot of the committed sdcli in .carry/head and the wheels the machine lacks in .whl.
# Usage: bench-results/xeon16/run-features.sh CASES   (e.g. deepcache,tiny_vae,combo)
set -euo pipefail
cases=$1
[ -d .site/nncf ] || python3 -m pip install -q --no-deps --upgrade --target .site .whl/*.whl
export PYTHONPATH=$PWD/.site:$PWD/.carry/head
export SDCLI_CACHE_DIR=$PWD/.bench/device-cache
out=${OUT:-bench-results}/xeon16
mkdir -p "$out"
[ -f bench-results/xeon16/features.json ] && cp bench-results/xeon16/features.json "$out/" || true
timeout 560 python3 -m sdcli bench-features --cases "$cases" --rounds 1 --workdir "$PWD/.bench/device" \
    --output-dir "$out" --batch-images 4 --batch-steps 8 || echo "bench-features stopped: $?"

#!/usr/bin/env bash
# On the device machine, after setup.sh: `sdcli bench` of the committed sdcli (a snapshot of
# HEAD in .carry/head), SD 1.5 architecture, 20 steps, against genai and optimum-intel.
# Usage: bench-results/xeon16/bench.sh MODES   (cold, warm or cold,warm)
set -uo pipefail
export PYTHONPATH=/tmp/site:$PWD/.carry/head PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
out=${OUT:-bench-results/xeon16}
[ -f bench-results/xeon16/bench.json ] && [ ! -f "$out/bench.json" ] && cp bench-results/xeon16/bench.json "$out/"
lscpu | grep "Model name" | tee "$out/lscpu.txt"
timeout 540 python3 -m sdcli bench --workdir /tmp/bench --steps 20 --rounds 3 --modes "$1" --peers sdcli,genai,optimum \
    --optimum-python "$PWD/bench-results/xeon16/optimum-python" --output-dir "$out" 2>&1 | tail -20

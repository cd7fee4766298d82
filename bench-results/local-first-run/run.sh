#!/usr/bin/env bash
# Issue 26 on the 2-core machine (run with nothing else on it): SD 1.5 architecture, fp16, 512x512,
# 4 Euler steps, CFG 7.5, sdcli vs openvino-genai, cold and warm, 3 rotated rounds, every run also
# under GNU time (/usr/bin/time); then SD-Turbo architecture, one step, no guidance, TAESD, warm,
# sdcli vs optimum-intel (its own virtualenv: scripts/optimum-venv.sh).
set -euo pipefail
cd "$(dirname "$0")/../.."
. .venv/bin/activate
out=bench-results/local-first-run
lscpu | grep "Model name" > $out/lscpu.txt
uptime >> $out/load.txt
for mode in cold warm; do
  python -m sdcli bench --arch sd15 --workdir /tmp/bench --steps 4 --rounds 3 --modes $mode --peers sdcli,genai \
      --output-dir $out/sd15 2>&1 | grep -v "^|"
  uptime >> $out/load.txt
done
python -m sdcli bench --arch sd-turbo --tiny-vae --workdir /tmp/bench --steps 1 --guidance-scale 0 --rounds 3 \
    --modes warm --peers sdcli,optimum --optimum-python .venv-oi/bin/python --output-dir $out/sd-turbo 2>&1 | grep -v "^|"

#!/usr/bin/env bash
# The 2026-11-27 afternoon runs on the device machine (16-core Xeon), in calls that each fit its
# 10-minute limit, the machine kept warm between them (/tmp/bench, /tmp/site*, /tmp/results
# persist while it is). sdcli runs from a snapshot of HEAD in .carry/head.
#   setup     carry .whl-slim .whl2b .whl-serve .carry   openvino (slimmed), diffusers, genai, fastapi/uvicorn;
#                                                      builds the random SD 1.5, SD-Turbo and LCM folders (TAESD in each)
#   oi        carry .whl-oi .carry                      optimum-intel; SD-Turbo 1 step, guidance 0, TAESD: sdcli vs optimum
#   sd15cold                                            SD 1.5 arch, 20 steps, cold: sdcli vs genai vs optimum
#   sd15warm                                            the same, warm
#   queue4 / queue1                                     a warm server's 10-request queue vs sdcli batch vs 10 generates
#   features                                            bench-features deepcache,tiny_vae,combo,lcm (genai warmed too)
# Every stage copies /tmp/results to $OUT.
set -uo pipefail
export PYTHONPATH=/tmp/site:$PWD/.carry/head PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
pip_install() { python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$1" "${@:2}"; }
out=${OUT:-/tmp/out}
res=/tmp/results
mkdir -p "$res"
lscpu | grep "Model name" | tee "$res/lscpu-$1.txt"
oi="--optimum-python $PWD/bench-results/xeon16/optimum-python"
case "$1" in
  setup) pip_install /tmp/site .whl-slim/*.whl .whl2b/*.whl .whl-serve/*.whl
         timeout 560 python3 - <<'EOF'
from pathlib import Path
from sdcli.bench.peers import ensure_models
from sdcli.bench.features import Models
work = Path("/tmp/bench")
Models(work, "sd15", print).with_tiny_vae()
ensure_models(work, "fp16", print, "sd-turbo", tiny_vae=True)
Models(work, "sd15", print).lcm()  # bench-features' LCM case (built again there if cut off here)
EOF
         ;;
  fsetup) pip_install /tmp/site .whl-slim/*.whl .whl2b/*.whl  # a fresh machine for bench-features: SD 1.5, TAESD, LCM
         timeout 560 python3 -c 'from pathlib import Path; from sdcli.bench.features import Models; m = Models(Path("/tmp/bench"), "sd15", print); m.with_tiny_vae(); m.lcm()' ;;
  int8) pip_install /tmp/site .whl-slim/*.whl .whl2b/*.whl .whl-nncf/*.whl  # SDXL int8 convert's peak (fresh machine)
        timeout 200 python3 -m sdcli.convert.random_model /tmp/bench/sdxl-random --sdxl > /dev/null
        timeout 330 python3 scripts/peak_rss.py -- python3 -m sdcli convert /tmp/bench/sdxl-random --output /tmp/bench/sdxl-int8 \
            --weight-format int8 --quiet | tee "$res/convert-int8.json" ;;
  oi) pip_install /tmp/site-oi .whl-oi/*.whl
      timeout 560 python3 -m sdcli bench --arch sd-turbo --workdir /tmp/bench --steps 1 --size 512 --guidance-scale 0 \
          --tiny-vae --rounds 3 --modes warm --peers sdcli,optimum $oi --output-dir "$res/sd-turbo" 2>&1 | tail -25 ;;
  sd15cold|sd15warm) timeout 570 python3 -m sdcli bench --arch sd15 --workdir /tmp/bench --steps 20 --size 512 --rounds 3 \
          --modes "${1#sd15}" --peers sdcli,genai,optimum $oi --output-dir "$res/sd15" 2>&1 | tail -14 ;;
  queue4|queue1) [ -f "$res/serve.json" ] || cp bench-results/xeon16/serve.json "$res/serve.json"
          config=$([ "$1" = queue4 ] && echo "4 steps, CFG 7.5" || echo "1 step, no CFG")
          SDCLI_CACHE_DIR=/tmp/serve-cache timeout 580 python3 scripts/bench_serve.py /tmp/bench/sd15-random-ov-fp16 \
              --mode queue --config "$config" --runs 3 --out "$res/serve.json" 2>&1 | tail -12 ;;
  features) timeout 580 python3 -m sdcli bench-features --cases "${2:-deepcache,tiny_vae,combo,lcm}" --rounds 3 \
              --workdir /tmp/bench --output-dir "$res/features" 2>&1 | tail -30 ;;
esac
cp -r "$res"/. "$out"/ 2>/dev/null
ls -R "$out" | head -30

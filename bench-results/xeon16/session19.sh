#!/usr/bin/env bash
# The 2026-11-27 evening runs on the device machine (16-core Xeon), in calls that each fit its
# 10-minute limit, the machine kept warm between them (/tmp/bench, /tmp/site, /tmp/results persist
# while it is).  sdcli runs from snapshots: .carry/head (this commit's), .carry/old (the commit
# before the streamed blob export, for the --low-memory comparison).
#   int8     carry .whl-slim .whl2b .whl-nncf .carry   openvino (slimmed), diffusers, genai, NNCF; builds the
#                                                    random SDXL, converts it to int8 (peak RSS)
#   lowmem                                           generate --low-memory 1024x1024, 1 step, on the int8 folder:
#                                                    three runs on a fresh cache (compile; compile + blob; import),
#                                                    the old code then the new, each run's peak RSS
#   fp16                                             converts the random SDXL to fp16 (peak RSS)
#   bench                                            1024x1024, 4 steps, warm: sdcli vs openvino-genai
#   turbo    carry .whl-oi .carry                    optimum-intel; 512x512, 1 step, guidance 0, TAESD: sdcli vs optimum
# Every stage copies /tmp/results to $OUT.
set -uo pipefail
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
pip_install() { python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$1" "${@:2}"; }
code() { echo "/tmp/site:$PWD/.carry/$1"; }
export PYTHONPATH=$(code head)
out=${OUT:-/tmp/out}
res=/tmp/results
mkdir -p "$res"
lscpu | grep "Model name" | tee "$res/lscpu-$1.txt"
case "$1" in
  int8) pip_install /tmp/site .whl-slim/*.whl .whl2b/*.whl .whl-nncf/*.whl
        timeout 200 python3 -m sdcli.convert.random_model /tmp/bench/sdxl-random --sdxl > /dev/null
        timeout 330 python3 scripts/peak_rss.py -- python3 -m sdcli convert /tmp/bench/sdxl-random --output /tmp/bench/sdxl-int8 \
            --weight-format int8 --quiet | tee "$res/convert-int8.json" ;;
  lowmem) for c in old head; do
            rm -rf /tmp/lowmem-cache
            for i in 1 2 3; do
              echo -n "$c run$i " >> "$res/lowmem-int8.txt"
              SDCLI_CACHE_DIR=/tmp/lowmem-cache PYTHONPATH=$(code $c) timeout 150 python3 scripts/peak_rss.py -- \
                  python3 -m sdcli generate --model /tmp/bench/sdxl-int8 --prompt "a lighthouse" --width 1024 --height 1024 \
                  --steps 1 --seed 1 --low-memory --json --quiet --output /tmp/lowmem-$c-$i.png | tail -1 >> "$res/lowmem-int8.txt"
            done
          done
          cut -c1-12,200- "$res/lowmem-int8.txt" ;;
  fp16) timeout 300 python3 scripts/peak_rss.py -- python3 -m sdcli convert /tmp/bench/sdxl-random \
            --output /tmp/bench/sdxl-random-ov-fp16 --weight-format fp16 --quiet | tee "$res/convert-fp16.json" ;;
  bench) timeout 570 python3 -m sdcli bench --arch sdxl --workdir /tmp/bench --steps 4 --size 1024 --rounds 3 --modes warm \
             --peers sdcli,genai --output-dir "$res/sdxl1024" 2>&1 | tail -12 ;;
  turbo) pip_install /tmp/site-oi .whl-oi/*.whl
         timeout 570 python3 -m sdcli bench --arch sdxl --workdir /tmp/bench --steps 1 --size 512 --guidance-scale 0 --tiny-vae \
             --rounds 3 --modes warm --peers sdcli,optimum --optimum-python "$PWD/bench-results/xeon16/optimum-python" \
             --output-dir "$res/turbo" 2>&1 | tail -12 ;;
esac
cp -r "$res"/. "$out"/

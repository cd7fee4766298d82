#!/usr/bin/env bash
# SDXL on the device machine (16-core Xeon), in calls that each fit its 10-minute limit, the
# machine kept warm between them (/tmp/bench and /tmp/site persist while it is):
#   setup1   carry .whl-slim .whl2b          openvino (its wheel less the GPU/NPU plugins and TF/Paddle/GGUF
#                                            frontends, to fit the 64 MiB a call carries), diffusers, genai;
#                                            builds the random SDXL (fp16) and TAESD
#   convert  carry .whl-oi                   optimum-intel; sdcli convert --tiny-vae, its peak RSS
#   bench                                    1024x1024, 4 steps, warm: sdcli vs openvino-genai
#   turbo                                    512x512, 1 step, guidance 0, TAESD: sdcli vs optimum-intel
#   int8     carry .whl-slim .whl2b .whl-nncf  (a fresh machine) builds the random SDXL, converts it to int8
#   lowmem                                   generate --low-memory 1024x1024 on the int8 folder: its peak RSS
set -uo pipefail
export PYTHONPATH=/tmp/site:$PWD/.carry/head PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
pip_install() { python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$1" "${@:2}"; }
out=${OUT:-/tmp/out}
lscpu | grep "Model name" | tee "$out/lscpu-$1.txt"
case "$1" in
  setup1) pip_install /tmp/site .whl-slim/*.whl .whl2b/*.whl
          python3 scripts/peak_rss.py -- python3 -m sdcli.convert.random_model /tmp/bench/sdxl-random --sdxl
          python3 -m sdcli.convert.random_model /tmp/bench/taesdxl --taesd ;;
  convert) pip_install /tmp/site-oi .whl-oi/*.whl
           python3 scripts/peak_rss.py -- python3 -m sdcli convert /tmp/bench/sdxl-random --output /tmp/bench/sdxl-random-ov-fp16 \
               --tiny-vae /tmp/bench/taesdxl --quiet | tee "$out/convert.json" ;;
  bench) timeout 560 python3 -m sdcli bench --arch sdxl --workdir /tmp/bench --steps 4 --size 1024 --rounds 3 --modes warm \
             --peers sdcli,genai --output-dir "$out/sdxl1024" 2>&1 | tail -12 ;;
  turbo) timeout 560 python3 -m sdcli bench --arch sdxl --workdir /tmp/bench --steps 1 --size 512 --guidance-scale 0 --tiny-vae \
             --rounds 3 --modes warm --peers sdcli,optimum --optimum-python "$PWD/bench-results/xeon16/optimum-python" \
             --output-dir "$out/turbo" 2>&1 | tail -12 ;;
  int8) pip_install /tmp/site .whl-slim/*.whl .whl2b/*.whl .whl-nncf/*.whl
        [ -f /tmp/bench/sdxl-random/model_index.json ] || python3 -m sdcli.convert.random_model /tmp/bench/sdxl-random --sdxl
        python3 scripts/peak_rss.py -- python3 -m sdcli convert /tmp/bench/sdxl-random --output /tmp/bench/sdxl-int8 \
            --weight-format int8 --quiet | tee "$out/convert-int8.json" ;;
  lowmem) for i in 1 2; do SDCLI_CACHE_DIR=/tmp/lowmem-cache python3 scripts/peak_rss.py -- python3 -m sdcli generate \
              --model /tmp/bench/sdxl-int8 --prompt "a lighthouse" --width 1024 --height 1024 --steps 2 --seed 1 \
              --low-memory --json --quiet --output /tmp/lowmem.png; done | tee "$out/lowmem-int8.json" ;;
esac

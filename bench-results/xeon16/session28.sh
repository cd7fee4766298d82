#!/usr/bin/env bash
# What session 27 left on the device machine (16-core Xeon), for the next lease, in back-to-back calls of one machine:
#   PHASE=1  wheels; the 4x upscale against spandrel in torch, 3 rounds (issue 23; it converts its own random
#            upscalers in seconds)
#   PHASE=2  the SDXL folder and ControlNets of bench_controlnet built (about 400 s on 16 cores), then the SDXL
#            ControlNet benchmark at 1024², 4 steps: no unit, one, two, one from an empty cache, diffusers' bf16
#            pipeline (issue 22), as far as the call allows (every run is saved as it ends)
#   PHASE=3  more SDXL ControlNet rounds, added to PHASE=2's bench.json (--append --no-warm-up: the cache is warm)
#   PHASE=4  SD 1.5 hires fix, 512² -> 1024², a third round added to session 27's two (copy
#            session27/hires-sd15/bench.json to $RESULTS/hires-sd15/ first: --append) (issue 23)
# Issue 21's klein/Z-Image calls are bench-results/xeon16/session25.sh's (its PHASE=3: klein 1024² warm).
# A phase whose models are gone (a fresh machine) builds them again first. Each phase ends with one tarball in $OUT.
# TINY=1 PYTHON=.venv/bin/python WORK=... RESULTS=... OUT=...: the tiny models, a check of the script here.
# Carry: .whl (openvino less its GPU/NPU plugins and TF/Paddle/GGUF/JAX frontends, genai, tokenizers, telemetry,
# diffusers 0.42.1), .whl-sp (spandrel 0.4.2), .carry/bin (GNU time). The code is the working tree's.
. "$(dirname "$0")/lib.sh"
cnxl=${TINY:+tiny-sdxl}; cnxl=${cnxl:-sdxl}
xlconfigs=sdcli-0cn,sdcli-1cn,sdcli-2cn,sdcli-1cn-cold,torch-1cn-bf16
arch=${TINY:+tiny}; arch=${arch:-sd15}
pids=""
if [ "$phase" = 4 ] && [ ! -f "$work/$arch-random-ov-fp16/model_index.json" ]; then
  log "building and converting $arch (bench_hires)"
  $py -c "from pathlib import Path; from sdcli.bench.peers import ensure_models
print(ensure_models(Path('$work'), 'fp16', print, '$arch'))" > "$res/made-$arch.txt" 2>&1 & pids="$pids $!"
fi
if { [ "$phase" = 2 ] || [ "$phase" = 3 ]; } && [ ! -f "$work/cn/$cnxl-ov/model_index.json" ]; then
  log "building and converting the ControlNet benchmark's $cnxl"
  $py -c "import sys; sys.path.insert(0, '$R/scripts'); from pathlib import Path; import bench_controlnet as b
print(b.prepare(Path('$work/cn'), arch='$cnxl'))" > "$res/made-cn-$cnxl.txt" 2>&1 & pids="$pids $!"
fi
if [ -n "$pids" ]; then wait $pids; tail -qn 1 "$res"/made-*.txt; log "models ready"; fi
case "$phase" in
  1) bench $(( $(left) - 15 )) upscale bench_upscale.py --workdir "$work" ${TINY:+--size 64} --rounds "$rounds" ;;
  2) bench $(( $(left) - 15 )) controlnet-$cnxl bench_controlnet.py --workdir "$work/cn" --arch $cnxl \
         --rounds "$rounds" --steps "${XLSTEPS:-4}" --configs $xlconfigs ;;
  3) bench $(( $(left) - 15 )) controlnet-$cnxl bench_controlnet.py --workdir "$work/cn" --arch $cnxl \
         --rounds "$rounds" --steps "${XLSTEPS:-4}" --configs $xlconfigs --append --no-warm-up ;;
  4) bench $(( $(left) - 15 )) hires-sd15 bench_hires.py --workdir "$work" $tiny --cases sd15 --rounds 1 --append ;;
esac
tar -C "$res" -czf "$out/results-$phase.tgz" .  # one file: a call brings back only a few
cp "$res/timeline.txt" "$out"/ 2>/dev/null
ls -R "$out" | head -30

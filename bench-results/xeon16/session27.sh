#!/usr/bin/env bash
# Issues 22 and 23 on the device machine (16-core Xeon), session 27, in back-to-back calls of one machine:
#   PHASE=1  wheels; built and converted in parallel: the random SD 1.5 (fp16) of bench_vae_decode/bench_hires,
#            the SD 1.5 and SDXL folders and ControlNets of bench_controlnet; then the SD 1.5 ControlNet benchmark
#            (no unit, one, two, one from an empty cache, diffusers' bf16 pipeline; scripts/bench_controlnet.py)
#   PHASE=2  the VAE decode against openvino-genai (512², 1024²), the 4x upscale against spandrel in torch, then the
#            SD 1.5 512² -> 1024² hires fix, as far as the time allows (every run is saved as it ends)
#   PHASE=3  the SDXL ControlNet benchmark at 1024² (rounds as the time allows)
# A phase whose models are gone (a fresh machine) builds them again first. Each phase ends with one tarball in $OUT.
# TINY=1 PYTHON=.venv/bin/python WORK=... RESULTS=... OUT=...: the tiny models, a check of the script here.
# Carry: .whl (openvino less its GPU/NPU plugins and TF/Paddle/GGUF/JAX frontends, genai, tokenizers, telemetry,
# diffusers 0.42.1), .whl-sp (spandrel 0.4.2), .carry/bin (GNU time). The code is the working tree's.
. "$(dirname "$0")/lib.sh"
cn15=${TINY:+tiny}; cn15=${cn15:-sd15}
cnxl=${TINY:+tiny-sdxl}; cnxl=${cnxl:-sdxl}
arch=${TINY:+tiny}; arch=${arch:-sd15}
pids=""
if [ ! -f "$work/$arch-random-ov-fp16/model_index.json" ]; then
  log "building and converting $arch (bench_vae_decode, bench_hires)"
  $py -c "from pathlib import Path; from sdcli.bench.peers import ensure_models
print(ensure_models(Path('$work'), 'fp16', print, '$arch'))" > "$res/made-$arch.txt" 2>&1 & pids="$pids $!"
fi
for a in $cn15 $cnxl; do
  [ -f "$work/cn/$a-ov/model_index.json" ] && continue
  log "building and converting the ControlNet benchmark's $a"
  $py -c "import sys; sys.path.insert(0, '$R/scripts'); from pathlib import Path; import bench_controlnet as b
print(b.prepare(Path('$work/cn'), arch='$a'))" > "$res/made-cn-$a.txt" 2>&1 & pids="$pids $!"
done
if [ -n "$pids" ]; then wait $pids; tail -qn 1 "$res"/made-*.txt; log "models ready"; fi
case "$phase" in
  1) bench $(( $(left) - 15 )) controlnet-$cn15 bench_controlnet.py --workdir "$work/cn" --arch $cn15 --rounds "$rounds" \
         --configs sdcli-0cn,sdcli-1cn,sdcli-2cn,sdcli-1cn-cold,torch-1cn-bf16 ;;
  2) bench $(( ($(left) - 20) * 30 / 100 )) vae-decode bench_vae_decode.py --workdir "$work" $tiny --rounds "$rounds"
     bench $(( ($(left) - 20) * 30 / 100 )) upscale bench_upscale.py --workdir "$work" ${TINY:+--size 64} --rounds "$rounds"
     bench $(( $(left) - 15 )) hires-sd15 bench_hires.py --workdir "$work" $tiny --cases sd15 --rounds "$rounds" ;;
  3) bench $(( $(left) - 15 )) controlnet-$cnxl bench_controlnet.py --workdir "$work/cn" --arch $cnxl --rounds "$rounds" \
         --steps "${XLSTEPS:-4}" --configs sdcli-0cn,sdcli-1cn,sdcli-1cn-cold,torch-1cn-bf16 ;;
esac
tar -C "$res" -czf "$out/results-$phase.tgz" .  # one file: a call brings back only a few
cp "$res/timeline.txt" "$out"/ 2>/dev/null
ls -R "$out" | head -30

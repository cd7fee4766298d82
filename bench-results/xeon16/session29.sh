#!/usr/bin/env bash
# Issues 22 and 23 on the device machine (16-core Xeon), session 29, in back-to-back calls of one machine kept warm:
#   PHASE=1  wheels; the 4x upscale against spandrel in torch (f32 and bf16), 3 rounds, on a quiet machine (it converts
#            its own random upscalers in seconds); then the random SD 1.5 (fp16) of bench_hires and the SDXL folder and
#            ControlNets of bench_controlnet built in parallel, in a process session of their own (setsid), so that a
#            build that outlasts the call goes on into the next one (the machine stays warm between calls)
#   PHASE=2  waits for those builds, then the SDXL ControlNet benchmark at 1024², 4 steps: no unit, one, two, one from
#            an empty cache, diffusers' bf16 pipeline, rotated rounds as far as the call allows (each run kept)
#   PHASE=3  CNROUNDS more SDXL ControlNet rounds (--append --no-warm-up; the cache is warm), then the SD 1.5 hires fix,
#            512² -> 1024², 3 rounds, as far as the call allows
# A phase whose models are gone (a fresh machine) builds them first. Each phase ends with one tarball in $OUT.
# TINY=1 PYTHON=.venv/bin/python WORK=... RESULTS=... OUT=...: the tiny models, a check of the script here.
# Carry: .whl (openvino less its GPU/NPU plugins and TF/Paddle/GGUF/JAX frontends, genai, tokenizers, telemetry,
# diffusers 0.42.1), .whl-sp (spandrel 0.4.2), .carry/bin (GNU time). The code is the working tree's.
. "$(dirname "$0")/lib.sh"
cnxl=${TINY:+tiny-sdxl}; cnxl=${cnxl:-sdxl}
xlconfigs=sdcli-0cn,sdcli-1cn,sdcli-2cn,sdcli-1cn-cold,torch-1cn-bf16
arch=${TINY:+tiny}; arch=${arch:-sd15}
build() {  # both model sets, in parallel; "$work/built" once both are there
  $py -c "from pathlib import Path; from sdcli.bench.peers import ensure_models
print(ensure_models(Path('$work'), 'fp16', print, '$arch'))" > "$res/made-$arch.txt" 2>&1 &
  $py -c "import sys; sys.path.insert(0, '$R/scripts'); from pathlib import Path; import bench_controlnet as b
print(b.prepare(Path('$work/cn'), arch='$cnxl'))" > "$res/made-cn-$cnxl.txt" 2>&1 &
  wait
  touch "$work/built"
}
wait_built() {  # until the builds are done or the call's time is nearly out
  while [ ! -f "$work/built" ] && [ "$(left)" -gt 20 ]; do sleep 5; done
  [ -f "$work/built" ] && { tail -qn 1 "$res"/made-*.txt; log "builds ended (their last lines above)"; }
}
if [ "$phase" = 1 ]; then
  bench $(( ${UPSCALE_S:-200} )) upscale bench_upscale.py --workdir "$work" ${TINY:+--size 64} --rounds "$rounds" \
      --peers sdcli-f32,sdcli,torch,torch-bf16
fi
if [ ! -f "$work/built" ] && [ ! -f "$work/building" ]; then
  log "building and converting $arch (bench_hires) and the ControlNet benchmark's $cnxl"
  touch "$work/building"
  export -f build; export py work res arch cnxl R
  setsid bash -c build > "$res/build.log" 2>&1 < /dev/null &
fi
wait_built
case "$phase" in
  2) bench $(( $(left) - 15 )) controlnet-$cnxl bench_controlnet.py --workdir "$work/cn" --arch $cnxl \
         --rounds "$rounds" --steps "${XLSTEPS:-4}" --configs $xlconfigs ;;
  3) bench $(( ${CN_S:-250} )) controlnet-$cnxl bench_controlnet.py --workdir "$work/cn" --arch $cnxl \
         --rounds "${CNROUNDS:-1}" --steps "${XLSTEPS:-4}" --configs $xlconfigs --append --no-warm-up
     bench $(( $(left) - 15 )) hires-sd15 bench_hires.py --workdir "$work" $tiny --cases sd15 --rounds "$rounds" ;;
esac
tar -C "$res" -czf "$out/results-$phase.tgz" .  # one file: a call brings back only a few
cp "$res/timeline.txt" "$out"/ 2>/dev/null
ls -R "$out" | head -30

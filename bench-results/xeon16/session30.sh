#!/usr/bin/env bash
# Issue 23 on the device machine (16-core Xeon), session 30, in back-to-back calls of one machine kept warm:
#   PHASE=1  wheels; the 4x upscale of RRDBNet against spandrel in torch (f32 and bf16), 3 rounds, on a quiet machine
#            (session 29 measured Compact; its RRDBNet runs were cut); then the random SD 1.5 and SDXL (fp16) of
#            bench_hires built in parallel in a process session of their own (setsid), going on into the next call
#   PHASE=2  waits for the builds; the VAE decode against genai at 512² and 1024² with one more variant, sdcli-nodrop
#            (the blob's mapped pages kept while importing: is the first decode's 1.06-1.10x of session 27 the page
#            dropping?); then the SD 1.5 hires fix 512² -> 1024², 3 rounds
#   PHASE=3  the SDXL hires fix 1024² -> 2048² with the VAE tiled (issue 23: peak RSS within 8 GB), rounds without a
#            warm-up as far as the call allows
# Each phase ends with one tarball in $OUT. TINY=1 PYTHON=/abs/.venv/bin/python WORK=... RESULTS=... OUT=...: the tiny
# models, a check of the script here. Carry: .whl, .whl-sp, .carry/bin (see session29.sh). The code is the tree's.
. "$(dirname "$0")/lib.sh"
build() {  # both model sets, in parallel; "$work/built" once both are there
  for a in $archs; do
    $py -c "from pathlib import Path; from sdcli.bench.peers import ensure_models
print(ensure_models(Path('$work'), 'fp16', print, '$a'))" > "$res/made-$a.txt" 2>&1 &
  done
  wait
  touch "$work/built"
}
wait_built() {
  while [ ! -f "$work/built" ] && [ "$(left)" -gt 20 ]; do sleep 5; done
  [ -f "$work/built" ] && { tail -qn 1 "$res"/made-*.txt; log "builds ended (their last lines above)"; }
}
archs=${TINY:+tiny tiny-sdxl}; archs=${archs:-sd15 sdxl}
if [ "$phase" = 1 ]; then
  bench $(( ${UPSCALE_S:-420} )) upscale bench_upscale.py --workdir "$work" ${TINY:+--size 64} --rounds "$rounds" \
      --archs rrdbnet --peers sdcli,torch,torch-bf16
fi
if [ ! -f "$work/built" ] && [ ! -f "$work/building" ]; then
  log "building and converting $archs (bench_hires)"
  touch "$work/building"
  export -f build; export py work res archs R
  setsid bash -c build > "$res/build.log" 2>&1 < /dev/null &
fi
[ "$phase" = 1 ] || wait_built
case "$phase" in
  2) bench $(( ${VAE_S:-230} )) vae-decode bench_vae_decode.py --workdir "$work" $tiny --rounds "$rounds" \
         --variants sdcli,sdcli-nodrop,genai-cache,genai
     bench $(( $(left) - 15 )) hires-sd15 bench_hires.py --workdir "$work" $tiny --cases sd15 --rounds "$rounds" ;;
  3) bench $(( $(left) - 15 )) hires-sdxl bench_hires.py --workdir "$work" $tiny --cases sdxl --variants hires-tiled \
         --rounds "$rounds" --no-warm-up ;;
esac
tar -C "$res" -czf "$out/results-$phase.tgz" .
cp "$res/timeline.txt" "$out"/ 2>/dev/null
ls -R "$out" | head -30

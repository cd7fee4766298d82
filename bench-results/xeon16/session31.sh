#!/usr/bin/env bash
# Issues 23 and 21 on the device machine (16-core Xeon), session 31, in back-to-back calls of one machine kept warm:
#   PHASE=1  wheels; the random SD 1.5 (fp16) and FLUX.2-klein 4B (int8) folders built in parallel in a process
#            session of their own (setsid: a build the call's end cuts goes on into the next call); then the VAE
#            decode against genai (CACHE_DIR) at 512² and 1024², 3 rounds, with the decoder's pages kept on import
#            (615c487: session 30 measured that variant as sdcli-nodrop, not this code)
#   PHASE=2  klein 1024² warm against genai: warm-ups into a kept cache (--warm-cache), then rounds as far as the
#            call allows (2 fit in 9.5 minutes; every run saved as it ends)
#   PHASE=3  KROUNDS (1) more klein rounds of KPEERS (sdcli,genai; --append, the caches warmed in PHASE=2: the
#            peer PHASE=2's end cut), then the SD 1.5 hires fix 512² -> 1024², 4 + 4 steps, base and hires,
#            3 rounds in this one lease, then VROUNDS (3) more VAE decode rounds as far as the call allows
# Each phase ends with one tarball in $OUT. TINY=1 PYTHON=/abs/.venv/bin/python WORK=... RESULTS=... OUT=...: the
# tiny models, a check of the script here. Carry: .whl (openvino, genai, tokenizers, telemetry, diffusers 0.42.1),
# .whl-nncf (nncf 3.4.0, pydot 4.0.1: the int8 conversion), .carry/bin (GNU time). The code is the working tree's.
. "$(dirname "$0")/lib.sh"
sd=${TINY:+tiny}; sd=${sd:-sd15}
klein=${TINY:+tiny-flux2-klein}; klein=${klein:-flux2-klein}
big=${TINY:+128}; big=${big:-1024}
kdir=$res/flux2-klein-int8-$big
build() {  # both models, in parallel; "$work/built" once both are there
  $py -c "from pathlib import Path; from sdcli.bench.peers import ensure_models
print(ensure_models(Path('$work'), 'fp16', print, '$sd'))" > "$res/made-$sd.txt" 2>&1 &
  $py -c "import json, sys; from pathlib import Path; from sdcli.bench.flow import ensure_flow_models
folder, made = ensure_flow_models(Path('$work'), '$klein', 'int8', lambda s: print(s, file=sys.stderr))
print(json.dumps({'folder': str(folder), **made}))" > "$res/made-$klein.txt" 2>&1 &
  wait
  rm -rf "${work:?}/$klein-random"  # the bf16 source: not needed once converted
  touch "$work/built"
}
if [ ! -f "$work/built" ] && [ ! -f "$work/building" ]; then
  log "building and converting $sd and $klein (int8)"
  touch "$work/building"
  export -f build; export py work res sd klein
  setsid bash -c build > "$res/build.log" 2>&1 < /dev/null &
fi
while [ ! -f "$work/built" ] && [ "$(left)" -gt 20 ]; do sleep 5; done
[ -f "$work/built" ] || { log "the builds go on"; tar -C "$res" -czf "$out/results-$phase.tgz" .; exit 0; }
tail -qn 1 "$res"/made-*.txt
log "models ready"
kbench() {  # seconds rounds args...: klein warm at the big size against genai
  local t=$1 n=$2; shift 2
  if [ "$t" -lt 60 ]; then log "no time left for klein ($t s)"; return; fi
  log "klein warm, $n rounds, $t s at most"
  timeout "$t" $py -m sdcli bench --arch "$klein" --weight-format int8 --workdir "$work" --size "$big" \
      --rounds "$n" --modes warm --peers sdcli,genai --no-text-encoder-apart --warm-cache "$work/klein-warm" \
      --output-dir "$kdir" "$@" 2>&1 >/dev/null | tail -4
  log "klein warm done (rc ${PIPESTATUS[0]}; 124: cut off, the runs before it kept)"
  $py -m sdcli bench --no-run --output-dir "$kdir" > "$kdir/bench.md" 2>/dev/null
}
case "$phase" in
  1) bench $(( $(left) - 15 )) vae-decode bench_vae_decode.py --workdir "$work" $tiny --rounds "$rounds" \
         --variants sdcli,genai-cache ;;
  2) kbench $(( $(left) - 15 )) "$rounds" ;;
  3) kbench $(( $(left) - 15 )) "${KROUNDS:-1}" --append --peers "${KPEERS:-sdcli,genai}"
     bench $(( ${HIRES_S:-300} )) hires-sd15 bench_hires.py --workdir "$work" $tiny --cases sd15 --variants base,hires \
         --rounds "$rounds"
     bench $(( $(left) - 15 )) vae-decode bench_vae_decode.py --workdir "$work" $tiny --rounds "${VROUNDS:-3}" \
         --variants sdcli,genai-cache --append ;;
esac
tar -C "$res" -czf "$out/results-$phase.tgz" .  # one file: a call brings back only a few
cp "$res/timeline.txt" "$out"/ 2>/dev/null
ls -R "$out" | head -30

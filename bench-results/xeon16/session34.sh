#!/usr/bin/env bash
# Issue 23's VAE decode on the device machine (16-core Xeon) beside session33.sh's Z-Image cold row, for a lease
# after session 33's (more rounds than session 31's 6: bench_vae_decode.py, variants sdcli and genai-cache). In the
# calls of one machine kept warm:
#   CALL 1 (carry .whl .whl-nncf .carry): PHASE=1 bash session33.sh (its Z-Image build starts in the background), then
#          this script: the SD 1.5 folder built here, no rounds before ZBUILT (session33's build marker, default
#          /tmp/bench/built) exists, then VAE decode rounds with the call's time left
#   CALL 2 (carry .whl-oi .carry): PHASE=2 MODE=cold PEERS=sdcli,optimum bash session33.sh, then this script with
#          PHASE=2 and BUDGET set to what the call has left: more rounds, --append
# Each size is its own invocation (1024 first, then 512; VROUNDS each, default 6), so a call's limit cuts rounds,
# not a whole size. Own WORK/RESULTS/OUT (defaults /tmp/bench-vae, /tmp/results-vae, $OUT/vae).
# TINY=1 PYTHON=/abs/.venv/bin/python ZBUILT=FILE WORK=... RESULTS=... OUT=...: the tiny model, a check here.
WORK=${WORK:-/tmp/bench-vae} RESULTS=${RESULTS:-/tmp/results-vae} OUT=${OUT:-/tmp/out}/vae
. "$(dirname "$0")/lib.sh"
zbuilt=${ZBUILT:-/tmp/bench/built}
arch=${TINY:+tiny}; arch=${arch:-sd15}
$py -c "import sys; from pathlib import Path; from sdcli.bench.peers import ensure_models
print(ensure_models(Path('$work'), 'fp16', lambda s: print(s, file=sys.stderr), '$arch'))" > "$res/made-$arch.txt" 2>&1
log "$(tail -n 1 "$res/made-$arch.txt")"
while [ ! -f "$zbuilt" ] && [ "$(left)" -gt 60 ]; do sleep 5; done  # no rounds while another build runs
if [ -f "$zbuilt" ]; then
  sizes=${SIZES:-1024,512}; [ -n "${TINY:-}" ] && sizes=""
  for s in ${sizes//,/ }; do
    bench $(( $(left) - 15 )) vae-decode bench_vae_decode.py --workdir "$work" --sizes "$s" \
        --rounds "${VROUNDS:-6}" --variants sdcli,genai-cache --append
  done
  [ -n "${TINY:-}" ] && bench $(( $(left) - 15 )) vae-decode bench_vae_decode.py --workdir "$work" --tiny \
      --rounds 2 --variants sdcli,genai-cache --append
else
  log "$zbuilt not there yet: no rounds in this call"
fi
tar -C "$res" -czf "$out/results-$phase.tgz" .  # one file: a call brings back only a few
cp "$res/timeline.txt" "$out"/ 2>/dev/null
ls -R "$out" | head -30

#!/usr/bin/env bash
# The Xeon rows sessions 35 left unmeasured, written for the lease after it, in back-to-back calls of one machine:
#   - Z-Image-Turbo int4 at 512², 4 steps, cold, against genai and optimum-intel: session 35 measured 1.82x genai's
#     wall before the int4 change (the prompt encoded once the 4-bit transformer is compiled); this measures it after
#   - FLUX.2-klein int4 at 512², 4 steps, cold, against genai (optimum-intel cannot run klein)
#   - the SDXL ControlNet run against diffusers' bf16 pipeline after the ControlNet lane change (session 34's
#     cn/ measured it before: sdcli-1cn 27.8 s, 0.78x)
#   - where time is left (PHASE=3+): klein and Z-Image int4 at 1024², 2 steps, cold; Z-Image int8 at 1024², 2 steps,
#     warm (caches kept; ZWFS="int4 int8" builds its folder), the three peers where optimum-intel runs the model
#   PHASE=1  carry .whl .whl-nncf .carry/bin: openvino, genai, nncf into /tmp/site; in one process session of its own
#            (start_build) the random Z-Image and klein built and converted (Z: $ZWFS, int4 by default; klein: int4),
#            each random source deleted once converted, and the ControlNet benchmark's SDXL folder made, one after
#            another (at once they filled the 64 GiB disk in session 36); then klein's rounds, then the ControlNet's
#   PHASE=2  carry .whl-oi .carry/bin: optimum-intel's wheels into /tmp/site-oi; Z-Image int4 rounds, then what
#            phase 1 still owes
#   PHASE=3+ carry .carry/bin: whatever is still owed, then the 1024² rows
# Each row's runs go to its own folder; a row cut off by the call's end goes on with --append in the next call.
# A row with ROUNDS runs per peer in $RESULTS is skipped: session 36 measured the two 512² int4 rows, so the next
# lease starts its first call with `mkdir -p /tmp/results && cp -r bench-results/xeon16/session36/*-cold /tmp/results/`
# (and may pass ZWFS="int4 int8" for the warm row), leaving the ControlNet and the 1024² rows.
# Each phase ends with one tarball in $OUT. TINY=1 PYTHON=/abs/.venv/bin/python OPTIMUM_PY=/abs/.venv-oi/bin/python
# WORK=... RESULTS=... OUT=...: the tiny models at 64²/32², a check of the script here.
. "$(dirname "$0")/lib.sh"
pre=${TINY:+tiny-}
zi=${pre}z-image; kl=${pre}flux2-klein; cnxl=${TINY:+tiny-sdxl}; cnxl=${cnxl:-sdxl}
big=${TINY:+64}; big=${big:-1024}
small=${TINY:+32}; small=${small:-512}
oipy=${OPTIMUM_PY:-$R/bench-results/xeon16/optimum-python}
zwfs=${ZWFS:-int4}  # ZWFS="int4 int8": the int8 folder too, for the stretch row
install_optimum_wheels
build_arch() {  # arch weight_formats: the random folder built, then converted to each format side by side
  $py -c "import json, sys; from pathlib import Path; from sdcli.bench.flow import FLOW_ARCHS, _made
src = Path('$work') / '$1-random'
made = {} if (src / 'model_index.json').is_file() else _made(src, [sys.executable, '-m', 'sdcli.convert.random_model', FLOW_ARCHS['$1'][0]])
print(json.dumps({'folder': str(src), 'build': made}))" > "$res/made-$1-build.txt" 2>&1
  for wf in $2; do
    $py -c "import json, sys; from pathlib import Path; from sdcli.bench.flow import ensure_flow_models
folder, made = ensure_flow_models(Path('$work'), '$1', '$wf', lambda s: print(s, file=sys.stderr))
print(json.dumps({'folder': str(folder), **made}))" > "$res/made-$1-$wf.txt" 2>&1 &
  done
  wait
  rm -rf "$work/$1-random"  # the f32 source (about 40 GB for Z-Image): the machine's disk is 64 GiB
}
build() {  # one model after another (session 36's lease filled the disk building them at once)
  build_arch "$zi" "$zwfs"
  build_arch "$kl" int4
  $py -c "import sys; sys.path.insert(0, '$R/scripts'); from pathlib import Path; import bench_controlnet as b
print(b.prepare(Path('$work/cn'), arch='$cnxl'))" > "$res/made-cn-$cnxl.txt" 2>&1
}
export -f build build_arch; export py work res zi kl cnxl zwfs R
start_build build "$zi ($zwfs), $kl (int4) and the ControlNet's $cnxl"
rounds_in() {  # folder peers: the fewest runs any of the peers has in its bench.json (0 if none): the rounds done
  $py -c "import json, sys, collections; runs = json.load(open(sys.argv[1])).get('runs', [])
n = collections.Counter(r.get('peer', r.get('config')) for r in runs if r.get('rc', 0) == 0)
print(min(n[p] for p in sys.argv[2].split(',')))" "$1/bench.json" "$2" 2>/dev/null || echo 0
}
fbench() {  # seconds arch weight_format size steps mode peers: rounds of a flow model, up to ROUNDS in its folder
  local t=$1 a=$2 wf=$3 s=$4 n=$5 m=$6 p=$7 d=$res/$2-$3-$4-$6; local have; have=$(rounds_in "$d" "$p")
  local more=$(( rounds - have ))
  if [ "$more" -le 0 ]; then log "$a $wf $s² $m: $have rounds already"; return; fi
  if [ ! -f "$work/$a-random-ov-$wf/model_index.json" ]; then log "$a $wf not built"; return; fi
  if [ "$t" -lt 60 ]; then log "no time left for $a $wf $s² $m ($t s)"; return; fi
  log "$a $wf $s² $m, $n steps, $more rounds after $have, $t s at most"
  local extra=""; [ "$have" -gt 0 ] && extra="--append"; [ "$m" = warm ] && extra="$extra --warm-cache $work/warm-cache"
  timeout "$t" $py -m sdcli bench --arch "$a" --weight-format "$wf" --workdir "$work" --size "$s" --steps "$n" \
      --rounds "$more" --modes "$m" --peers "$p" --optimum-python "$oipy" \
      --no-text-encoder-apart --output-dir "$d" $extra 2>&1 >/dev/null | tail -4
  log "$a $wf $s² $m done (rc ${PIPESTATUS[0]}; 124: cut off, the runs before it kept)"
  $py -m sdcli bench --no-run --output-dir "$d" > "$d/bench.md" 2>/dev/null
}
cnbench() {  # seconds: the ControlNet rounds (sdcli-1cn against torch-1cn-bf16), up to ROUNDS
  local d=$res/controlnet-$cnxl c=sdcli-1cn,torch-1cn-bf16; local have; have=$(rounds_in "$d" "$c")
  local more=$(( rounds - have ))
  if [ "$more" -le 0 ]; then log "controlnet: $have rounds already"; return; fi
  local extra=""; [ "$have" -gt 0 ] && extra="--append --no-warm-up"
  bench "$1" controlnet-$cnxl bench_controlnet.py --workdir "$work/cn" --arch $cnxl --rounds "$more" \
      --steps "${XLSTEPS:-4}" --configs "$c" $extra
}
if wait_built; then
  [ "$phase" = 2 ] && fbench $(( $(left) - 15 )) "$zi" int4 "$small" 4 cold sdcli,genai,optimum
  fbench $(( $(left) - 15 )) "$kl" int4 "$small" 4 cold sdcli,genai
  cnbench $(( $(left) - 15 ))
  if [ "$phase" -gt 2 ]; then
    fbench $(( $(left) - 15 )) "$zi" int4 "$small" 4 cold sdcli,genai,optimum
    fbench $(( $(left) - 15 )) "$kl" int4 "$big" 2 cold sdcli,genai
    fbench $(( $(left) - 15 )) "$zi" int4 "$big" 2 cold sdcli,genai,optimum
    fbench $(( $(left) - 15 )) "$zi" int8 "$big" 2 warm sdcli,genai,optimum
  fi
fi
tar -C "$res" -czf "$out/results-$phase.tgz" .  # one file: a call brings back only a few
cp "$res/timeline.txt" "$out"/ 2>/dev/null
ls -R "$out" | head -30

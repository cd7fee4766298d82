#!/usr/bin/env bash
# Issue 21's missing Xeon rows, written for the lease after session 34: Z-Image-Turbo at 1024² (int8, 2 steps: the
# step is 4x 512²'s, and 2 steps fit three rotated cold rounds of three peers in one call) and Z-Image's int4 folder
# at 512² (4 steps, as the int8 512² rows), each against openvino-genai (static reshape, CACHE_DIR) and
# optimum-intel's OVZImagePipeline, cold (empty caches every run), 3 rounds, in back-to-back calls of one machine:
#   PHASE=1  carry .whl .whl-nncf .carry/bin: openvino, genai, nncf into /tmp/site; the random Z-Image built, then
#            converted to int8 and to int4 side by side, in a process session of its own (start_build); the call
#            waits for both (their walls are of two converts sharing 16 cores: made-*.txt)
#   PHASE=2  carry .whl-oi .carry/bin: optimum-intel's wheels (session33.sh's header lists them) into /tmp/site-oi;
#            int8 1024² rounds
#   PHASE=3+ carry .carry/bin: the int8 1024² rounds the last call did not finish (--append), then int4 512²;
#            a later phase goes on with whichever is short of ROUNDS (--append)
# Each phase ends with one tarball in $OUT. TINY=1 PYTHON=/abs/.venv/bin/python OPTIMUM_PY=/abs/.venv-oi/bin/python
# WORK=... RESULTS=... OUT=...: the tiny Z-Image at 64²/32², a check of the script here.
. "$(dirname "$0")/lib.sh"
zi=${TINY:+tiny-z-image}; zi=${zi:-z-image}
big=${TINY:+64}; big=${big:-1024}
small=${TINY:+32}; small=${small:-512}
oipy=${OPTIMUM_PY:-$R/bench-results/xeon16/optimum-python}
install_optimum_wheels
build() {
  $py -c "import json, sys; from pathlib import Path; from sdcli.bench.flow import FLOW_ARCHS, _made
src = Path('$work') / '$zi-random'
made = {} if (src / 'model_index.json').is_file() else _made(src, [sys.executable, '-m', 'sdcli.convert.random_model', FLOW_ARCHS['$zi'][0]])
print(json.dumps({'folder': str(src), 'build': made}))" > "$res/made-$zi-build.txt" 2>&1
  for wf in $wfs; do
    $py -c "import json, sys; from pathlib import Path; from sdcli.bench.flow import ensure_flow_models
folder, made = ensure_flow_models(Path('$work'), '$zi', '$wf', lambda s: print(s, file=sys.stderr))
print(json.dumps({'folder': str(folder), **made}))" > "$res/made-$zi-$wf.txt" 2>&1 &
  done
  wait
}
wfs=${WFS:-int8 int4}  # the folders to convert (WFS=int8: only that one)
export -f build; export py work res zi wfs
start_build build "$zi (int8 and int4)"
rounds_in() {  # folder: the fewest runs any peer has in its bench.json (0 if none): the rounds still owed
  $py -c "import json, sys, collections; runs = json.load(open(sys.argv[1])).get('runs', [])
n = collections.Counter(r['peer'] for r in runs if r.get('rc', 0) == 0)
peers = sys.argv[2].split(',')
print(min(n[p] for p in peers))" "$1/bench.json" "${PEERS:-sdcli,genai,optimum}" 2>/dev/null || echo 0
}
zbench() {  # seconds weight_format size steps: cold rounds of the three peers, up to ROUNDS in its folder
  local t=$1 wf=$2 s=$3 n=$4 d=$res/$zi-$2-$3-cold; local have; have=$(rounds_in "$d")
  local more=$(( rounds - have ))
  if [ "$more" -le 0 ]; then log "$zi $wf $s²: $have rounds already"; return; fi
  if [ "$t" -lt 60 ]; then log "no time left for $zi $wf $s² ($t s)"; return; fi
  log "$zi $wf $s², $n steps, $more cold rounds after $have, $t s at most"
  timeout "$t" $py -m sdcli bench --arch "$zi" --weight-format "$wf" --workdir "$work" --size "$s" --steps "$n" \
      --rounds "$more" --modes cold --peers "${PEERS:-sdcli,genai,optimum}" --optimum-python "$oipy" \
      --no-text-encoder-apart --output-dir "$d" $([ "$have" -gt 0 ] && echo --append) 2>&1 >/dev/null | tail -4
  log "$zi $wf $s² done (rc ${PIPESTATUS[0]}; 124: cut off, the runs before it kept)"
  $py -m sdcli bench --no-run --output-dir "$d" > "$d/bench.md" 2>/dev/null
}
if [ "$phase" = 1 ]; then
  wait_built
elif wait_built; then
  zbench $(( $(left) - 15 )) int8 "$big" 2
  [ "$phase" != 2 ] && zbench $(( $(left) - 15 )) int4 "$small" 4
fi
tar -C "$res" -czf "$out/results-$phase.tgz" .  # one file: a call brings back only a few
cp "$res/timeline.txt" "$out"/ 2>/dev/null
ls -R "$out" | head -30

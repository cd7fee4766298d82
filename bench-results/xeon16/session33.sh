#!/usr/bin/env bash
# Issue 21's optimum-intel row on the device machine (16-core Xeon), written for a lease after session 31: Z-Image-Turbo
# (int8, 512², 4 steps as sessions 24/25) with sdcli, genai and optimum-intel's OVDiffusionPipeline on one folder
# (optimum-intel cannot run klein: docs/performance.md), in back-to-back calls of one machine kept warm. The wheels
# do not fit one call, so they are split (as setup.sh split them before):
#   PHASE=1  carry .whl .whl-nncf .carry/bin: openvino, genai, nncf into /tmp/site; the random Z-Image built and
#            converted (int8) in a process session of its own (start_build: about 400 s on 16 cores)
#   PHASE=2  carry .whl-oi .carry/bin (optimum-intel 2.2.0, optimum 2.3.0, transformers 5.5.4, diffusers 0.39.0,
#            huggingface_hub 1.21.0, tokenizers 0.22.2: .venv-oi's pins) into /tmp/site-oi, put before /tmp/site by
#            optimum-python; waits for the build; warm rounds of the three peers (kept caches: --warm-cache)
#            (MODE=cold there: cold rounds instead, no warm-up)
#   PHASE=3+ carry .carry/bin: more MODE (cold) rounds, --append (the rounds numbered on, the rotation continued)
# Session 33 ran PHASE=1, 2, 3 MODE=warm; its PHASE=4 (cold) was lost with the machine. The next lease's cold row:
#   PHASE=1, PHASE=2 MODE=cold, PHASE=3 MODE=cold (about 1150 s); PEERS (sdcli,genai,optimum) names fewer peers
#   (sdcli,optimum: genai's cold Z-Image row exists, docs/performance.md's z-image-xeon16; about 105 s a round, not 150).
# Beside session32.sh in one lease: give each its own WORK, RESULTS and OUT (lib.sh's build marker, timeline and
#   tarball names are per folder), e.g. WORK=/tmp/bench-cn RESULTS=/tmp/results-cn OUT=$OUT/cn for session32.sh.
# .whl-oi (20 MB): python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp
#   --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl-oi
#   optimum-intel==2.2.0 optimum==2.3.0 transformers==5.5.4 diffusers==0.39.0 huggingface_hub==1.21.0 tokenizers==0.22.2
# Each phase ends with one tarball in $OUT. TINY=1 PYTHON=/abs/.venv/bin/python OPTIMUM_PY=/abs/.venv-oi/bin/python
# WORK=... RESULTS=... OUT=...: the tiny Z-Image at 64², a check of the script here.
. "$(dirname "$0")/lib.sh"
zi=${TINY:+tiny-z-image}; zi=${zi:-z-image}
size=${TINY:+64}; size=${size:-512}
oipy=${OPTIMUM_PY:-$R/bench-results/xeon16/optimum-python}
install_optimum_wheels
build() {
  $py -c "import json, sys; from pathlib import Path; from sdcli.bench.flow import ensure_flow_models
folder, made = ensure_flow_models(Path('$work'), '$zi', 'int8', lambda s: print(s, file=sys.stderr))
print(json.dumps({'folder': str(folder), **made}))" > "$res/made-$zi.txt" 2>&1
  rm -rf "${work:?}/$zi-random"  # the bf16 source: not needed once converted
}
export -f build; export py work res zi
start_build build "$zi (int8)"
zbench() {  # seconds mode rounds args...: the three peers on the int8 folder
  local t=$1 m=$2 n=$3 d=$res/$zi-int8-$size-optimum; shift 3
  if [ "$t" -lt 60 ]; then log "no time left for $zi $m ($t s)"; return; fi
  log "$zi $m, $n rounds, $t s at most"
  timeout "$t" $py -m sdcli bench --arch "$zi" --weight-format int8 --workdir "$work" --size "$size" --steps 4 \
      --rounds "$n" --modes "$m" --peers "${PEERS:-sdcli,genai,optimum}" --optimum-python "$oipy" --no-text-encoder-apart \
      --warm-cache "$work/zi-warm" --output-dir "$d" "$@" 2>&1 >/dev/null | tail -4
  log "$zi $m done (rc ${PIPESTATUS[0]}; 124: cut off, the runs before it kept)"
  $py -m sdcli bench --no-run --output-dir "$d" > "$d/bench.md" 2>/dev/null
}
if [ "$phase" != 1 ] && wait_built; then
  case "$phase" in
    2) zbench $(( $(left) - 15 )) "${MODE:-warm}" "$rounds" ;;
    *) zbench $(( $(left) - 15 )) "${MODE:-cold}" "${ZROUNDS:-$rounds}" --append ;;
  esac
fi
tar -C "$res" -czf "$out/results-$phase.tgz" .  # one file: a call brings back only a few
cp "$res/timeline.txt" "$out"/ 2>/dev/null
ls -R "$out" | head -30

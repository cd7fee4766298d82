#!/usr/bin/env bash
# Issue 21's transformer benchmarks on the device machine (16-core Xeon), session 25: the cells session24.sh left open,
# in three back-to-back calls of one machine kept warm. Both random-weight models are built and converted at once in
# the first call (as session24.sh does), so that the later calls only run benchmarks:
#   PHASE=1  wheels, build + convert both (int8), klein cold at 1024x1024, genai first (the time left: 1 round)
#   PHASE=2  Z-Image warm (512, ZSTEPS steps) again, after the text encoder's page fix (d0a7d86);
#            then Z-Image cold at its folder's 9 steps (the time left: 1 round)
#   PHASE=3  klein warm at 1024x1024 (rounds as the time allows; a cut-off keeps the runs before it)
# A phase whose models are gone (a fresh machine) builds them again first. Each phase ends with bench.md rendered
# from the bench.json it added to, and one tarball in $OUT.
# TINY=1 PYTHON=.venv/bin/python WORK=... RESULTS=... OUT=...: the tiny archs at 64x64 here, a check of the script.
# Carry: .whl (openvino less its GPU/NPU plugins and TF/Paddle/GGUF frontends, genai, tokenizers, telemetry,
# diffusers 0.42.1: the device has none of them) .whl-nncf .carry/s25 (git archive HEAD sdcli) .carry/bin (GNU time).
set -uo pipefail
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
start=$(date +%s)
budget=${BUDGET:-570}
R=$PWD
code=$R/.carry/s25
py=${PYTHON:-python3}
out=${OUT:-/tmp/out}
res=${RESULTS:-/tmp/results}
work=${WORK:-/tmp/bench}
T=${TINY:+tiny-}; size=${TINY:+64}; size=${size:-512}; big=${TINY:+128}; big=${big:-1024}
phase=${PHASE:-1}
rounds=${ROUNDS:-3}
zsteps=${ZSTEPS:-4}
export PYTHONPATH=/tmp/site:$code
mkdir -p "$res" "$work" "$out"
left() { echo $(( budget - ($(date +%s) - start) )); }
log() { echo "[phase $phase, $(( $(date +%s) - start )) s] $*" | tee -a "$res/timeline.txt"; }
cd /tmp
{ lscpu | grep "Model name"; nproc; free -g | head -2; } > "$res/lscpu-$phase.txt" 2>&1
if ! $py -c 'import openvino_genai, nncf, diffusers' 2>/dev/null; then
  log "installing the wheels"
  $py -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
      "$R"/.whl/*.whl "$R"/.whl-nncf/*.whl 2>&1 | tail -3
fi
$py -c 'import openvino, openvino_genai, nncf, torch, transformers, diffusers
print(openvino.__version__, openvino_genai.__version__, nncf.__version__, torch.__version__, transformers.__version__,
      diffusers.__version__)' 2>&1 | tail -1 | tee -a "$res/lscpu-$phase.txt"
make() {  # build + convert one arch (once), its own log
  $py -c "
import json, sys; from pathlib import Path; from sdcli.bench.flow import ensure_flow_models
folder, made = ensure_flow_models(Path('$work'), '$1', 'int8', lambda s: print(s, file=sys.stderr))
print(json.dumps({'folder': str(folder), **made}))" > "$res/made-$1.txt" 2>&1
  rm -rf "${work:?}/$1-random"   # the bf16 source: the disk holds both conversions and the warm caches
}
need=""
for a in ${T}flux2-klein ${T}z-image; do [ -f "$work/$a-random-ov-int8/model_index.json" ] || need="$need $a"; done
if [ -n "$need" ]; then
  log "building and converting:$need (in parallel)"
  for a in $need; do make "$a" & done
  wait
  tail -n 2 "$res"/made-*.txt
  log "models ready"
fi
df -h "$work" | tail -1 | tee -a "$res/sizes-$phase.txt"
bench() {  # arch mode seconds size rounds peers dir-suffix extra-args...
  local arch=$1 m=$2 t=$3 size=$4 rounds=$5 peers=$6 d=$res/$1-int8-$4$7; shift 7
  if [ "$t" -lt 40 ]; then log "no time left for $arch $m ($t s)"; return; fi
  log "bench $arch $m, $t s at most"
  PATH=$R/.carry/bin:$PATH timeout "$t" $py -m sdcli bench --arch "$arch" --weight-format int8 --workdir "$work" \
      --size "$size" --rounds "$rounds" --modes "$m" --peers "$peers" --no-text-encoder-apart "$@" \
      --output-dir "$d" 2>&1 >/dev/null | tail -4
  log "bench $arch $m done (rc ${PIPESTATUS[0]}; 124: cut off, the runs before it kept)"
  $py -m sdcli bench --no-run --output-dir "$d" > "$d/bench.md" 2>/dev/null
}
case "$phase" in
  1) bench ${T}flux2-klein cold $(( $(left) - 15 )) $big 1 genai,sdcli "" ;;
  2) bench ${T}z-image warm $(( ($(left) - 15) * 62 / 100 )) $size "$rounds" sdcli,genai "" --steps "$zsteps"
     bench ${T}z-image cold $(( $(left) - 15 )) $size 1 sdcli,genai -9steps --steps 9 ;;
  3) bench ${T}flux2-klein warm $(( $(left) - 15 )) $big "$rounds" sdcli,genai "" ;;
esac
tar -C "$res" -czf "$out/results-$phase.tgz" .  # one file: a call brings back only a few
cp "$res/timeline.txt" "$out"/ 2>/dev/null
ls -R "$out" | head -30

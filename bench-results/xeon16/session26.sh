#!/usr/bin/env bash
# Issue 23's benchmarks on the device machine (16-core Xeon), session 26, in back-to-back calls of one machine:
#   PHASE=1  wheels; random SD 1.5 and SDXL (fp16) built and converted in parallel; the VAE decode against
#            openvino-genai at 512² and 1024² (scripts/bench_vae_decode.py); SD 1.5 512² -> 1024² hires fix
#            (scripts/bench_hires.py --cases sd15)
#   PHASE=2  SDXL 1024² -> 2048² hires fix, VAE tiled and whole (scripts/bench_hires.py --cases sdxl): the 8 GB target
#   PHASE=3  4x upscale of a 512² picture, RRDBNet and Compact, against spandrel in torch (scripts/bench_upscale.py)
# A phase whose models are gone (a fresh machine) builds them again first. Each phase ends with one tarball in $OUT.
# TINY=1 PYTHON=.venv/bin/python WORK=... RESULTS=... OUT=...: the tiny models, a check of the script here.
# Carry: .whl (openvino, genai, tokenizers, telemetry, diffusers 0.42.1), .whl-sp (spandrel 0.4.2), .carry/bin (GNU
# time). The code is the working tree's (sdcli/, scripts/).
set -uo pipefail
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
start=$(date +%s)
budget=${BUDGET:-570}
R=$PWD
py=${PYTHON:-python3}
out=${OUT:-/tmp/out}
res=${RESULTS:-/tmp/results}
work=${WORK:-/tmp/bench}
phase=${PHASE:-1}
rounds=${ROUNDS:-3}
tiny=${TINY:+--tiny}
export PYTHONPATH=/tmp/site:$R PATH=$R/.carry/bin:$PATH
mkdir -p "$res" "$work" "$out"
left() { echo $(( budget - ($(date +%s) - start) )); }
log() { echo "[phase $phase, $(( $(date +%s) - start )) s] $*" | tee -a "$res/timeline.txt"; }
cd /tmp
{ lscpu | grep "Model name"; nproc; free -g | head -2; } > "$res/lscpu-$phase.txt" 2>&1
if ! $py -c 'import openvino_genai, spandrel, diffusers' 2>/dev/null; then
  log "installing the wheels"
  $py -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
      "$R"/.whl/*.whl "$R"/.whl-sp/*.whl 2>&1 | tail -3
fi
$py -c 'import openvino, openvino_genai, torch, transformers, diffusers, spandrel
print(openvino.__version__, openvino_genai.__version__, torch.__version__, transformers.__version__,
      diffusers.__version__, spandrel.__version__)' 2>&1 | tail -1 | tee -a "$res/lscpu-$phase.txt"
archs=${TINY:+tiny tiny-sdxl}; archs=${archs:-sd15 sdxl}
need=""
for a in $archs; do [ -f "$work/$a-random-ov-fp16/model_index.json" ] || need="$need $a"; done
if [ -n "$need" ]; then
  log "building and converting:$need (in parallel)"
  for a in $need; do
    $py -c "from pathlib import Path; from sdcli.bench.peers import ensure_models
print(ensure_models(Path('$work'), 'fp16', print, '$a'))" > "$res/made-$a.txt" 2>&1 &
  done
  wait
  tail -n 2 "$res"/made-*.txt
  log "models ready"
fi
df -h "$work" | tail -1 | tee -a "$res/sizes-$phase.txt"
bench() {  # seconds name script args...
  local t=$1 name=$2 script=$3; shift 3
  if [ "$t" -lt 30 ]; then log "no time left for $name ($t s)"; return; fi
  log "$name, $t s at most"
  timeout "$t" $py "$R/scripts/$script" --workdir "$work" --output-dir "$res/$name" "$@" 2>&1 | tail -3
  log "$name done (rc ${PIPESTATUS[0]}; 124: cut off, the runs before it kept in bench.json)"
  [ -f "$res/$name/bench.json" ] && $py "$R/scripts/$script" --render "$res/$name/bench.json" > /dev/null 2>&1
}
case "$phase" in
  1) bench $(( ($(left) - 20) * 40 / 100 )) vae-decode bench_vae_decode.py $tiny --rounds "$rounds"
     bench $(( $(left) - 20 )) hires-sd15 bench_hires.py $tiny --cases sd15 --rounds "$rounds" ;;
  2) bench $(( $(left) - 20 )) hires-sdxl bench_hires.py $tiny --cases sdxl --rounds "$rounds" \
         --variants "${SXVARIANTS:-hires-tiled,base,hires}" ${SXNOWARM:+--no-warm-up} ;;
  3) bench $(( $(left) - 20 )) upscale bench_upscale.py ${TINY:+--size 64} --rounds "$rounds" ;;
esac
tar -C "$res" -czf "$out/results-$phase.tgz" .  # one file: a call brings back only a few
cp "$res/timeline.txt" "$out"/ 2>/dev/null
ls -R "$out" | head -30

#!/usr/bin/env bash
# Issue 21's transformer benchmarks on the device machine (16-core Xeon), the cells session23.sh left short, in three
# back-to-back calls of a machine kept warm (session23's machine was given back after its first call). Both random-weight models are
# built and converted at once, in parallel (klein 4B and Z-Image: 9 + 13 GB to build, 20 + 31 GB to convert on 128 GB),
# so that the later calls only run benchmarks:
#   PHASE=1  wheels, build + convert both (int8), klein cold at 1024x1024 (the time left: 1 round)
#   PHASE=2  klein warm (512), Z-Image cold (512)
#   PHASE=3  Z-Image warm (512)
# A phase whose models are gone (a fresh machine) builds them again first. Each phase ends with bench.md rendered
# from the bench.json it added to, copied to $OUT.
# Z-Image runs ZSTEPS steps (default 4, not the folder's 9: 3 rounds at 9 steps of both peers, cold and warm, do not
# fit this session's 30 device minutes; the step time is reported apart, so the 9-step wall is not claimed).
# TINY=1 PYTHON=.venv/bin/python WORK=... RESULTS=... OUT=...: the tiny archs at 64x64 here, a check of the script.
# Carry: .whl (openvino less its GPU/NPU plugins and TF/Paddle/GGUF frontends, genai, tokenizers, telemetry,
# diffusers 0.42.1: the device has none of them) .whl-nncf .carry/s24 (git archive HEAD) .carry/bin (GNU time).
set -uo pipefail
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
start=$(date +%s)
budget=${BUDGET:-570}
R=$PWD
code=$R/.carry/s24
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
bench() {  # arch mode seconds size rounds extra-args...
  local arch=$1 m=$2 t=$3 size=$4 rounds=$5; shift 5
  if [ "$t" -lt 40 ]; then log "no time left for $arch $m ($t s)"; return; fi
  log "bench $arch $m, $t s at most"
  PATH=$R/.carry/bin:$PATH timeout "$t" $py -m sdcli bench --arch "$arch" --weight-format int8 --workdir "$work" \
      --size "$size" --rounds "$rounds" --modes "$m" --peers sdcli,genai --no-text-encoder-apart "$@" \
      --output-dir "$res/$arch-int8-$size" 2>&1 >/dev/null | tail -4
  log "bench $arch $m done (rc ${PIPESTATUS[0]}; 124: cut off, the runs before it kept)"
  $py -m sdcli bench --no-run --output-dir "$res/$arch-int8-$size" > "$res/$arch-int8-$size/bench.md" 2>/dev/null
}
case "$phase" in
  1) bench ${T}flux2-klein cold $(( $(left) - 15 )) $big 1 ;;
  2) bench ${T}flux2-klein warm $(( ($(left) - 15) * 45 / 100 )) $size "$rounds"
     bench ${T}z-image cold $(( $(left) - 15 )) $size "$rounds" --steps "$zsteps" ;;
  3) bench ${T}z-image warm $(( $(left) - 15 )) $size "$rounds" --steps "$zsteps" ;;
esac
tar -C "$res" -czf "$out/results-$phase.tgz" .  # one file: a call brings back only a few
cp "$res/timeline.txt" "$out"/ 2>/dev/null
ls -R "$out" | head -30

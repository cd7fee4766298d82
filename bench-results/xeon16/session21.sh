#!/usr/bin/env bash
# The 2026-12-03 evening runs on the device machine (16-core Xeon), the machine kept warm between
# calls (/tmp/bench, /tmp/site, /tmp/results persist while it is); sdcli from a snapshot of HEAD in
# .carry/s21 (PYTHONPATH), openvino/genai/tokenizers/diffusers from .whl.
#   all       carry .whl .carry   setup (no LCM), then ctx, then bench-features combo (3 rounds)
#   after     carry .whl .carry   setup, ctx on HEAD (decoder preloaded), sdcli bench SD 1.5 4 steps cold+warm vs genai (3 rounds)
#   setup     carry .whl .carry   the random SD 1.5 fp16 folder with TAESD, and the LCM folder (bench-features' Models)
#   vae       carry .carry        VAE decode A/B (scripts/vae_decode_ab.py): each variant in its own process, 3 rounds
#                                 in rotated order, 512x512: sdcli's Runtime.load (blob cold, warm), without the blob,
#                                 without page dropping, plain compile, openvino_genai.AutoencoderKL with and without CACHE_DIR
#   ctx       carry .carry        the decode inside a generate, split (scripts/decode_in_context.py), 4 runs
#   features  carry .carry        bench-features combo,lcm (DeepCache + TAESD 20 steps and LCM 4 steps vs genai), 3 rounds
# Every stage copies /tmp/results to $OUT.
set -uo pipefail
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
R=$PWD
code=$R/.carry/s21
export PYTHONPATH=/tmp/site:$code
out=${OUT:-/tmp/out}
res=/tmp/results
mkdir -p "$res" /tmp/bench
cd /tmp  # python -m puts the working folder first on sys.path: not the checkout
{ lscpu | grep "Model name"; nproc; } | tee "$res/lscpu-$1.txt"
setup() {
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site $R/.whl/*.whl
  python3 -c 'import openvino, openvino_genai, torch; print(openvino.__version__, openvino_genai.__version__, torch.__version__)' | tee -a "$res/lscpu-$1.txt"
  timeout 400 python3 -c 'from pathlib import Path; from sdcli.bench.features import Models; m = Models(Path("/tmp/bench"), "sd15", print); m.with_tiny_vae()' 2>&1 | tail -3
}
case "$1" in
  all) setup all  # (the machine is given back 30 s after a call: one call sets up and measures)
       for r in 1 2 3 4; do
         timeout 100 python3 $code/scripts/decode_in_context.py /tmp/bench/sd15-random-ov-fp16 4 512
       done 2>&1 | grep '^{' | tee "$res/decode-in-context.jsonl"
       timeout 300 python3 -m sdcli bench-features --cases combo --rounds 3 --workdir /tmp/bench --output-dir "$res/features" 2>&1 | tail -12 ;;
  after) setup after  # HEAD with the VAE decoder preloaded: the decode split again, then SD 1.5 4 steps cold and warm vs genai
       for r in 1 2 3 4; do
         timeout 100 python3 $code/scripts/decode_in_context.py /tmp/bench/sd15-random-ov-fp16 4 512
       done 2>&1 | grep '^{' | tee "$res/decode-in-context-after.jsonl"
       for mode in cold warm; do
         PATH=$R/.carry/bin:$PATH timeout 200 python3 -m sdcli bench --arch sd15 --workdir /tmp/bench --steps 4 --rounds 3 \
             --modes $mode --peers sdcli,genai --output-dir "$res/sd15-4" 2>&1 | grep -v "^|" | tail -3
       done ;;
  setup) python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site $R/.whl/*.whl
         python3 -c 'import openvino, openvino_genai, torch; print(openvino.__version__, openvino_genai.__version__, torch.__version__)' | tee -a "$res/lscpu-$1.txt"
         timeout 540 python3 -c 'from pathlib import Path; from sdcli.bench.features import Models; m = Models(Path("/tmp/bench"), "sd15", print); m.with_tiny_vae(); m.lcm()' 2>&1 | tail -5 ;;
  vae) m=/tmp/bench/sd15-random-ov-fp16
       variants=(sdcli-noblob plain genai genai-cache sdcli-nodrop sdcli)
       rm -rf /tmp/vcache /tmp/gcache
       for r in 1 2 3; do
         n=${#variants[@]}
         for i in $(seq 0 $((n - 1))); do
           v=${variants[$(( (i + r) % n ))]}
           c=/tmp/vcache; [ "$v" = genai-cache ] && c=/tmp/gcache
           timeout 120 python3 $code/scripts/vae_decode_ab.py $v $m $c 512
         done
       done 2>&1 | grep '^{' | tee "$res/vae-ab.jsonl" ;;
  ctx) for r in 1 2 3 4; do  # the first run fills the compiled-model cache; the VAE decode split inside generate
         timeout 100 python3 $code/scripts/decode_in_context.py /tmp/bench/sd15-random-ov-fp16 4 512
       done 2>&1 | grep '^{' | tee "$res/decode-in-context.jsonl" ;;
  features) timeout 580 python3 -m sdcli bench-features --cases "${2:-combo,lcm}" --rounds 3 \
              --workdir /tmp/bench --output-dir "$res/features" 2>&1 | tail -30 ;;
esac
cp -r "$res"/. "$out"/ 2>/dev/null
ls -R "$out" | head -30

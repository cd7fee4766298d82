#!/usr/bin/env bash
# The 2026-12-03 runs on the device machine (16-core Xeon), issue 26 (first run), each call on a
# fresh machine: sdcli runs from a snapshot in .carry/<code> (PYTHONPATH), GNU time from
# .carry/bin/time (Debian's time 1.9, libc only), openvino/genai/tokenizers/diffusers from .whl.
#   diag    carry .whl .carry   builds the random SD 1.5 (fp16); UNet compile variants
#                               (scripts/first_run_variants.py); whole-process first and warm runs of
#                               sdcli configurations against genai (scripts/first_run_probe.py)
#   final   carry .whl .carry   sdcli bench (cold and warm, 20 steps) against genai, each run also
#                               timed by GNU time; then the first run (4 steps) of the code before
#                               (.carry/old) and after (.carry/new) against genai
#   rounds5 carry .whl .carry   the same bench, 5 rounds (a lease of its own)
# Every stage copies /tmp/results to $OUT.
set -uo pipefail
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
code=${CODE:-exp}
R=$PWD
export PYTHONPATH=/tmp/site:$R/.carry/$code
out=${OUT:-/tmp/out}
res=/tmp/results
mkdir -p "$res" /tmp/bench
T=$R/.carry/bin/time
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
cd /tmp  # python -m puts the working folder first on sys.path: not the checkout, whose sdcli/ may differ
{ lscpu | grep "Model name"; nproc; python3 -c 'import openvino, openvino_genai, torch; print(openvino.__version__, openvino_genai.__version__, torch.__version__)'; } | tee "$res/lscpu-$1.txt"
build() {
  $T -f "random_model %e s %M KiB" python3 -m sdcli.convert.random_model /tmp/bench/sd15-random --sd15 > /dev/null
  $T -f "convert %e s %M KiB" python3 -m sdcli convert /tmp/bench/sd15-random --output /tmp/bench/sd15-random-ov-fp16 \
      --weight-format fp16 --quiet
}
case "$1" in
  diag) build 2>&1 | tee "$res/build.txt"
        m=/tmp/bench/sd15-random-ov-fp16
        for r in 1 2; do for v in sdcli-noblob sdcli-nodrop plain plain-cachedir; do
          rm -rf /tmp/vcache; timeout 60 python3 $R/.carry/$code/scripts/first_run_variants.py $v $m /tmp/vcache 512
        done; done 2>&1 | tee "$res/unet-variants.jsonl"
        timeout 420 python3 $R/.carry/$code/scripts/first_run_probe.py $m "$res/probe.jsonl" --steps 4 --rounds 3 \
            --time $T --config base --config par=SDCLI_X_THREADS=3,SDCLI_X_PRELOAD_VAE=1 \
            --config nodrop=SDCLI_X_NODROP=1 --config parnodrop=SDCLI_X_THREADS=3,SDCLI_X_PRELOAD_VAE=1,SDCLI_X_NODROP=1 \
            --config genai 2>&1 | tail -14 ;;
  final) build > "$res/build.txt" 2>&1
         m=/tmp/bench/sd15-random-ov-fp16
         for mode in cold warm; do  # (each invocation writes bench.json, keeping the other mode's runs)
           PATH=$R/.carry/bin:$PATH timeout 250 python3 -m sdcli bench --arch sd15 --workdir /tmp/bench --steps 20 \
               --rounds 3 --modes $mode --peers sdcli,genai --output-dir "$res/sd15" 2>&1 | grep -v "^|" | tail -8
         done
         timeout 150 python3 $R/.carry/$code/scripts/first_run_probe.py $m "$res/probe-old-new.jsonl" --steps 4 --rounds 3 \
             --modes cold --time $T --config old=PYTHONPATH=/tmp/site:$R/.carry/old --config new --config genai 2>&1 | tail -5 ;;
  rounds5) build > "$out/build5.txt" 2>&1  # (writes to $OUT as it goes: a call cut off at its limit keeps what it made)
         for mode in cold warm; do
           PATH=$R/.carry/bin:$PATH timeout $([ $mode = cold ] && echo 250 || echo 280) python3 -m sdcli bench --arch sd15 \
               --workdir /tmp/bench --steps 20 --rounds 5 --modes $mode --peers sdcli,genai --output-dir "$out/sd15-5" 2>&1 \
               | grep -v "^|" | tail -3
         done ;;
esac
cp -r "$res"/. "$out"/ 2>/dev/null
ls "$out"

# The preamble of the session scripts from session 27 on (sourced; $R: the working tree on the device machine):
# settings from the environment, left() and log(), lscpu, the carried wheels installed into /tmp/site (.whl, and
# .whl-sp, .whl-nncf where carried), the versions, and bench(): one scripts/bench_*.py run within a time, its
# bench.md rendered again after it.
# The wheel folders (gitignored; made here, carried with `run`'s carry; 64 MiB a call with the tree):
#   .whl       pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp --platform
#              manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl
#              openvino==2026.4.1 openvino-genai==2026.4.1.0 openvino-tokenizers==2026.4.1.0
#              openvino-telemetry==2025.2.0 diffusers==0.42.1; then slim openvino's wheel (71 -> 47 MB) with
#              zip -d .whl/openvino-*.whl openvino/libs/libopenvino_intel_gpu_plugin.so
#              openvino/libs/libopenvino_intel_npu_plugin.so openvino/libs/cache.json
#              'openvino/libs/libopenvino_tensorflow_frontend.so*' 'openvino/libs/libopenvino_paddle_frontend.so*'
#              'openvino/libs/libopenvino_gguf_frontend.so*' 'openvino/libs/libopenvino_tensorflow_lite_frontend.so*'
#              'openvino/frontend/tensorflow/py_tensorflow_frontend*' 'openvino/frontend/paddle/py_paddle_frontend*'
#              (the CPU plugin and the IR, ONNX and PyTorch frontends stay)
#   .whl-nncf  the same download of nncf==3.4.0 pydot==4.0.1;  .whl-sp: spandrel==0.4.2
#   .carry/bin GNU time (cp /usr/bin/time: it needs only libc)
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
need=openvino_genai,diffusers  # and what the wheel folders carried this call bring
[ -d "$R/.whl-sp" ] && need=$need,spandrel
[ -d "$R/.whl-nncf" ] && need=$need,nncf
if ! $py -c "import $need" 2>/dev/null; then
  log "installing the wheels"
  $py -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
      $(ls "$R"/.whl/*.whl "$R"/.whl-sp/*.whl "$R"/.whl-nncf/*.whl 2>/dev/null) 2>&1 | tail -3
fi
$py -c 'import openvino, openvino_genai, torch, transformers, diffusers
import importlib.util as u
print(openvino.__version__, openvino_genai.__version__, torch.__version__, transformers.__version__,
      diffusers.__version__, *(m + " " + __import__(m).__version__ for m in ("spandrel", "nncf") if u.find_spec(m)))' 2>&1 | tail -1 \
  | tee -a "$res/lscpu-$phase.txt"
bench() {  # seconds name script args...
  local t=$1 name=$2 script=$3; shift 3
  if [ "$t" -lt 30 ]; then log "no time left for $name ($t s)"; return; fi
  log "$name, $t s at most"
  timeout "$t" $py "$R/scripts/$script" --output-dir "$res/$name" "$@" 2>&1 | tail -3
  log "$name done (rc ${PIPESTATUS[0]}; 124: cut off, the runs before it kept in bench.json)"
  [ -f "$res/$name/bench.json" ] && $py "$R/scripts/$script" --render "$res/$name/bench.json" > /dev/null 2>&1
}
start_build() {  # function what: run the exported function once per machine in a process session of its own
  # (setsid: a build the call's end cuts goes on into the next call of a machine kept warm); "$work/built" after it
  if [ ! -f "$work/built" ] && [ ! -f "$work/building" ]; then
    log "building and converting $2"
    touch "$work/building"
    setsid bash -c "$1; touch '$work/built'" > "$res/build.log" 2>&1 < /dev/null &
  fi
}
wait_built() {  # until start_build's build is done or the call's time is nearly out; 0 once it is done
  while [ ! -f "$work/built" ] && [ "$(left)" -gt 20 ]; do sleep 5; done
  [ -f "$work/built" ] && { tail -qn 1 "$res"/made-*.txt; log "models ready"; }
}
install_optimum_wheels() {  # optimum-intel's wheels (.whl-oi, where carried) into /tmp/site-oi, once per machine
  if [ -d "$R/.whl-oi" ] && [ ! -f /tmp/site-oi/.installed ]; then
    log "installing optimum-intel's wheels into /tmp/site-oi"
    $py -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site-oi \
        "$R"/.whl-oi/*.whl 2>&1 | tail -3 && touch /tmp/site-oi/.installed
  fi
}

#!/usr/bin/env bash
# Issue 22 on the device machine (16-core Xeon), written for the lease after session 31: the SDXL ControlNet ratio
# against diffusers' bf16 pipeline over 3 rounds (session 29's one round has no torch run), in back-to-back calls of
# one machine kept warm:
#   PHASE=1  wheels; the SDXL folder and ControlNets of bench_controlnet built in a process session of their own
#            (setsid: the build, about 400 s on 16 cores, goes on into the next call if this one ends first); then
#            rounds as far as the call allows
#   PHASE=2+ CNROUNDS (1) more rounds each (--append --no-warm-up once PHASE=1 warmed the cache up), until every
#            config has 3 runs
# WAIT_ALSO=FILE: no rounds before FILE exists (another script's build marker, e.g. session33.sh's /tmp/bench/built).
# CONFIGS: sdcli-0cn,sdcli-1cn,torch-1cn-bf16 (the ratio's pair and the plain run; session 29 has 2cn and cold).
# Each phase ends with one tarball in $OUT. TINY=1 PYTHON=/abs/.venv/bin/python WORK=... RESULTS=... OUT=...: the
# tiny models, a check of the script here. Carry: .whl, .carry/bin. The code is the working tree's.
. "$(dirname "$0")/lib.sh"
cnxl=${TINY:+tiny-sdxl}; cnxl=${cnxl:-sdxl}
configs=${CONFIGS:-sdcli-0cn,sdcli-1cn,torch-1cn-bf16}
build() {
  $py -c "import sys; sys.path.insert(0, '$R/scripts'); from pathlib import Path; import bench_controlnet as b
print(b.prepare(Path('$work/cn'), arch='$cnxl'))" > "$res/made-cn-$cnxl.txt" 2>&1
}
export -f build; export py work res cnxl R
start_build build "the ControlNet benchmark's $cnxl"
if wait_built; then
  while [ -n "${WAIT_ALSO:-}" ] && [ ! -f "$WAIT_ALSO" ] && [ "$(left)" -gt 60 ]; do sleep 5; done  # another build
fi
if [ -n "${WAIT_ALSO:-}" ] && [ ! -f "$WAIT_ALSO" ]; then
  log "$WAIT_ALSO not there yet: no rounds in this call"
elif [ -f "$work/built" ]; then
  if [ -f "$res/controlnet-$cnxl/bench.json" ]; then more="--append --no-warm-up"; n=${CNROUNDS:-1}; else more=""; n=$rounds; fi
  bench $(( $(left) - 15 )) controlnet-$cnxl bench_controlnet.py --workdir "$work/cn" --arch $cnxl --rounds "$n" \
      --steps "${XLSTEPS:-4}" --configs "$configs" $more
else
  log "the build goes on"
fi
tar -C "$res" -czf "$out/results-$phase.tgz" .  # one file: a call brings back only a few
cp "$res/timeline.txt" "$out"/ 2>/dev/null
ls -R "$out" | head -30

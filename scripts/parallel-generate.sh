#!/usr/bin/env bash
# One `sdcli generate` process per prompt, JOBS processes at a time (xargs -P).
#
#   scripts/parallel-generate.sh PROMPTS_FILE OUTPUT_DIR [extra sdcli generate options...]
#   JOBS=4 BASE_SEED=1000 scripts/parallel-generate.sh prompts.txt out/ --model models/sd15
#
# Blank lines and # comments are skipped.  The prompt on data line N becomes OUTPUT_DIR/NNNN.png
# with seed BASE_SEED+N (the same names and seeds as scripts/batch-prompts.sh); images that
# exist are skipped, so an interrupted run can be restarted (an image is written atomically:
# a killed process leaves none behind).
#
# Trade-offs, compared with `sdcli batch` (scripts/batch-file.sh):
# - Every process loads the model itself: for SD 1.5 about 2 GB of memory and a few seconds
#   each (the first run of a size also compiles it; later ones load the cached blob), where
#   `sdcli batch` loads it once.  JOBS processes need JOBS times the memory.
# - One sdcli process already uses every core of the machine for one image, so JOBS > 1 on one
#   machine mostly makes the processes compete for the cores; it can help a little by hiding
#   each process's start-up behind another's work, on machines with many cores.
# - There is no manifest: "done" means "the file exists".
# + Processes are independent: one crash loses one image; nothing to install but sdcli; and it
#   spreads over machines with GNU parallel, e.g. (the model at the same path on every host):
#     grep -v '^#' prompts.txt | parallel -j1 -S host1,host2 \
#         sdcli generate --model /models/sd15 --prompt {} --seed '$((1000+{#}))' --output out/{#}.png
#   (each host then writes its own out/; or use `sdcli batch --ray`, which collects the images).
set -euo pipefail

if [ $# -lt 2 ]; then
    echo "usage: $0 PROMPTS_FILE OUTPUT_DIR [sdcli generate options...]" >&2
    exit 2
fi
prompts=$1
outdir=$2
shift 2
[ -r "$prompts" ] || { echo "$0: cannot read $prompts" >&2; exit 2; }
mkdir -p "$outdir"
jobs=${JOBS:-2}
export SDCLI_PG_OUTDIR=$outdir SDCLI_PG_SEED=${BASE_SEED:-1000}

# One image: called as `one [generate options...] N PROMPT` (xargs appends N and PROMPT).
one() {
    local n="${@: -2:1}" prompt="${@: -1}"
    set -- "${@:1:$#-2}"
    local out
    out=$(printf '%s/%04d.png' "$SDCLI_PG_OUTDIR" "$n")
    if [ -e "$out" ]; then
        echo "skip $out (exists)" >&2
        return 0
    fi
    if sdcli generate --prompt "$prompt" --seed $((SDCLI_PG_SEED + n)) --output "$out" --quiet "$@"; then
        echo "$out"
    else
        echo "failed: prompt $n: $prompt" >&2
        return 1
    fi
}
export -f one

# "N\0PROMPT\0" for each data line, then JOBS at a time, two arguments per call.
status=0
n=0
while IFS= read -r prompt || [ -n "$prompt" ]; do
    prompt=${prompt%$'\r'}
    case "$prompt" in ''|'#'*) continue ;; esac
    n=$((n + 1))
    printf '%s\0%s\0' "$n" "$prompt"
done < "$prompts" | xargs -0 -n 2 -P "$jobs" bash -c 'one "$@"' one "$@" || status=$?
# xargs: 123 when a call failed, other codes when xargs itself could not run
[ "$status" -eq 0 ] || { echo "$0: some prompts failed (exit $status); run again to retry them" >&2; exit 1; }

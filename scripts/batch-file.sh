#!/usr/bin/env bash
# Batch a prompts file through `sdcli batch`: the model is loaded and compiled once, then every
# prompt of the file is made with it, one after the other.
#
#   scripts/batch-file.sh PROMPTS_FILE OUTPUT_DIR [extra sdcli batch options...]
#
#   scripts/batch-file.sh prompts.txt out/ --model models/sd15 --steps 20
#   SEED=1000 scripts/batch-file.sh rows.jsonl out/        # per-row settings in JSONL or CSV
#   RAY=auto scripts/batch-file.sh prompts.txt out/        # spread over a Ray cluster (pip install "sdcli[ray]")
#
# PROMPTS_FILE: .txt (one prompt a line, blank lines and # comments skipped), .jsonl or .csv.
# Images go to OUTPUT_DIR/NNNNN-slug-SEED.png, and OUTPUT_DIR/manifest.jsonl gets one JSON line
# per finished image.  Run the same command again after a crash, Ctrl-C or kill -9: what is in
# the manifest is skipped and only the rest is made.
#
# Environment: SEED (base seed; row N uses SEED+N; default: random, kept in OUTPUT_DIR so a
# re-run finds the same names), MODEL (the model folder; default: $SDCLI_MODEL or the only one
# under models/), RAY (a Ray address: auto, local, HOST:6379).
set -euo pipefail

if [ $# -lt 2 ]; then
    echo "usage: $0 PROMPTS_FILE OUTPUT_DIR [sdcli batch options...]" >&2
    exit 2
fi
prompts=$1
outdir=$2
shift 2
[ -r "$prompts" ] || { echo "$0: cannot read $prompts" >&2; exit 2; }

args=(batch "$prompts" --output-dir "$outdir")
[ -n "${SEED:-}" ] && args+=(--seed "$SEED")
[ -n "${MODEL:-}" ] && args+=(--model "$MODEL")
[ -n "${RAY:-}" ] && args+=(--ray "$RAY")

# Exit codes of sdcli batch: 0 all rows done (or skipped); 1 some rows failed (each is reported
# on stderr with its line number: fix them and run again); 2 a bad file or option; 130 Ctrl-C.
status=0
sdcli "${args[@]}" "$@" || status=$?
case $status in
    0) ;;
    1) echo "$0: some rows failed; fix them in $prompts and run the same command again" >&2 ;;
    130) echo "$0: interrupted; run the same command again to finish" >&2 ;;
esac
if [ -f "$outdir/manifest.jsonl" ]; then
    echo "$0: $(wc -l < "$outdir/manifest.jsonl") image(s) in $outdir (list: $outdir/manifest.jsonl)" >&2
fi
exit $status

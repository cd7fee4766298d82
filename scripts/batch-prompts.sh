#!/usr/bin/env bash
# Generate one image per line of a prompts file with `sdcli generate`.
#   scripts/batch-prompts.sh prompts.txt out/ [extra sdcli generate options...]
# Blank lines and lines starting with # are skipped.  Image N is out/NNNN.png with seed
# BASE_SEED+N (BASE_SEED defaults to 1000), so a re-run reproduces every image.
# Images that already exist are skipped, so an interrupted run can simply be restarted.
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

base_seed=${BASE_SEED:-1000}
n=0
failed=0
while IFS= read -r prompt || [ -n "$prompt" ]; do
    case "$prompt" in ''|'#'*) continue ;; esac
    n=$((n + 1))
    out=$(printf '%s/%04d.png' "$outdir" "$n")
    if [ -e "$out" ]; then
        echo "skip $out (exists)" >&2
        continue
    fi
    if ! sdcli generate --prompt "$prompt" --seed $((base_seed + n)) --output "$out" --quiet "$@"; then
        echo "failed: line $n: $prompt" >&2
        failed=$((failed + 1))
    else
        echo "$out"
    fi
done < "$prompts"
[ "$failed" -eq 0 ] || { echo "$failed prompt(s) failed" >&2; exit 1; }

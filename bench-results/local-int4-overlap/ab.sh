#!/usr/bin/env bash
# Cold `sdcli generate --json` runs on an int4 folder, alternating the code before the change (a git worktree of
# that commit: OLD) and after it (this checkout), each on an empty cache, run from /tmp so that `python -m sdcli`
# imports the tree PYTHONPATH names and not the working directory's.
# Usage: OLD=/tmp/wt-old bash ab.sh MODEL_FOLDER OUT_DIR STEPS [ROUNDS]
set -u
model=$1 out=$2 steps=$3 rounds=${4:-2}
py=${PYTHON:-$(cd "$(dirname "$0")/../.." && pwd)/.venv/bin/python}
mkdir -p "$out"; out=$(cd "$out" && pwd); cd /tmp
for r in $(seq 1 "$rounds"); do for v in old new; do
  c=/tmp/ab-cache; rm -rf $c
  if [ $v = old ]; then pp=$OLD; else pp=; fi
  PYTHONPATH=$pp SDCLI_CACHE_DIR=$c /usr/bin/time -f "%e %M" -o "$out/time-$v-$r.txt" "$py" -m sdcli generate --model "$model" \
      --prompt "a red fox in the snow" --steps "$steps" --seed 42 --width 512 --height 512 --json --quiet \
      --output /tmp/ab-$v.png > "$out/gen-$v-$r.json" 2> "$out/err-$v-$r.txt"
  echo "$v $r $(cat "$out/time-$v-$r.txt") (wall s, peak RSS KiB)"
done; done
rm -rf /tmp/ab-cache

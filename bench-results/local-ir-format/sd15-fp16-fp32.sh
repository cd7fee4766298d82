#!/bin/bash
# fp16 vs fp32 SD folder, no ControlNet, SD 1.5 512², 8 steps: two warm-ups each then 3 rotated rounds
cd /work/main
export SDCLI_CACHE_DIR=/tmp/cnexp/cache2
one() { /usr/bin/time -f "%e %M" -o /tmp/cnexp/time.txt .venv/bin/python -m sdcli generate --model /tmp/cnexp/$1 --prompt "a photo of a cat" --steps 8 --scheduler euler --guidance-scale 7.5 --seed 42 --width 512 --height 512 --output /tmp/cnexp/$1.png --json --quiet > /tmp/cnexp/last.json 2>&1; echo "{\"cfg\": \"$1\", \"round\": $2, \"time\": \"$(cat /tmp/cnexp/time.txt)\", \"json\": $(tail -n1 /tmp/cnexp/last.json)}" >> /tmp/cnexp/runs2.jsonl; }
one sd15-ov -1; one sd15-ov-fp32 -1; one sd15-ov -1; one sd15-ov-fp32 -1
for r in 0 1 2; do
  if [ $((r % 2)) = 0 ]; then one sd15-ov $r; one sd15-ov-fp32 $r; else one sd15-ov-fp32 $r; one sd15-ov $r; fi
done
echo done >> /tmp/cnexp/runs2.jsonl

#!/bin/bash
# fp32 vs fp16 ControlNet IR, SD 1.5 512², 8 steps, one warm-up each then 3 rotated rounds
cd /work/main
export SDCLI_CACHE_DIR=/tmp/cnexp/cache
one() { /usr/bin/time -f "%e %M" -o /tmp/cnexp/time.txt .venv/bin/python -m sdcli generate --model /tmp/cnexp/sd15-ov --prompt "a photo of a cat" --steps 8 --scheduler euler --guidance-scale 7.5 --seed 42 --width 512 --height 512 --controlnet-dir /tmp/cnexp/$1 --controlnet cn-a --control-image /tmp/cnexp/ci.png --output /tmp/cnexp/$1.png --json --quiet > /tmp/cnexp/last.json 2>&1; echo "{\"cfg\": \"$1\", \"round\": $2, \"time\": \"$(cat /tmp/cnexp/time.txt)\", \"json\": $(tail -n1 /tmp/cnexp/last.json)}" >> /tmp/cnexp/runs.jsonl; }
one ControlNet -1; one ControlNet-fp16 -1
for r in 0 1 2; do
  if [ $((r % 2)) = 0 ]; then one ControlNet $r; one ControlNet-fp16 $r; else one ControlNet-fp16 $r; one ControlNet $r; fi
done
echo done >> /tmp/cnexp/runs.jsonl

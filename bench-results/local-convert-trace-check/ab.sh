set -u
cd /tmp/ab
P=/work/main/.venv/bin/python
[ -d sd15 ] || $P -m sdcli.convert.random_model --sd15 /tmp/ab/sd15 > build.log 2>&1
for i in 1 2; do
  for v in old new; do
    src=/tmp/old; [ $v = new ] && src=/work/main
    rm -rf /tmp/ab/sd15-$v
    PYTHONPATH=$src /usr/bin/time -f "sd15 fp16 $v run $i: %e s %M KB" $P -m sdcli convert /tmp/ab/sd15 --weight-format fp16 --output /tmp/ab/sd15-$v --quiet 2>&1 | tail -1
    grep converted_in_s /tmp/ab/sd15-$v/sdcli.json
  done
done
for f in $(cd /tmp/ab/sd15-old && find . -type f -name "*.xml" -o -name "*.bin" | sort); do cmp -s /tmp/ab/sd15-old/$f /tmp/ab/sd15-new/$f && echo "same $f" || echo "DIFF $f"; done

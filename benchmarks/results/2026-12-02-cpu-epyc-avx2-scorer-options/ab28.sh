#!/bin/bash
cd /tmp/s28
export HF_HUB_OFFLINE=1 OMP_WAIT_POLICY=PASSIVE
for round in 2 3 4; do
for side in $( [ $((round % 2)) = 0 ] && echo "after before" || echo "before after"); do
  root=/tmp/wt/$side; [ $side = after ] && root=/tmp/wt/main
  echo "$(date -u +%H:%M:%S) round $round $side ($(git -C $root rev-parse --short HEAD)), load $(cut -d' ' -f1 /proc/loadavg)"
  PYTHONPATH=$root /tmp/dev/bin/python ab28.py ${side}_fp32_r$round $root float32 ${ITEMS:-30} 2>&1 | grep -v "^I1202\|^W1202"
done
done
echo "$(date -u +%H:%M:%S) done"

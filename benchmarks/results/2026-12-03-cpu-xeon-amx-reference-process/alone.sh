#!/bin/bash
# Are the reference's slow steps its own, or do they come from alternating with ours? The bloom bf16 run of
# series.sh again, its reference input kept, then the reference process alone on that input (the same warm-up and
# timed batches, nothing alternating with it), then our step alone (no --torch). Same environment as series.sh.
# Ran on 6316f5c, where the sides alternated step by step; --steps_per_turn 1 (added later) does that.
OUT=${OUT:-benchmarks/results/2026-12-03-cpu-xeon-amx-reference-process}
PYTHON=${PYTHON:-/tmp/dev/bin/python}
export HF_HUB_OFFLINE=1 OMP_WAIT_POLICY=PASSIVE PYTHONPATH=.
export GLIBC_TUNABLES=glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736
WORK=/tmp/bench/alone
bench() {  # out-name extra-args...
  local name=$1; shift
  echo "$(date -u +%H:%M:%S) $name, load $(cut -d' ' -f1 /proc/loadavg)"
  $PYTHON -m xalign_jax.bench --config configs/bench_bloom.py --config.model.dtype=bfloat16 --steps 8 --warmup 3 \
    --noload_memory --steps_per_turn 1 --workdir $WORK --out $OUT/$name.json "$@" 2>&1 | grep -Ev "^[IW][0-9]{4} " \
    | grep -E "^(jax|torch|speed)"
}
for round in 1 2; do
  rm -rf $WORK
  bench alternating_$round --torch --torch_precision bf16_autocast
  echo "$(date -u +%H:%M:%S) the reference process alone on the same input (seconds of its 8 timed steps)"
  seq 0 7 | $PYTHON -m benchmarks.torch_reference $WORK/reference_bf16_input.npz 2>/dev/null \
    | $PYTHON -c "import json, sys; r = [json.loads(l) for l in sys.stdin]; s = sorted(x['seconds'] for x in r[1:-1]);
print('reference alone:', [round(x['seconds'], 3) for x in r[1:-1]], 'median', round((s[3] + s[4]) / 2, 3),
      'peak RSS', round(r[-1]['peak_rss_bytes'] / 2**30, 2), 'GiB')" | tee $OUT/reference_alone_$round.log
  bench ours_alone_$round
done
rm -rf $WORK
echo "$(date -u +%H:%M:%S) done"

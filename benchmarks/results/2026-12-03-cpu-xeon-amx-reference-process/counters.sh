#!/bin/bash
# Where the reference's slow steps come from: our bf16 step against its bf16 autocast step, each in its own process,
# alternating, with each step's minor page faults and involuntary context switches (bench.measured_step); then the
# reference process alone on the same input (the same warm-up and timed batches, nothing alternating with it).
# bloom and gemma3, configs/bench_bloom.py as committed. Same environment as series.sh.
# Ran on f5191bb, where the sides alternated step by step; --steps_per_turn 1 (added later) does that.
OUT=${OUT:-benchmarks/results/2026-12-03-cpu-xeon-amx-reference-process}
PYTHON=${PYTHON:-/tmp/dev/bin/python}
export HF_HUB_OFFLINE=1 OMP_WAIT_POLICY=PASSIVE PYTHONPATH=.
export GLIBC_TUNABLES=glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736
WORK=/tmp/bench/counters
for model in bloom gemma3; do
  cfg=configs/bench_bloom.py steps=8
  [ $model = gemma3 ] && cfg=configs/bench_bloom.py:gemma3 && steps=6
  rm -rf $WORK
  echo "$(date -u +%H:%M:%S) $model, alternating, load $(cut -d' ' -f1 /proc/loadavg)"
  $PYTHON -m xalign_jax.bench --config $cfg --config.model.dtype=bfloat16 --steps $steps --warmup 3 \
    --noload_memory --steps_per_turn 1 \
    --torch --torch_precision bf16_autocast --workdir $WORK --out $OUT/counters_${model}_alternating.json 2>&1 \
    | grep -Ev "^[IW][0-9]{4} " | grep -E "^(jax|torch|speed)"
  echo "$(date -u +%H:%M:%S) $model, the reference process alone on the same input"
  seq 0 $((steps - 1)) | $PYTHON -m benchmarks.torch_reference $WORK/reference_bf16_input.npz 2>/dev/null \
    > $OUT/counters_${model}_reference_alone.jsonl
  $PYTHON - $OUT/counters_${model}_alternating.json $OUT/counters_${model}_reference_alone.jsonl <<'PY'
import json, statistics, sys
alternating = json.load(open(sys.argv[1]))
alone = [json.loads(line) for line in open(sys.argv[2])][1:-1]
sides = {"ours, alternating": alternating["jax"], "reference, alternating": alternating["torch"]["bf16_autocast"],
         "reference alone": {"step_s": {"all": [s["seconds"] for s in alone]},
                             "minor_faults": [s["minor_faults"] for s in alone],
                             "involuntary_switches": [s["involuntary_switches"] for s in alone]}}
for name, side in sides.items():
    seconds = side["step_s"]["all"]
    print(f"{name:24s} median {statistics.median(seconds):.3f} s  steps", " ".join(f"{s:.2f}" for s in seconds))
    print(f"{'':24s} minor faults", side["minor_faults"], " switches", side["involuntary_switches"])
PY
done
rm -rf $WORK
echo "$(date -u +%H:%M:%S) done"

#!/bin/bash
# The headline series with the harness as committed: the reference in a process of its own, the sides taking turns
# of 4 steps (bench --steps_per_turn's default), 8 timed steps after 3 warm-up ones, one reference precision per
# run; our bf16 step against both of the reference's, our fp32 step against its fp32 step; configs/bench_bloom.py
# as committed (blocks unrolled). Same environment as series.sh.
OUT=${OUT:-benchmarks/results/2026-12-03-cpu-xeon-amx-reference-process}
PYTHON=${PYTHON:-/tmp/dev/bin/python}
export HF_HUB_OFFLINE=1 OMP_WAIT_POLICY=PASSIVE PYTHONPATH=.
export GLIBC_TUNABLES=glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736
run() {  # model dtype precision
  local model=$1 dtype=$2 precision=$3 cfg=configs/bench_bloom.py
  [ $model = gemma3 ] && cfg=configs/bench_bloom.py:gemma3
  echo "$(date -u +%H:%M:%S) $model ours $dtype, reference $precision, load $(cut -d' ' -f1 /proc/loadavg)"
  $PYTHON -m xalign_jax.bench --config $cfg --config.model.dtype=$dtype --steps 8 --warmup 3 --noload_memory \
    --torch --torch_precision $precision --workdir /tmp/bench/turns \
    --out $OUT/turns_${model}_${dtype}_${precision}.json \
    2>&1 | grep -Ev "^[IW][0-9]{4} " | grep -E "^(jax|torch|speed)"
  rm -rf /tmp/bench/turns
}
for model in bloom gemma3; do
  run $model bfloat16 bf16_autocast
  run $model bfloat16 float32
  run $model float32 float32
done
echo "$(date -u +%H:%M:%S) done"

#!/bin/bash
# The blocks unrolled (configs/bench_bloom.py, model.unroll_layers=True) on a 2-core Intel Xeon VM with AVX-512,
# avx512_bf16 and AMX. Part 1: our step scanned and unrolled, alternating, no reference, both models, both
# precisions. Part 2: the unrolled step against the reference's fp32 and bf16 autocast steps (--torch), the same
# batches, both reference precisions in one process (their two models and optimizers in memory at once). Part 3: the
# same with one reference precision per process (--torch_precision), which part 2 showed to be needed. Freed memory kept mapped on both sides, 2 warm-up steps. Run from the repository root.
OUT=${OUT:-benchmarks/results/2026-12-03-cpu-xeon-amx-unrolled}
PYTHON=${PYTHON:-/tmp/dev/bin/python}
export HF_HUB_OFFLINE=1 OMP_WAIT_POLICY=PASSIVE PYTHONPATH=.
export GLIBC_TUNABLES=glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736
run() {  # model dtype unroll extra-args... ; prints the summary lines
  local model=$1 dtype=$2 unroll=$3; shift 3
  local cfg=configs/bench_bloom.py steps=6
  [ $model = gemma3 ] && cfg=configs/bench_bloom.py:gemma3 && steps=4
  echo "$(date -u +%H:%M:%S) $model $dtype unroll_layers=$unroll $* load $(cut -d' ' -f1 /proc/loadavg)"
  $PYTHON -m xalign_jax.bench --config $cfg --config.model.dtype=$dtype --config.model.unroll_layers=$unroll \
    --steps $steps --warmup 2 --noload_memory --workdir /tmp/bench/series "$@" 2>&1 \
    | grep -Ev "^[IW][0-9]{4} " | grep -E "^(model|jax|torch|ratio|speed)" 
  rm -rf /tmp/bench/series
}
for model in bloom gemma3; do
  for dtype in float32 bfloat16; do
    for unroll in False True; do
      run $model $dtype $unroll --out $OUT/${model}_${dtype}_unroll${unroll}.json
    done
  done
done
for model in bloom gemma3; do
  for dtype in float32 bfloat16; do
    run $model $dtype True --torch --out $OUT/${model}_${dtype}_unrolled_torch.json
  done
done
for model in bloom gemma3; do
  for dtype in float32 bfloat16; do
    for precision in float32 bf16_autocast; do
      run $model $dtype True --torch --torch_precision $precision \
        --out $OUT/${model}_${dtype}_unrolled_torch_${precision}.json
    done
  done
done
echo "$(date -u +%H:%M:%S) done"

#!/bin/bash
# The bench with the torch reference in a process of its own (bench.ReferenceProcess), on a 2-core Intel Xeon VM
# with AVX-512, avx512_bf16 and AMX: configs/bench_bloom.py as committed (blocks unrolled), one reference precision
# per run (the gemma3 runs' three processes would not all fit in 24 GiB with both), our bf16 step against both, our
# fp32 step against the reference's fp32 step. Freed memory kept mapped on both sides (the children inherit
# GLIBC_TUNABLES), 3 warm-up steps (the third step of a run was slow in every earlier run: 3.06 s for 0.78 s).
# Run from the repository root.
# As run on 6316f5c, where the sides alternated one step each (--steps_per_turn 1, added later, does that), 8 bloom
# and 6 gemma3 steps; turns.sh runs it in turns of 4 steps, 8 steps each (TURN, GEMMA3_STEPS, PREFIX).
OUT=${OUT:-benchmarks/results/2026-12-03-cpu-xeon-amx-reference-process}
PYTHON=${PYTHON:-/tmp/dev/bin/python}
TURN=${TURN:-1} GEMMA3_STEPS=${GEMMA3_STEPS:-6} PREFIX=${PREFIX:-}
export HF_HUB_OFFLINE=1 OMP_WAIT_POLICY=PASSIVE PYTHONPATH=.
export GLIBC_TUNABLES=glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736
run() {  # model dtype precision
  local model=$1 dtype=$2 precision=$3 cfg=configs/bench_bloom.py steps=8
  [ $model = gemma3 ] && cfg=configs/bench_bloom.py:gemma3 && steps=$GEMMA3_STEPS
  echo "$(date -u +%H:%M:%S) $model ours $dtype, reference $precision, load $(cut -d' ' -f1 /proc/loadavg)"
  $PYTHON -m xalign_jax.bench --config $cfg --config.model.dtype=$dtype --steps $steps --warmup 3 \
    --noload_memory --steps_per_turn $TURN --torch --torch_precision $precision --workdir /tmp/bench/series \
    --out $OUT/${PREFIX}${model}_${dtype}_${precision}.json 2>&1 | grep -Ev "^[IW][0-9]{4} " \
    | grep -E "^(model|jax|torch|speed)"
  rm -rf /tmp/bench/series
}
for model in bloom gemma3; do
  run $model bfloat16 bf16_autocast
  run $model bfloat16 float32
  run $model float32 float32
done
echo "$(date -u +%H:%M:%S) done"

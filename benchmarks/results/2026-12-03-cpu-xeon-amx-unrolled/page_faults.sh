#!/bin/bash
# Minor page faults of the bench process with the reference's fp32 step or its bf16 autocast step alternating with
# our unrolled bf16 bloom step, 2 and 10 timed steps each: the difference is the faults of 8 rounds. Freed memory kept
# mapped (GLIBC_TUNABLES as in series.sh); then the bf16 pair again under glibc's defaults. Run from the repository
# root; prints what page_faults.log holds.
PYTHON=${PYTHON:-/tmp/dev/bin/python}
export HF_HUB_OFFLINE=1 OMP_WAIT_POLICY=PASSIVE PYTHONPATH=.
export GLIBC_TUNABLES=glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736
for precision in float32 bf16_autocast glibc_defaults; do
  for steps in 2 10; do
    [ $precision = glibc_defaults ] && [ $steps = 2 ] && continue
    if [ $precision = glibc_defaults ]; then unset GLIBC_TUNABLES; precision=bf16_autocast; fi
    rm -rf /tmp/bench/faults
    /usr/bin/time -v $PYTHON -m xalign_jax.bench --config configs/bench_bloom.py --config.model.dtype=bfloat16 \
      --steps $steps --warmup 2 --noload_memory --torch --torch_precision $precision --workdir /tmp/bench/faults \
      --out /tmp/bench/faults_${precision}_${steps}.json 2> /tmp/bench/faults_${precision}_${steps}.time > /dev/null
    echo "$precision steps=$steps $(grep -E 'Minor' /tmp/bench/faults_${precision}_${steps}.time)"
    $PYTHON -c "
import json, sys
report = json.load(open(sys.argv[1]))
print('  jax', [round(x, 3) for x in report['jax']['step_s']['all']])
for name, part in report['torch'].items():
    print('  ', name, [round(x, 3) for x in part['step_s']['all']])" /tmp/bench/faults_${precision}_${steps}.json
  done
done

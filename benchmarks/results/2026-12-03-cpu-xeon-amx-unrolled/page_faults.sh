#!/bin/bash
# Minor page faults of the bench process with the reference's fp32 step or its bf16 autocast step alternating with
# our unrolled bf16 bloom step, 2 and 10 timed steps each: the difference is the faults of 8 rounds. Freed memory kept
# mapped (GLIBC_TUNABLES as in series.sh); then the bf16 pair again under glibc's defaults. Run from the repository
# root; prints what page_faults.log holds.
PYTHON=${PYTHON:-/tmp/dev/bin/python}
export HF_HUB_OFFLINE=1 OMP_WAIT_POLICY=PASSIVE PYTHONPATH=.
unset GLIBC_TUNABLES   # each run sets its own
KEPT_MAPPED=glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736
measure() {  # label, GLIBC_TUNABLES value (empty: glibc's defaults), reference precision, timed steps
  local label=$1 tunables=$2 precision=$3 steps=$4 out=/tmp/bench/faults
  rm -rf $out && mkdir -p $out
  env ${tunables:+GLIBC_TUNABLES=$tunables} /usr/bin/time -v $PYTHON -m xalign_jax.bench \
    --config configs/bench_bloom.py --config.model.dtype=bfloat16 --steps $steps --warmup 2 --noload_memory \
    --torch --torch_precision $precision --workdir $out/work --out $out/report.json 2> $out/time.txt > /dev/null
  echo "$label, reference $precision, $steps timed steps: $(grep -E 'Minor' $out/time.txt | sed 's/^\s*//')"
  $PYTHON -c "
import json, sys
report = json.load(open(sys.argv[1]))
print('  ours', [round(x, 3) for x in report['jax']['step_s']['all']])
for name, part in report['torch'].items():
    print('  reference', name, [round(x, 3) for x in part['step_s']['all']])" $out/report.json
}
for precision in float32 bf16_autocast; do
  for steps in 2 10; do
    measure "kept mapped" $KEPT_MAPPED $precision $steps
  done
done
measure "glibc defaults" "" bf16_autocast 10

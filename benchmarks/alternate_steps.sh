#!/usr/bin/env bash
# Time the train step of one config under several settings, alternating, one process per run, so that every
# setting sees the same minutes of a noisy shared machine (BENCHMARKS.md compares only such series):
#   OUT=DIR [ROUNDS="1 2"] [BENCH_ARGS="--steps 5 --warmup 1"] benchmarks/alternate_steps.sh CONFIG NAME=FLAGS...
# writes DIR/NAME_rROUND.{json,log}, each log ending with /usr/bin/time -v's figures (peak RSS).
set -u
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 OMP_WAIT_POLICY=PASSIVE PYTHONPATH=.
OUT=${OUT:?set OUT to a results directory}
config=${1:?usage: alternate_steps.sh CONFIG NAME=FLAGS...}
shift
for round in ${ROUNDS:-1 2}; do
  for setting in "$@"; do
    name=${setting%%=*}
    # shellcheck disable=SC2086  # the flags are words
    /usr/bin/time -v "${PYTHON:-python}" -m xalign_jax.bench --config "$config" ${setting#*=} \
      ${BENCH_ARGS:---steps 5 --warmup 1} --noload_memory --out "$OUT/${name}_r${round}.json" \
      > "$OUT/${name}_r${round}.log" 2>&1
    echo "$name round $round exit $?"
  done
done

"""The LM-head slot shapes the bench pipeline's batches take over many steps, and the mean executed FLOPs.

    HF_HUB_OFFLINE=1 PYTHONPATH=. python benchmarks/results/2026-12-03-cpu-head-slot-ladder/head_shapes.py \
        bloom 300 256,288          # '' for the fixed shapes

Host side only: draws ``steps`` batches from ``configs/bench_bloom.py:<variant>`` with ``data.head_slot_buckets``
set (rows and sentence buckets stay fixed) and counts the head slots each step uses; the first 14 are the
batches ``series.sh``'s bench runs draw (2 warmup + 12 timed).
"""
import collections
import importlib.util
import pathlib
import statistics
import sys
import tempfile

from xalign_jax import bench, train

variant, steps, ladder = sys.argv[1], int(sys.argv[2]), sys.argv[3]
spec = importlib.util.spec_from_file_location("bench_config", "configs/bench_bloom.py")
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
config = module.get_config(variant)
if ladder:
    config.data.head_slot_buckets = tuple(int(slots) for slots in ladder.split(","))
trainer = train.Trainer(config, pathlib.Path(tempfile.mkdtemp()))
slots, ours, theirs = [], [], []
for _ in range(steps):
    batch = next(trainer.batches)
    slots.append(batch["clm_head_index"].shape[1])
    executed = bench.executed_step_flops(batch, trainer)
    ours.append(executed[0])
    theirs.append(executed[1])
print(f"{variant}, head slot ladder {ladder or 'none'}: {steps} steps, head slots {dict(sorted(collections.Counter(slots).items()))}; "
      f"the bench's 14 batches {slots[:14]}")
print(f"  executed GFLOP/step mean {statistics.mean(ours) / 1e9:.1f}, reference {statistics.mean(theirs) / 1e9:.1f}, "
      f"work ratio {statistics.mean(theirs) / statistics.mean(ours):.3f}")
trainer.close()

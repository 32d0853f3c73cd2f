"""How many step shapes (compiles) the bucket ladders give over many steps, and the executed FLOPs per step.

    HF_HUB_OFFLINE=1 PYTHONPATH=. python benchmarks/results/2026-11-30-cpu-step-shapes/step_shapes.py bloom 300

Host side only: draws ``steps`` batches from the bench pipeline (``configs/bench_bloom.py:<variant>``) with the
ladders of BENCHMARKS.md "Shapes that follow each step" and counts (row length, head slots, sentence bucket).
"""
import collections
import importlib.util
import pathlib
import statistics
import sys
import tempfile

from xalign_jax import bench, train

variant, steps = sys.argv[1], int(sys.argv[2])
spec = importlib.util.spec_from_file_location("bench_config", "configs/bench_bloom.py")
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
config = module.get_config(variant)
config.data.clm_len_buckets = (128, 160, 192, 224)
config.data.head_slot_buckets = (192, 224, 256, 288)
config.data.cl_buckets = (16, 32, 48, 64)
trainer = train.Trainer(config, pathlib.Path(tempfile.mkdtemp()))
shapes, executed = collections.Counter(), []
clm_positions = head_slots = sentence_positions = 0
for _ in range(steps):
    batch = next(trainer.batches)
    shapes[(batch["clm_ids"].shape[1], batch["clm_head_index"].shape[1], batch["sent0_ids"].shape[1])] += 1
    executed.append(bench.executed_step_flops(batch, trainer))
    clm_positions += batch["clm_ids"].size
    head_slots += batch["clm_head_index"].size
    sentence_positions += 2 * batch["sent0_ids"].size
rows, records = config.data.clm_rows, config.train.batch_size
print(f"{variant}: {steps} steps, {len(shapes)} distinct shapes (row length, head slots, sentence bucket); most common:")
for key, count in shapes.most_common(8):
    print("  ", key, count)
print(f"mean per step: CLM positions {clm_positions / steps:.0f} (fixed {rows * config.data.seq_len}), head slots "
      f"{head_slots / steps:.0f} (fixed {config.data.supervised_cap}), sentence positions "
      f"{sentence_positions / steps:.0f} (fixed {2 * records * 64})")
print(f"executed GFLOP/step mean {statistics.mean(e[0] for e in executed) / 1e9:.1f}, "
      f"reference {statistics.mean(e[1] for e in executed) / 1e9:.1f}")
trainer.close()

"""270m-full's batches under LM-head caps: how many records does each cap hold back over the run's steps, and
what is the most supervised pair/quad of rows, how full are the rows? Host-side only (the pipeline plans from token counts)."""
import importlib.util, pathlib, sys, tempfile, time
from xalign_jax import train
from xalign_jax.data import pipeline
spec = importlib.util.spec_from_file_location("c", "configs/gemma3.py")
m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
config = m.get_config("270m-full")
steps = int(sys.argv[1]) if len(sys.argv) > 1 else config.train.steps
trainer = train.Trainer(config, pathlib.Path(tempfile.mkdtemp()))
examples = trainer.examples
trainer.close()
supervised = [0 if e.clm_labels is None else int(e.clm_labels[1:].sum()) for e in examples.examples]
print(f"270m-full: {len(examples)} records, batch {config.train.batch_size}, {config.data.clm_rows} rows of "
      f"{config.data.seq_len}; longest answer {max(supervised)} supervised; {steps} steps")
for cap, group in [(0, 2), (512, 2), (480, 2), (448, 2), (416, 2), (896, 4), (832, 4), (768, 4)]:
    data = config.data.copy_and_resolve_references()
    data.supervised_cap, data.supervised_group_rows = cap, group
    start = time.perf_counter()
    it = pipeline.make_batches(examples, data, config.train, seed=config.train.seed)
    most, tokens, positions = 0, 0, 0
    for _ in range(steps):
        batch = next(it)
        w = batch["clm_weights"]
        most = max(most, int((w > 0).reshape(-1, group * w.shape[-1]).sum(-1).max()))
        tokens, positions = tokens + int((batch["clm_segment_ids"] > 0).sum()), positions + w.size
    print(f"cap {cap or 'none':>4} per {group} rows: held back {it.held_by_cap:5d}, carried {it.carried:5d}, "
          f"most supervised per {group} rows {most}, rows {tokens / positions:.0%} full, "
          f"{time.perf_counter() - start:.1f} s", flush=True)

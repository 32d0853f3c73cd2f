"""270m-full's CLM rows with data.clm_len_buckets: which row lengths its 1,000 steps use, and how full they are."""
import collections, importlib.util, pathlib, tempfile
from xalign_jax import train
from xalign_jax.data import pipeline
spec = importlib.util.spec_from_file_location("c", "configs/gemma3.py")
m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
config = m.get_config("270m-full")
trainer = train.Trainer(config, pathlib.Path(tempfile.mkdtemp()))
examples = trainer.examples
trainer.close()
for rows, buckets in [(16, ()), (16, (128, 160, 192, 224)), (16, (160, 192, 224)), (16, (192,)), (12, ())]:
    data = config.data.copy_and_resolve_references()
    data.clm_rows, data.clm_len_buckets = rows, buckets
    it = pipeline.make_batches(examples, data, config.train, seed=config.train.seed)
    used, tokens, positions = collections.Counter(), 0, 0
    for _ in range(config.train.steps):
        batch = next(it)
        used[batch["clm_ids"].shape[1]] += 1
        tokens, positions = tokens + int((batch["clm_segment_ids"] > 0).sum()), positions + batch["clm_ids"].size
    print(f"{rows} rows, buckets {buckets}: lengths used {dict(sorted(used.items()))}, rows {tokens / positions:.0%} "
          f"full, {positions / config.train.steps:.0f} positions a step, carried {it.carried}", flush=True)

"""The main job's contrastive sentences packed: rows needed per step (one block: 1 device; two: 2 devices)."""
import collections, importlib.util, pathlib, tempfile
from xalign_jax import train
from xalign_jax.data import pipeline, sentence_packing
spec = importlib.util.spec_from_file_location("c", "configs/gemma3.py")
m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
for variant, steps in (("270m", 24), ("270m-long", 96)):
    config = m.get_config(variant)
    trainer = train.Trainer(config, pathlib.Path(tempfile.mkdtemp()))
    for shards in (1, 2):
        it = pipeline.make_batches(trainer.examples, config.data, config.train, seed=config.train.seed, batch_shards=shards)
        need, length = collections.Counter(), collections.Counter()
        for _ in range(steps):
            records = it._draw_records()
            bucket = pipeline.pick_bucket(max(it._sent_lengths[i] for i in records), it.buckets)
            blocks = pipeline.micro_batch_layout(len(records), 1, shards).reshape(shards, -1)
            ex = trainer.examples.examples
            rows = max(len(sentence_packing.rows_needed([len(ex[records[i]].sent0_ids) for i in b] + [len(ex[records[i]].sent1_ids) for i in b], bucket)) for b in blocks)
            need[rows] += 1; length[bucket] += 1
        print(variant, f"{shards} shard(s): rows needed per block {dict(sorted(need.items()))}, buckets {dict(length)}")
    trainer.close()

"""The main job's batches with the committed LM-head cap against the same config without it: same tokens and weights?"""
import importlib.util, pathlib, sys, tempfile
import numpy as np
from xalign_jax import train
variant, steps = sys.argv[1], int(sys.argv[2])
spec = importlib.util.spec_from_file_location("c", "configs/gemma3.py")
m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
def batches(cap):
    config = m.get_config(variant)
    if not cap:
        config.data.supervised_cap = 0
    trainer = train.Trainer(config, pathlib.Path(tempfile.mkdtemp()))
    out = [{k: np.asarray(v) for k, v in next(trainer.batches).items()} for _ in range(steps)]
    trainer.close()
    return out
capped, plain = batches(True), batches(False)
differ = [i for i, (a, b) in enumerate(zip(capped, plain))
          if any(not np.array_equal(a[k], b[k]) for k in b)]
slots = [int((a["clm_weights"] > 0).reshape(-1, 2 * a["clm_weights"].shape[-1]).sum(-1).max()) for a in capped]
print(f"{variant}: {steps} steps, {len(differ)} differ {differ[:5]}; head index shape {capped[0]['clm_head_index'].shape}; "
      f"max supervised per pair {max(slots)}")

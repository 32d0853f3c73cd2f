"""AFP on XGLM (sinusoidal positions, 256,008 vocabulary, dropout 0.1): the reference's own model.

Variants ``configs/xglm.py:564m`` (default; the reference scripts' model) and ``:7.5b``. Point
``--config.model.source`` at a local HF directory. ``:564m`` keeps the reference batch of 2 records per step.
"""
from xalign_jax.config_defaults import base_config


def get_config(variant: str = "564m"):
    config = base_config()
    config.model.source = f"/models/xglm-{variant}"
    if variant == "564m":
        config.train.batch_size = 2
    elif variant == "7.5b":
        config.model.remat_policy = "full"
        config.mesh.data, config.mesh.fsdp = 1, -1
        config.train.batch_size = 64
        config.data.clm_rows = 32        # divisible by the 16-64 batch shards of the launch/README.md meshes
    else:
        raise ValueError(f"configs/xglm.py: unknown variant {variant!r} (564m | 7.5b)")
    return config

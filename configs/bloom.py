"""AFP on BLOOM (ALiBi, 250,880 vocabulary). Variants: ``configs/bloom.py:560m`` (default) and ``:7b1``.

Weights are not downloaded: point ``--config.model.source`` at a local HF directory (config.json + safetensors).
The 7b1 variant is sized for a TPU v4-32 / v5e-64 or 2x8 H100 (see launch/README.md).
"""
from xalign_jax.config_defaults import base_config


def get_config(variant: str = "560m"):
    config = base_config()
    config.model.source = f"/models/bloom-{variant}"
    config.model.untie_lm_head = False
    if variant == "560m":
        config.train.batch_size = 8
        config.data.clm_rows = 8
    elif variant == "7b1":
        config.model.remat_policy = "full"
        config.mesh.data, config.mesh.fsdp = 1, -1
        config.train.batch_size = 64
        config.data.clm_rows = 32        # divisible by the 16-64 batch shards of the launch/README.md meshes
    else:
        raise ValueError(f"configs/bloom.py: unknown variant {variant!r} (560m | 7b1)")
    return config

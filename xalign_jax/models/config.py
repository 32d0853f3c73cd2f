"""One frozen, hashable description of every supported decoder, built from a transformers ``config.json`` dict.

The four families differ only in the switches below (norm kind, position scheme, MLP kind, biases, extra norms), so
one decoder implementation serves them all; each family module translates its HF config into these fields and
declares how its HF tensors map onto our parameters. The original HF dict is kept (``hf_config``) so that an export
writes back the same architecture.
"""
from __future__ import annotations

import dataclasses
from typing import Any

FAMILY_OF_MODEL_TYPE = {"bloom": "bloom", "xglm": "xglm", "llama": "llama", "qwen2": "llama", "mistral": "llama",
                        "gemma3_text": "gemma3"}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    family: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    norm: str                       # layernorm | rmsnorm | rmsnorm_plus_one (Gemma stores w, applies 1 + w)
    norm_eps: float
    mlp: str                        # gelu_tanh | gelu | swiglu | geglu_tanh
    positions: str                  # rope | alibi | sinusoidal
    tie_word_embeddings: bool = True
    qkv_bias: bool = False
    out_bias: bool = False
    mlp_bias: bool = False
    embed_norm: bool = False        # BLOOM: LayerNorm right after the word embedding
    embed_scale: bool = False       # XGLM, Gemma: embeddings * sqrt(d)
    qk_norm: bool = False           # Gemma 3: RMSNorm over head_dim on q and k
    sandwich_norms: bool = False    # Gemma 3: post-attention, pre- and post-feed-forward norms
    query_scale: float = 0.0        # multiplies q.k; 0 = head_dim ** -0.5
    rope_inv_freq: tuple[float, ...] = ()          # global layers
    rope_local_inv_freq: tuple[float, ...] = ()    # sliding-window layers (Gemma 3: its own base)
    sliding_window: int = 0
    layer_is_sliding: tuple[bool, ...] = ()
    position_offset: int = 0        # XGLM: fairseq positions start at padding_idx + 1
    final_logit_softcap: float = 0.0
    dropout: float = 0.0
    attention_dropout: float = 0.0
    activation_dropout: float = 0.0
    dtype: str = "float32"          # compute dtype
    param_dtype: str = "float32"
    remat_policy: str = "none"
    unroll_layers: bool = False     # blocks unrolled instead of a scan: faster CPU steps, longer compiles
    attention_impl: str = "xla"
    logits_dtype: str = "float32"   # the LM head's output: float32 | bfloat16 (what torch autocast gives)
    hf_config: dict = dataclasses.field(default_factory=dict, compare=False, hash=False, repr=False)

    @property
    def gated_mlp(self) -> bool:
        return self.mlp in ("swiglu", "geglu_tanh")

    @property
    def scale(self) -> float:
        return self.query_scale or self.head_dim ** -0.5

    @classmethod
    def from_hf(cls, hf_config: dict[str, Any], **options: Any) -> "ModelConfig":
        """Our config for a transformers ``config.json`` dict; ``options`` set the runtime fields (dtype, remat...)."""
        from xalign_jax.models import families
        model_type = hf_config.get("model_type")
        if model_type not in FAMILY_OF_MODEL_TYPE:
            raise ValueError(f"unsupported model_type {model_type!r}; supported: {sorted(FAMILY_OF_MODEL_TYPE)}")
        family = FAMILY_OF_MODEL_TYPE[model_type]
        hf_config = complete_hf_config(hf_config)
        fields = families.get(family).config_fields(hf_config)
        return cls(family=family, hf_config=hf_config, **fields, **options)

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes)


def complete_hf_config(hf_config: dict[str, Any]) -> dict[str, Any]:
    """``hf_config`` as transformers itself reads it: aliases resolved (an older BLOOM config's
    ``num_attention_heads`` / ``n_embed``) and every missing field at transformers' default (Gemma 3's
    ``sliding_window`` 4096, ``query_pre_attn_scalar`` 256, ...). A hand-written or older config then builds the
    architecture transformers would build from it, the one our parity tests compare with."""
    import transformers
    return transformers.AutoConfig.for_model(**hf_config).to_dict()

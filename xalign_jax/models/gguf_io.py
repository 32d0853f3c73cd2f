"""GGUF files (llama.cpp) as a source of HF-named, HF-laid-out tensors and an HF config.

``GGUFSource`` follows the ``TensorSource`` protocol of ``hf_io`` (``names``, ``shape``, ``read``), so the same
loader that reads a safetensors checkpoint reads a GGUF file. The header is read by ``gguf_file``; each tensor is
dequantised on demand with the ``gguf`` package (the file itself stays memory-mapped), and llama.cpp's storage
conventions are undone so that the result is what the original HF checkpoint held, exactly as ``transformers`` does
when it loads a GGUF file (``transformers/modeling_gguf_pytorch_utils.py``):

* llama: Q and K rows are permuted by the converter (rotary halves interleaved per head); we un-permute them.
* gemma3: every RMSNorm weight is stored as ``1 + w`` (the converter folds Gemma's runtime ``(1 + w)`` into the
  file); HF stores ``w``, so we subtract 1.
* No ``output.weight`` tensor means the LM head is tied to the token embedding.
"""
from __future__ import annotations

import dataclasses
import pathlib
import re

import numpy as np

from xalign_jax.models.gguf_file import GGUFFile

HF_ARCHITECTURES = {"llama": "LlamaForCausalLM", "gemma3": "Gemma3ForCausalLM"}
MODEL_TYPES = {"llama": "llama", "gemma3": "gemma3_text"}
SUPPORTED_ARCHITECTURES = tuple(HF_ARCHITECTURES)

# GGUF metadata key (after "<arch>.") -> HF config field, per architecture (transformers' integrations/ggml.py).
_COMMON_KEYS = {
    "context_length": "max_position_embeddings",
    "block_count": "num_hidden_layers",
    "feed_forward_length": "intermediate_size",
    "embedding_length": "hidden_size",
    "rope.freq_base": "rope_theta",
    "attention.head_count": "num_attention_heads",
    "attention.head_count_kv": "num_key_value_heads",
    "attention.layer_norm_rms_epsilon": "rms_norm_eps",
    "vocab_size": "vocab_size",
}
_CONFIG_KEYS = {
    "llama": {**_COMMON_KEYS, "rope.dimension_count": "head_dim"},
    "gemma3": {**_COMMON_KEYS, "attention.key_length": "head_dim", "attention.sliding_window": "sliding_window"},
}
# Keys that carry no information HF needs (value_length == key_length for Gemma 3, checked below).
_IGNORED_KEYS = {"llama": set(), "gemma3": {"attention.value_length"}}
_TOKEN_ID_KEYS = {
    "tokenizer.ggml.bos_token_id": "bos_token_id",
    "tokenizer.ggml.eos_token_id": "eos_token_id",
    "tokenizer.ggml.unknown_token_id": "unk_token_id",
    "tokenizer.ggml.padding_token_id": "pad_token_id",
}

# GGUF tensor name -> HF tensor name ({i} is the block index).
_COMMON_TENSORS = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
    "blk.{i}.attn_q.weight": "model.layers.{i}.self_attn.q_proj.weight",
    "blk.{i}.attn_k.weight": "model.layers.{i}.self_attn.k_proj.weight",
    "blk.{i}.attn_v.weight": "model.layers.{i}.self_attn.v_proj.weight",
    "blk.{i}.attn_output.weight": "model.layers.{i}.self_attn.o_proj.weight",
    "blk.{i}.ffn_gate.weight": "model.layers.{i}.mlp.gate_proj.weight",
    "blk.{i}.ffn_up.weight": "model.layers.{i}.mlp.up_proj.weight",
    "blk.{i}.ffn_down.weight": "model.layers.{i}.mlp.down_proj.weight",
    "blk.{i}.attn_norm.weight": "model.layers.{i}.input_layernorm.weight",
}
_TENSOR_NAMES = {
    "llama": {**_COMMON_TENSORS, "blk.{i}.ffn_norm.weight": "model.layers.{i}.post_attention_layernorm.weight"},
    "gemma3": {
        **_COMMON_TENSORS,
        "blk.{i}.attn_q_norm.weight": "model.layers.{i}.self_attn.q_norm.weight",
        "blk.{i}.attn_k_norm.weight": "model.layers.{i}.self_attn.k_norm.weight",
        "blk.{i}.post_attention_norm.weight": "model.layers.{i}.post_attention_layernorm.weight",
        "blk.{i}.ffn_norm.weight": "model.layers.{i}.pre_feedforward_layernorm.weight",
        "blk.{i}.post_ffw_norm.weight": "model.layers.{i}.post_feedforward_layernorm.weight",
    },
}
_BLOCK = re.compile(r"^blk\.(\d+)\.")
_ROWS_PER_SLICE = 8192


@dataclasses.dataclass(frozen=True)
class _Entry:
    """Where one HF tensor lives in the GGUF file."""
    gguf_name: str
    index: int


class GGUFSource:
    """A GGUF checkpoint seen through HF tensor names and layouts (float32, dequantised lazily per tensor)."""

    def __init__(self, path: str | pathlib.Path):
        self.path = pathlib.Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no such GGUF file")
        try:
            self._file = GGUFFile(self.path)
        except ValueError as err:       # bad bytes, a truncated file, an empty one (mmap refuses it)
            raise ValueError(f"{self.path}: not a readable GGUF file ({type(err).__name__}: {err})") from None
        self.architecture = self._string("general.architecture")
        if self.architecture not in SUPPORTED_ARCHITECTURES:
            raise ValueError(f"{self.path}: GGUF architecture {self.architecture!r} is not supported "
                             f"(supported: {', '.join(SUPPORTED_ARCHITECTURES)})")
        self._entries = self._map_tensor_names()
        self._fields = self._config_fields()

    # ---- TensorSource protocol -------------------------------------------------------------------------------
    def names(self) -> list[str]:
        return list(self._entries)

    def shape(self, name: str) -> tuple[int, ...]:
        """HF shape ([out, in] for linear weights): GGUF lists dimensions fastest-first, so reverse them."""
        return tuple(int(d) for d in reversed(self._tensor(name).shape))

    def read(self, name: str) -> np.ndarray:
        """The dequantised float32 tensor in HF layout, llama.cpp's storage conventions undone."""
        weights = self._dequantize(self._tensor(name)).reshape(self.shape(name))
        if self.architecture == "llama" and ".self_attn.q_proj." in name:
            return _unpermute_rows(weights, self._fields["num_attention_heads"])
        if self.architecture == "llama" and ".self_attn.k_proj." in name:
            return _unpermute_rows(weights, self._fields["num_key_value_heads"])
        if self.architecture == "gemma3" and name.endswith("norm.weight"):
            return weights - np.float32(1.0)
        return np.ascontiguousarray(weights)

    # ---- config -----------------------------------------------------------------------------------------------
    def hf_config(self) -> dict:
        """The config.json dict transformers builds when it loads this GGUF file (its class defaults included)."""
        from transformers import AutoConfig

        config = AutoConfig.for_model(MODEL_TYPES[self.architecture], **self._fields).to_dict()
        config["architectures"] = [HF_ARCHITECTURES[self.architecture]]
        config.pop("_name_or_path", None)
        return config

    def metadata(self, key: str):
        """One GGUF metadata value (str, number, bool or list), or None when the file lacks the key."""
        return self._file.metadata.get(key)

    @property
    def quantisation(self) -> str:
        """The tensor types in the file with their counts, e.g. ``Q4_K x27, F32 x109``."""
        counts: dict[str, int] = {}
        for tensor in self._file.tensors:
            counts[tensor.tensor_type.name] = counts.get(tensor.tensor_type.name, 0) + 1
        return ", ".join(f"{kind} x{count}" for kind, count in sorted(counts.items()))

    # ---- internals --------------------------------------------------------------------------------------------
    def _string(self, key: str) -> str:
        value = self.metadata(key)
        if not isinstance(value, str):
            raise ValueError(f"{self.path}: GGUF metadata field {key!r} is missing or not a string")
        return value

    def _tensor(self, name: str):
        if name not in self._entries:
            raise KeyError(f"{self.path}: no tensor {name!r} (has {len(self._entries)} tensors)")
        return self._file.tensors[self._entries[name].index]

    @staticmethod
    def _dequantize(tensor) -> np.ndarray:
        """float32 values, dequantised in slices of rows: ``gguf``'s dequantisers hold several full-size
        temporaries, which for Gemma's 262k-row embedding would cost gigabytes at once."""
        from gguf.quants import dequantize

        data = tensor.data
        if data.ndim < 2 or data.shape[0] <= _ROWS_PER_SLICE:
            return np.asarray(dequantize(data, tensor.tensor_type), dtype=np.float32)
        first = np.asarray(dequantize(data[:_ROWS_PER_SLICE], tensor.tensor_type), dtype=np.float32)
        out = np.empty((data.shape[0], *first.shape[1:]), np.float32)
        out[:_ROWS_PER_SLICE] = first
        for start in range(_ROWS_PER_SLICE, data.shape[0], _ROWS_PER_SLICE):
            rows = data[start:start + _ROWS_PER_SLICE]
            out[start:start + len(rows)] = dequantize(rows, tensor.tensor_type)
        return out

    def _map_tensor_names(self) -> dict[str, _Entry]:
        """HF name -> GGUF tensor; any tensor we cannot name is an error (we would silently lose weights)."""
        table = _TENSOR_NAMES[self.architecture]
        entries, unknown = {}, []
        for index, tensor in enumerate(self._file.tensors):
            match = _BLOCK.match(tensor.name)
            pattern = _BLOCK.sub("blk.{i}.", tensor.name) if match else tensor.name
            if pattern not in table:
                unknown.append(tensor.name)
                continue
            hf_name = table[pattern].format(i=match.group(1)) if match else table[pattern]
            entries[hf_name] = _Entry(tensor.name, index)
        if unknown:
            raise ValueError(f"{self.path}: {len(unknown)} GGUF tensors have no HF name for architecture "
                             f"{self.architecture!r}: {unknown[:5]}")
        return entries

    def _config_fields(self) -> dict:
        """HF config fields read from the metadata; an unknown ``<arch>.*`` key is an error, not a silent skip."""
        arch, table = self.architecture, _CONFIG_KEYS[self.architecture]
        fields = {}
        for key in self._file.metadata:
            if not key.startswith(arch + "."):
                continue
            suffix = key[len(arch) + 1:]
            if suffix in table:
                fields[table[suffix]] = self.metadata(key)
            elif suffix not in _IGNORED_KEYS[arch]:
                raise ValueError(f"{self.path}: GGUF metadata key {key!r} is not understood for {arch!r}; "
                                 "converting without it could change the model's numerics")
        if arch == "gemma3" and self.metadata("gemma3.attention.value_length") not in (None, fields.get("head_dim")):
            raise ValueError(f"{self.path}: gemma3 attention.value_length differs from key_length (unsupported)")
        for key, hf_key in _TOKEN_ID_KEYS.items():
            if self.metadata(key) is not None:
                fields[hf_key] = self.metadata(key)
        fields.setdefault("vocab_size", len(self._file.metadata["tokenizer.ggml.tokens"]))
        fields["tie_word_embeddings"] = "lm_head.weight" not in self._entries
        if arch == "gemma3":
            fields["query_pre_attn_scalar"] = gemma3_query_scalar(fields)
        return fields


def gemma3_query_scalar(fields: dict) -> int:
    """Gemma 3's attention query scale, which GGUF does not store: llama.cpp derives it from the model size,
    hidden / heads for the 62-layer 27B (168) and the head size for the others (256). transformers' GGUF loader
    leaves its default of 256, which is wrong for the 27B."""
    if fields["num_hidden_layers"] == 62:
        return fields["hidden_size"] // fields["num_attention_heads"]
    return fields["head_dim"]


def _unpermute_rows(weights: np.ndarray, num_heads: int) -> np.ndarray:
    """Undo llama.cpp's Q/K row permutation: per head, rows (2, d/2) were stored as (d/2, 2)."""
    out_dim = weights.shape[0]
    rows = weights.reshape(num_heads, out_dim // num_heads // 2, 2, *weights.shape[1:])
    return np.ascontiguousarray(rows.swapaxes(1, 2).reshape(weights.shape))


def load_tokenizer(path: str | pathlib.Path):
    """The HF fast tokenizer built from a GGUF file's vocabulary (transformers' own GGUF conversion).

    Gemma adds ``<bos>`` (its ``add_bos_token`` is true); SmolLM2 adds nothing, as its GGUF metadata says.
    transformers' GGUF reader imports torch: without it, transformers fails with "Could not import module
    'read_gguf_metadata'", which does not say what is missing, so this says it first.
    """
    from transformers import AutoTokenizer

    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such GGUF file")
    try:
        import torch  # noqa: F401
    except ImportError as error:
        raise ModuleNotFoundError(f"{path}: building its tokenizer needs torch, which transformers' GGUF reader "
                                  "imports; the models extra installs it (pip install -e '.[models]')") from error
    return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)

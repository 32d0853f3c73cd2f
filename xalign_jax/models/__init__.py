"""Decoder LMs in Flax NNX (BLOOM, XGLM, Llama/Qwen2, Gemma 3) with HF/GGUF loading and HF export.

    model = models.from_pretrained(path, dtype="float32")      # HF dir or .gguf
    out = model(input_ids, attention_mask=mask, output_hidden_states=True)
    models.save_pretrained(model, out_dir)
    tok = models.load_tokenizer(path)
"""
from xalign_jax.models.config import ModelConfig
from xalign_jax.models.decoder import Decoder, DecoderOutput, PrefixCache, init_model, param_specs
from xalign_jax.models.hf_io import from_pretrained, load_tokenizer, save_pretrained

__all__ = ["ModelConfig", "Decoder", "DecoderOutput", "PrefixCache", "init_model", "param_specs", "from_pretrained",
           "load_tokenizer", "save_pretrained"]

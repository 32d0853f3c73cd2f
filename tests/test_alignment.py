"""Alignment metrics against plain NumPy / scikit-learn, real parallel data, and the PCA plots."""
import numpy as np
import pytest
from sklearn.decomposition import PCA

from xalign_jax.evaluation import alignment, compare, report


def _naive_metrics(src, tgt):
    n = len(src)
    cos = np.array([[a @ b / (np.linalg.norm(a) * np.linalg.norm(b)) for b in tgt] for a in src])
    off = [cos[i, j] for i in range(n) for j in range(n) if i != j]
    return {"retrieval_x2en": np.mean([np.argmax(cos[i]) == i for i in range(n)]),
            "retrieval_en2x": np.mean([np.argmax(cos[:, j]) == j for j in range(n)]),
            "cosine_true_pairs": np.mean(np.diag(cos)), "cosine_random_pairs": np.mean(off), "pairs": n}


def test_pair_metrics_match_a_naive_computation():
    rng = np.random.default_rng(0)
    src = rng.normal(size=(40, 16))
    tgt = src + rng.normal(scale=1.5, size=src.shape)
    ours, naive = alignment.pair_metrics(src, tgt), _naive_metrics(src, tgt)
    for key, value in naive.items():
        assert ours[key] == pytest.approx(value, abs=1e-12), key
    assert 0 < ours["retrieval_x2en"] < 1      # a discriminating example, neither trivial nor hopeless


def test_centring_removes_a_shared_direction():
    """Raw cosines near 1 for every pair (one dominant direction) hide the pairing that centring reveals."""
    rng = np.random.default_rng(1)
    signal = rng.normal(size=(50, 8))
    shared = np.full(8, 40.0)
    metrics = alignment.alignment_metrics(signal + shared + 0.1 * rng.normal(size=signal.shape),
                                          signal + shared + 5.0 + 0.1 * rng.normal(size=signal.shape))
    assert metrics["raw"]["cosine_random_pairs"] > 0.97
    assert metrics["centred"]["cosine_random_pairs"] < 0.1
    assert metrics["centred"]["retrieval_x2en"] == 1.0
    naive = _naive_metrics(signal - signal.mean(0), signal - signal.mean(0))
    assert naive["retrieval_x2en"] == 1.0


def test_projection_matches_sklearn_pca():
    rng = np.random.default_rng(2)
    vectors = {"en": rng.normal(size=(30, 6)), "zh": rng.normal(loc=1.0, size=(20, 6))}
    ours = alignment.project_2d(vectors)
    expected = PCA(n_components=2).fit_transform(np.concatenate([vectors["en"], vectors["zh"]]))
    got = np.concatenate([np.asarray(ours["en"]), np.asarray(ours["zh"])])
    for axis in range(2):   # components are defined up to sign
        sign = np.sign(got[:, axis] @ expected[:, axis])
        np.testing.assert_allclose(sign * got[:, axis], expected[:, axis], atol=1e-4)


@pytest.mark.parametrize("source,language,rows", [("flores", "zh", 204), ("flores", "sw", 204),
                                                  ("tatoeba", "zh", 1000)])
def test_real_parallel_pairs_load(shared_data, source, language, rows):
    xx, en = alignment.load_pairs(source, language, shared_data)
    assert len(xx) == len(en) == rows
    assert alignment.load_pairs(source, language, shared_data, limit=10)[0] == xx[:10]


def test_tatoeba_has_no_dev_split(shared_data):
    with pytest.raises(ValueError, match="Tatoeba has only test pairs"):
        alignment.load_pairs("tatoeba", "zh", shared_data, split="dev")


def test_flores_pairs_are_translations_by_index_id(shared_data):
    xx, en = alignment.load_pairs("flores", "de", shared_data)
    english = (shared_data / "sib200_flores/eng_Latn/test.tsv").read_text(encoding="utf-8").splitlines()[1]
    assert en[0] == english.split("\t", 2)[2]
    assert xx[0] != en[0]


def test_plots_and_before_after_table(tmp_path):
    rng = np.random.default_rng(3)
    projection = {"flores/avg-1": alignment.project_2d({"en": rng.normal(size=(10, 4)),
                                                        "zh": rng.normal(size=(10, 4))})}
    metrics = alignment.alignment_metrics(rng.normal(size=(10, 4)), rng.normal(size=(10, 4)))
    before = {"tasks": {"pawsx_en_s0_i0": 0.5, "avg_zero": 0.5},
              "alignment": {"metrics": {"flores/zh/avg-1": metrics}, "projection": projection}}
    after = {"tasks": {"pawsx_en_s0_i0": 0.6, "avg_zero": 0.6},
             "alignment": {"metrics": {"flores/zh/avg-1": metrics}, "projection": projection}}
    table = compare.write_before_after(before, after, tmp_path / "before_after.md")
    assert table["pawsx_en_s0_i0"]["delta"] == pytest.approx(0.1)
    assert table["flores/zh/avg-1/raw/retrieval_x2en"]["delta"] == 0.0
    assert "| avg_zero | 0.5000 | 0.6000 | +0.1000 |" in (tmp_path / "before_after.md").read_text()
    png = tmp_path / "pca_before_after_flores_avg-1.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report.plot_projections(projection, tmp_path / "single.png")
    assert (tmp_path / "single.png").stat().st_size > 1000


from tests.test_eval_scorer import tiny  # noqa: E402,F401  (module-scoped tiny Llama fixture)


def test_embeddings_equal_pooled_pytorch_hidden_states_and_poolers_of_a_layer_share_its_passes(
        tiny, shared_data, monkeypatch):  # noqa: F811
    import torch
    from xalign_jax import xla_options
    reference_model, model, tok, _ = tiny
    passes, jit_with = [], xla_options.jit_with

    def counting_jit_with(*args):
        compiled = jit_with(*args)
        return lambda *a, **kwargs: passes.append(kwargs["num_layers"]) or compiled(*a, **kwargs)
    monkeypatch.setattr(xla_options, "jit_with", counting_jit_with)
    sentences = alignment.load_pairs("flores", "zh", shared_data, limit=5)[0]
    poolers = ("avg-1", "last-2", "max-0", "last-1")
    ours = alignment.embed_sentences_by_pooler(model, tok, sentences, poolers, batch_rows=4, buckets=(64, 128))
    assert sorted(passes) == [0, 0, 1, 1, 2, 2]         # 2 batches at each of 3 layers: avg-1 and last-1 share
    for pooler in poolers:
        method, layer = pooler.split("-")
        for vector, sentence in zip(ours[pooler], sentences):
            ids = torch.tensor([tok(sentence)["input_ids"]])
            with torch.no_grad():
                hidden = reference_model(ids, output_hidden_states=True).hidden_states[int(layer)][0].numpy()
            expected = {"avg": hidden.mean(0), "last": hidden[-1], "max": hidden.max(0)}[method]
            np.testing.assert_allclose(vector, expected, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="no sentences to embed for avg-1"):
        alignment.embed_sentences(model, tok, [], "avg-1")


def test_an_fp32_models_embeddings_compile_with_the_cpu_options_a_bf16_models_with_xlas_defaults(
        tiny, shared_data, monkeypatch):  # noqa: F811
    """The alignment's forward passes compile as the scorer's do (``xla_options.for_compute_dtype``)."""
    from xalign_jax import models, xla_options
    _, model, tok, path = tiny
    used, jit_with = [], xla_options.jit_with
    monkeypatch.setattr(xla_options, "jit_with", lambda function, options, *args: used.append(options) or
                        jit_with(function, options, *args))
    sentences = alignment.load_pairs("flores", "zh", shared_data, limit=2)[0]
    alignment.embed_sentences(model, tok, sentences, "avg-1", batch_rows=2, buckets=(64, 128))
    bf16 = models.from_pretrained(path, dtype="bfloat16", param_dtype="bfloat16")
    alignment.embed_sentences(bf16, tok, sentences, "avg-1", batch_rows=2, buckets=(64, 128))
    assert used == [dict(xla_options.CPU_MATMULS_BY_XLA), None]


def test_evaluate_alignment_end_to_end(tiny, shared_data, tmp_path, monkeypatch):  # noqa: F811
    from xalign_jax.evaluation import runner
    _, model, tok, _ = tiny
    cfg = runner.default_eval_config().alignment
    poolers = ("avg-1", "last-1")
    cfg.update({"languages": ("zh", "sw"), "max_pairs": 12, "data_dir": str(shared_data), "poolers": poolers})
    embedded, embed = [], alignment.embed_sentences_by_pooler
    monkeypatch.setattr(alignment, "embed_sentences_by_pooler", lambda m, t, sentences, *args, **kwargs:
                        embedded.append(list(sentences)) or embed(m, t, sentences, *args, **kwargs))
    result = runner.evaluate_alignment(model, tok, cfg)
    assert set(result["metrics"]) == {f"flores/{lang}/{pooler}" for lang in ("zh", "sw") for pooler in poolers}
    assert result["metrics"]["flores/zh/avg-1"]["raw"]["pairs"] == 12
    (zh, en), (sw, en_again) = (alignment.load_pairs("flores", lang, shared_data, limit=12) for lang in ("zh", "sw"))
    assert en == en_again and embedded == [zh, en, sw]     # each list once for both poolers, FLORES's English once
    sw_vectors, en_vectors = (alignment.embed_sentences(model, tok, sentences, "last-1") for sentences in (sw, en))
    assert result["metrics"]["flores/sw/last-1"] == alignment.alignment_metrics(sw_vectors, en_vectors)
    assert set(result["projection"]["flores/avg-1"]) == {"en", "zh", "sw"}
    report.write_eval_outputs({"details": [], "avg_zero": 0.0, "avg_all": 0.0}, result, tmp_path)
    assert (tmp_path / "pca_flores_avg-1.png").stat().st_size > 1000


def test_headline_means_gaps_and_goals_by_hand():
    table = {"xnli_en_s0_i0": {"before": 0.50, "after": 0.50}, "xnli_sw_s0_i0": {"before": 0.40, "after": 0.44},
             "pawsx_en_s0_i0": {"before": 0.60, "after": 0.60}, "xnli_en_s5_i0": {"before": 0.1, "after": 0.9},
             "flores/sw/avg-6/raw/retrieval_x2en": {"before": 0.10, "after": 0.40},
             "flores/sw/avg-6/raw/retrieval_en2x": {"before": 0.20, "after": 0.30},
             "flores/sw/avg-6/centred/retrieval_x2en": {"before": 0.0, "after": 1.0}}
    for row in table.values():
        row["delta"] = row["after"] - row["before"]
    summary = compare.headline(table)
    assert summary["languages"]["en"]["before"] == pytest.approx(55.0)          # 5-shot key ignored
    sw = summary["languages"]["sw"]
    assert sw["delta"] == pytest.approx(4.0)
    assert sw["gap_to_en_before"] == pytest.approx(-10.0) and sw["gap_to_en_after"] == pytest.approx(-6.0)
    assert summary["retrieval"]["flores/sw/avg-6"]["delta"] == pytest.approx(20.0)   # raw only, both directions
    assert summary["goals"] == {"retrieval_up_20_points": True, "non_english_zero_shot_up_1_point": True,
                                "english_not_down_more_than_0.5": True}
    assert "| sw | 40.0 | 44.0 | +4.0 | -10.0 | -6.0 |" in compare.headline_markdown(summary)

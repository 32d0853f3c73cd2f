"""Representation alignment: do translations get similar internal sentence vectors (AFP_SPEC §4.2)?

For a pooler such as ``avg-12`` (method + HF hidden-state index, ``xalign_jax.objectives.parse_pooler``) the forward
stops after block k (``num_layers=k``), the states are pooled with ``objectives.pool`` (every pooler of that layer
from the same pass), and for each language paired with English we report top-1 retrieval accuracy in both
directions (cosine nearest neighbour among all candidates) and the mean cosine of true pairs vs. of all
non-matching pairs (the exact expectation over random pairs).

Every metric is given twice: on raw vectors and on per-language-centred vectors (each language's mean subtracted).
In middle layers one shared direction dominates and raw cosines sit at 0.96-0.999 for any pair (DESIGN.md), so raw
numbers mostly measure that direction; centring removes it and shows whether translations are closer than
non-translations.
"""
from __future__ import annotations

import pathlib
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from flax import nnx

from xalign_jax import objectives, xla_options
from xalign_jax.data import sources
from xalign_jax.evaluation.scorer import DEFAULT_BUCKETS, bucket_length

SOURCES = ("flores", "tatoeba")


def load_pairs(source: str, language: str, data_dir: pathlib.Path, *, split: str = "test",
               limit: int = 0) -> tuple[list[str], list[str]]:
    """(sentences in ``language``, their English translations) from Tatoeba or SIB-200/FLORES."""
    drops = sources.DropLog()
    if source == "tatoeba":
        if split != "test":
            raise ValueError(f"alignment split {split!r}: Tatoeba has only test pairs (a held-out test set of the "
                             "training data); use flores for a dev split")
        groups = sources.read_tatoeba(data_dir / "tatoeba" / "v1", [language, "en"], drops, skip_bad=False)
    elif source == "flores":
        groups = sources.read_flores(data_dir / "sib200_flores", [language, "en"], [split], drops, skip_bad=False)
        groups = [g for g in groups if len(g) == 2]
    else:
        raise ValueError(f"alignment source {source!r}: expected one of {SOURCES}")
    groups = groups[:limit] if limit else groups
    return [g[language] for g in groups], [g["en"] for g in groups]


def _embed_batch(graphdef, params, ids: jax.Array, mask: jax.Array, *, num_layers: int,
                 methods: tuple[str, ...]) -> tuple[jax.Array, ...]:
    model = nnx.merge(graphdef, params)
    hidden = model(ids, mask, num_layers=num_layers, compute_logits=False).last_hidden_state
    return tuple(objectives.pool(hidden, mask, method) for method in methods)


def embed_sentences(model: Any, tokenizer: Any, sentences: Sequence[str], pooler: str, **options) -> np.ndarray:
    """[N, D] float32 sentence vectors of one pooler (``embed_sentences_by_pooler``'s options)."""
    return embed_sentences_by_pooler(model, tokenizer, sentences, (pooler,), **options)[pooler]


def embed_sentences_by_pooler(model: Any, tokenizer: Any, sentences: Sequence[str], poolers: Sequence[str], *,
                              params=None, batch_rows: int = 16, buckets: Sequence[int] = DEFAULT_BUCKETS,
                              cpu_compiler_options: Mapping[str, object] | None = xla_options.CPU_MATMULS_BY_XLA
                              ) -> dict[str, np.ndarray]:
    """{pooler: [N, D] float32 sentence vectors} (default special tokens included, as in the contrastive objective).

    Poolers of one layer share its forward passes (``avg-6`` and ``last-6``: one pass to block 6, pooled twice). An
    fp32 model's forward passes compile on CPU with ``cpu_compiler_options``, as the scorer's do."""
    if not sentences:
        raise ValueError(f"alignment: no sentences to embed for {', '.join(poolers)}")
    options = xla_options.for_compute_dtype(cpu_compiler_options, jax.default_backend(), model.config.dtype)
    embed_batch = xla_options.jit_with(_embed_batch, options, ("graphdef", "num_layers", "methods"))
    graphdef, own_params = nnx.split(model, nnx.Param)
    params = own_params if params is None else params
    encoded = tokenizer(list(sentences))["input_ids"]
    batches = _length_sorted_batches(encoded, batch_rows, buckets)
    by_layer: dict[int, dict[str, str]] = {}
    for pooler in poolers:
        method, layer = objectives.parse_pooler(pooler)
        by_layer.setdefault(layer, {})[pooler] = method
    vectors = {}
    for layer, methods in by_layer.items():
        outputs = [(group, embed_batch(graphdef, params, ids, mask, num_layers=layer, methods=tuple(methods.values())))
                   for group, ids, mask in batches]
        vectors.update(zip(methods, _in_sentence_order(outputs, len(encoded))))
    return vectors


def _length_sorted_batches(encoded: list[list[int]], batch_rows: int,
                           buckets: Sequence[int]) -> list[tuple[list[int], np.ndarray, np.ndarray]]:
    """(sentence indices, ids, mask) of ``batch_rows`` rows each, sentences sorted by length so that each batch pads
    to the bucket of its longest."""
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    batches = []
    for lo in range(0, len(order), batch_rows):
        group = order[lo:lo + batch_rows]
        length = bucket_length(max(len(encoded[i]) for i in group), buckets)
        ids = np.zeros((batch_rows, length), np.int32)
        mask = np.zeros((batch_rows, length), np.int32)
        for row, i in enumerate(group):
            ids[row, :len(encoded[i])], mask[row, :len(encoded[i])] = encoded[i], 1
        batches.append((group, ids, mask))
    return batches


def _in_sentence_order(outputs: list, count: int) -> list[np.ndarray]:
    """Per pooling method, the [count, D] vectors of the batches' filled rows, back in the sentences' order."""
    vectors = None
    for group, pooled in jax.device_get(outputs):
        if vectors is None:
            vectors = [np.zeros((count, p.shape[-1]), np.float32) for p in pooled]
        for out, rows in zip(vectors, pooled):
            out[group] = rows[:len(group)]
    return vectors


def _unit(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), objectives.COSINE_EPS)


def pair_metrics(src: np.ndarray, tgt: np.ndarray) -> dict[str, float]:
    """Retrieval top-1 both ways and true- vs random-pair mean cosine for row-aligned [N, D] translations."""
    n = len(src)
    if n < 2 or len(tgt) != n:
        raise ValueError(f"need at least 2 aligned pairs, got {len(src)} and {len(tgt)} vectors")
    cosine = _unit(src) @ _unit(tgt).T
    truth = np.arange(n)
    diagonal = np.trace(cosine)
    return {"retrieval_x2en": float(np.mean(cosine.argmax(axis=1) == truth)),
            "retrieval_en2x": float(np.mean(cosine.argmax(axis=0) == truth)),
            "cosine_true_pairs": float(diagonal / n),
            "cosine_random_pairs": float((cosine.sum() - diagonal) / (n * (n - 1))),
            "pairs": n}


def alignment_metrics(src: np.ndarray, tgt: np.ndarray) -> dict[str, dict[str, float]]:
    """``pair_metrics`` on raw vectors and on vectors centred per language."""
    return {"raw": pair_metrics(src, tgt),
            "centred": pair_metrics(src - src.mean(axis=0), tgt - tgt.mean(axis=0))}


def project_2d(vectors_by_language: dict[str, np.ndarray]) -> dict[str, list[list[float]]]:
    """2-D PCA coordinates of all vectors (one fit over every language), per language."""
    languages = list(vectors_by_language)
    stacked = np.concatenate([vectors_by_language[lang] for lang in languages]).astype(np.float64)
    centred = stacked - stacked.mean(axis=0)
    _, _, components = np.linalg.svd(centred, full_matrices=False)
    points = centred @ components[:2].T
    out, lo = {}, 0
    for lang in languages:
        hi = lo + len(vectors_by_language[lang])
        out[lang] = points[lo:hi].round(5).tolist()
        lo = hi
    return out

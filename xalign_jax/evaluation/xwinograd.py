"""XWinograd raw TSV (Tikhonov & Ryabinin) -> the sentence-with-blank form the reference template expects.

The raw file gives the schema text plus NLTK tokens and token spans; the HF ``Muennighoff/xwinograd`` form used by
the reference is ``sentence`` with the pronoun replaced by ``_``, ``option1``/``option2`` and ``answer``. We recover
character offsets by locating each token in the raw text in order (NLTK writes quotes as `````` / ``''``), then cut
the text around the pronoun's span: ``sentence_part1`` + candidate + ``sentence_part2`` is the schema with the
pronoun replaced by the candidate. Deterministic, no derived files written.

Language codes are the file's, except ``jp``, which becomes ISO 639-1 ``ja`` as in every other task (PAWS-X). Each
row also keeps the English schema it translates (column 3, or its own text for an English row; ``None`` where
the file does not say, fr/pt/ru), so that a translation and its original share one item key, and its collection
(column 2 without its split: ``original``, ``superglue``, ``wsc_naive``, ...).
"""
from __future__ import annotations

import json
import pathlib
from typing import Any, Iterator

from xalign_jax.evaluation.readers import SourceError, read_tsv, require_text

_QUOTE_TOKENS = {"``": ('"', "“", "«"), "''": ('"', "”", "»")}
COLUMNS = 7
ISO_LANGUAGE = {"jp": "ja"}
# The English collections that hold the Winograd Schema Challenge's schemas, which the fr/pt/ru rows translate
# without naming their original: ``original`` is WSC273 (the collection fr and pt rows name too), and 68 of the
# 170 ``superglue`` rows are within a token Jaccard of 0.6 of a WSC273 row (the collection ru rows name; their
# first row is WSC273's first schema). 4 of the 1,882 ``wsc_naive`` rows are.
WSC_COLLECTIONS = frozenset({"original", "superglue"})


def _token_offsets(text: str, tokens: list[str], path: pathlib.Path, lineno: int) -> list[tuple[int, int]]:
    """(start, end) character span of every token, searching left to right."""
    offsets, cursor = [], 0
    for token in tokens:
        for form in (token, *_QUOTE_TOKENS.get(token, ())):
            start = text.find(form, cursor)
            if start >= 0 and not text[cursor:start].strip():
                break
        else:
            raise SourceError(path, lineno, "tokens", f"token {token!r} not found after character {cursor} of "
                                                      f"{text!r}")
        offsets.append((start, start + len(form)))
        cursor = start + len(form)
    return offsets


def _json_column(raw: str, path: pathlib.Path, lineno: int, field: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError as error:
        raise SourceError(path, lineno, field, f"invalid JSON ({error.msg})") from error


def _span(value: Any, path: pathlib.Path, lineno: int, field: str, num_tokens: int) -> tuple[int, int]:
    if (not isinstance(value, list) or len(value) != 2 or not all(isinstance(v, int) for v in value)
            or not 0 <= value[0] < value[1] <= num_tokens):
        raise SourceError(path, lineno, field, f"expected a token span [start, end) within {num_tokens} tokens, "
                                               f"got {value!r}")
    return value[0], value[1]


def _candidates(value: Any, path: pathlib.Path, lineno: int) -> tuple[tuple[str, str], int]:
    if not isinstance(value, list) or len(value) != 2 or not all(isinstance(c, list) and len(c) == 4 for c in value):
        raise SourceError(path, lineno, "candidates", "expected two [text, span, tokens, is_correct] entries")
    correct = [c[3] for c in value]
    if sorted(correct) != [False, True]:
        raise SourceError(path, lineno, "candidates", f"expected exactly one correct candidate, got {correct}")
    texts = tuple(require_text(c[0], path, lineno, "candidates") for c in value)
    return texts, correct.index(True)


def convert_row(row: list[str], path: pathlib.Path, lineno: int) -> dict[str, Any]:
    """One raw row -> {language, english, sentence_part1, sentence_part2, options, label}."""
    text = require_text(row[3], path, lineno, "text")
    tokens = _json_column(row[4], path, lineno, "tokens")
    pronoun = _json_column(row[5], path, lineno, "pronoun")
    if not isinstance(tokens, list) or not isinstance(pronoun, list) or len(pronoun) != 3:
        raise SourceError(path, lineno, "pronoun", "expected a token list and [text, span, tokens]")
    start, end = _span(pronoun[1], path, lineno, "pronoun", len(tokens))
    offsets = _token_offsets(text, tokens, path, lineno)
    options, label = _candidates(_json_column(row[6], path, lineno, "candidates"), path, lineno)
    english = text if row[0] == "en" else (None if row[2] == "?" else row[2])
    return {"language": ISO_LANGUAGE.get(row[0], row[0]), "english": english, "collection": row[1].split(".")[0],
            "sentence_part1": text[:offsets[start][0]],
            "sentence_part2": text[offsets[end - 1][1]:], "options": options, "label": label}


def read_xwinograd(path: pathlib.Path) -> Iterator[tuple[int, dict[str, Any]]]:
    for lineno, row in read_tsv(path, COLUMNS):
        yield lineno, convert_row(row, path, lineno)

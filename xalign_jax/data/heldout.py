"""Held-out discipline: no training sentence may occur in an evaluation TEST set.

AFP trains on a few thousand sentences and is judged by few-shot accuracy on XNLI, PAWS-X, XCOPA, XStoryCloze,
XWinograd and by retrieval on Tatoeba / SIB-200; a test sentence leaking into the contrastive pairs or the CIF
text would inflate exactly the numbers the method is compared on. So every text field the builder uses is matched
against the TEXT fields of those test files, whole and sentence by sentence, on a normalised form (NFKC,
casefold, collapsed whitespace) so that width, case and spacing variants still match. The pieces: the field and
each quoted span in it ("...", “...”, «...», 「...」 and the like) are cut at sentence ends and line breaks; each
piece is stripped of quotes and bullets, and also counts from after each colon in it (a lead-in of any length).
The pieces catch test sentences inside longer texts: the default recipe's Alpaca items held short Tatoeba
sentences in dialogues ("what is your name?"), after a long lead-in ('Rewrite the following phrase in a more
positive way: "It is what it is."') and quoted mid-sentence ('From the sentence “The apple is red.”, identify the
main verb.'). A piece without a letter ("...") is not matched.

The readers below touch only the text columns of each file, on purpose: they stay independent of the evaluator's
task loaders (which also parse labels, demonstrations and templates) and take about 1.3 s for the 385k distinct
sentences of shared/data. Dev / demonstration splits are NOT held out: the few-shot evaluator draws
demonstrations from them. They do steer choices (in-training model selection, the dev-split sweep), so a corpus
other than the default recipe should be checked against them; the default recipe shares no sentence with the
evaluated dev parts (XNLI dev, PAWS-X dev_2k, XCOPA val / COPA train, XStoryCloze train, FLORES dev).
"""
from __future__ import annotations

import csv
import functools
import json
import os
import pathlib
import re
import unicodedata
from typing import Callable, Iterator

csv.field_size_limit(1 << 24)


def normalize(text: str) -> str:
    """The matching key: NFKC (full/half-width, ligatures), casefold, whitespace runs collapsed to one space."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


_SENTENCE = re.compile(r"[^.!?。！？\n]+[.!?。！？]*")
_QUOTED = re.compile(r'"([^"\n]+)"|“([^”\n]+)”|‘([^’\n]+)’|«([^»\n]+)»|「([^」\n]+)」|『([^』\n]+)』')
_LEAD_IN_END = re.compile(r":\s+|：")   # "Name: ", "Rewrite the following phrase in a more positive way: ", "他说："
_PIECE_EDGES = " \t\"'“”‘’«»「」『』-–—*•"


def sentence_keys(text: str) -> set[str]:
    """The normalised keys of ``text`` whole and of each sentence of it and of its quoted spans (those with a
    letter), each sentence also from after each colon in it, so a lead-in of any length comes off."""
    spans = [text, *(next(filter(None, quoted.groups())) for quoted in _QUOTED.finditer(text))]
    pieces = [piece.strip(_PIECE_EDGES) for span in spans for piece in _SENTENCE.findall(span)]
    pieces += [piece[end.end():].strip(_PIECE_EDGES) for piece in pieces for end in _LEAD_IN_END.finditer(piece)]
    return {key for key in map(normalize, [text, *pieces]) if any(ch.isalpha() for ch in key)}


def _tsv_rows(path: pathlib.Path, *, quoted: bool) -> Iterator[list[str]]:
    with open(path, encoding="utf-8", newline="") as handle:
        yield from csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_MINIMAL if quoted else csv.QUOTE_NONE)


def _tsv_columns(columns: tuple[int, ...], *, header: bool, quoted: bool = False) -> Callable:
    def read(path: pathlib.Path) -> Iterator[str]:
        rows = _tsv_rows(path, quoted=quoted)
        if header:
            next(rows, None)
        for row in rows:
            yield from (row[i] for i in columns if i < len(row))
    return read


def _jsonl_fields(fields: tuple[str, ...]) -> Callable:
    def read(path: pathlib.Path) -> Iterator[str]:
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                if line.strip():
                    item = json.loads(line)
                    yield from (item[f] for f in fields if isinstance(item.get(f), str))
    return read


def _lines(path: pathlib.Path) -> Iterator[str]:
    with open(path, encoding="utf-8") as handle:
        yield from handle


# (name, glob under data_dir, text reader). Every glob must match at least one file: a filter that silently
# checks nothing would be worse than none.
TEST_SETS: tuple[tuple[str, str, Callable], ...] = (
    ("xnli test (xtreme tsv)", "xnli/test_unlabeled_xtreme/test-*.tsv", _tsv_columns((0, 1), header=False)),
    ("xnli test (labelled jsonl)", "xnli/test_labeled_hf/*/test.jsonl", _jsonl_fields(("premise", "hypothesis"))),
    ("paws-x test_2k", "pawsx/x-final/*/test_2k.tsv", _tsv_columns((1, 2), header=True)),
    ("xcopa test", "xcopa/data/*/test.*.jsonl", _jsonl_fields(("premise", "choice1", "choice2"))),
    ("copa en test", "xcopa/copa_en/test.jsonl", _jsonl_fields(("premise", "choice1", "choice2"))),
    ("xstorycloze eval", "xstorycloze/*split_20_80_eval.tsv", _tsv_columns((1, 2, 3, 4, 5, 6), header=True)),
    ("xwinograd (all)", "xwinograd/dataset.tsv", _tsv_columns((3,), header=False)),
    ("tatoeba (all)", "tatoeba/v1/tatoeba.*-eng.*", _lines),
    ("sib200/flores test", "sib200_flores/*/test.tsv", _tsv_columns((2,), header=True, quoted=True)),
)


def _files(data_dir: pathlib.Path, name: str, pattern: str) -> list[pathlib.Path]:
    files = sorted(p for p in data_dir.glob(pattern) if p.is_file())
    if not files:
        raise FileNotFoundError(f"held-out filter: no {name} files match {data_dir / pattern} "
                                f"(pass the shared data directory, or disable the held-out filter)")
    return files


@functools.lru_cache(maxsize=2)
def _cached_test_texts(data_dir: str) -> frozenset[str]:
    texts = set()
    for name, pattern, reader in TEST_SETS:
        for path in _files(pathlib.Path(data_dir), name, pattern):
            texts.update(normalize(text) for text in reader(path))
    texts.discard("")
    return frozenset(texts)


def evaluation_test_texts(data_dir: str | os.PathLike) -> frozenset[str]:
    """Normalised sentences of every evaluation test set under `data_dir` (computed from the files, kept in
    memory only for the life of the process)."""
    return _cached_test_texts(str(pathlib.Path(data_dir).resolve()))


class HeldoutFilter:
    """Answers "is this training text a test sentence?" and counts how many texts it rejected."""

    def __init__(self, test_texts: frozenset[str] | set[str]):
        self.test_texts = test_texts
        self.removed = 0

    @classmethod
    def from_data_dir(cls, data_dir: str | os.PathLike) -> "HeldoutFilter":
        return cls(evaluation_test_texts(data_dir))

    def is_heldout(self, *texts: str) -> bool:
        """True (and counted once) if any of `texts` is, or has a sentence that is, a test sentence."""
        hit = any(not self.test_texts.isdisjoint(sentence_keys(text)) for text in texts if text)
        self.removed += hit
        return hit

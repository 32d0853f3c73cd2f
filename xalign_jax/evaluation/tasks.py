"""The five few-shot benchmarks: which files exist, and how each becomes items (AFP_SPEC §3.3, §3.5).

Each task reads three *parts* per language from the shared data directory:

* ``test``: the evaluated set for final numbers;
* ``dev``: the evaluated set for in-training model selection (never the test set, AFP_SPEC §7.4); XWinograd has
  none (its file is one set, every row a test row), so model selection leaves it out;
* ``demo``: the demonstration pool.

| task        | test                                | dev                                  | demo pool                  |
|-------------|-------------------------------------|--------------------------------------|----------------------------|
| xnli        | HF labelled test; bg/el/ru/th: XTREME test + English labels by row (xnli/SOURCE.md) | dev | dev |
| pawsx       | test_2k                             | dev_2k                               | dev_2k                     |
| xcopa       | test (en: COPA test)                | val (en: COPA train, no COPA val)    | val (en: COPA train)       |
| xstorycloze | split_20_80_eval                    | split_20_80_train                    | split_20_80_train          |
| xwinograd   | every row of the language           | none                                 | every row of the language  |

Where the evaluated set and the pool share items (every ``dev`` part, XWinograd ``test``), ``Item.key`` (the same for
the translations of one item, e.g. the PAWS-X id) lets ``fewshot`` exclude the evaluated item from its own
demonstrations, even when the pool is another language's translation. XWinograd's key is its English schema
(punctuation and case aside): its jp and zh rows name theirs, and 971 of the 975 distinct ones are an English row's
text (not: two reworded, two without an English row); fr/pt/ru rows name none and are keyed by line. No English
row of the collections that hold the WSC schemas (``xwinograd.WSC_COLLECTIONS``) is a demonstration of a
translation whose original is not an English row's text.
Languages are discovered from the files present (never a fixed list).
"""
from __future__ import annotations

import dataclasses
import pathlib
import re
from typing import Callable, Mapping

from xalign_jax.evaluation.readers import SourceError, read_jsonl, read_tsv, require_choice, require_text
from xalign_jax.evaluation.xwinograd import WSC_COLLECTIONS, read_xwinograd

PARTS = ("test", "dev", "demo")
XNLI_LABELS = ("entailment", "neutral", "contradiction")   # = HF label ids 0, 1, 2


@dataclasses.dataclass(frozen=True)
class Item:
    """One evaluation example; ``options`` are its own candidates (empty when the template has verbalizers).

    ``collection`` and ``translates`` serve translations whose original is not found by key (XWinograd fr/pt/ru
    name none): such an item ``translates`` every English collection its original may be in, and no row of those
    may be one of its demonstrations.
    """
    key: str
    fields: Mapping[str, str]
    label: int
    options: tuple[str, ...] = ()
    source: str = ""     # file:line, for per-item outputs and error messages
    collection: str = ""                        # the English schema collection a row comes from (XWinograd)
    translates: frozenset[str] = frozenset()    # collections that may hold this translation's unfound original

    def must_not_see(self, demo: Item) -> bool:
        """Whether ``demo`` is this item, or may be its original: never one of its demonstrations."""
        return demo.key == self.key or demo.collection in self.translates


def default_data_dir() -> pathlib.Path:
    """``<repo>/../shared/data``: the shared evaluation data beside the repository (never copied into it)."""
    return pathlib.Path(__file__).resolve().parents[2].parent / "shared" / "data"


def _item(key: str, fields: Mapping[str, str], label: int, path: pathlib.Path, lineno: int,
          options: tuple[str, ...] = (), **origin) -> Item:
    return Item(key, dict(fields), label, options, f"{path}:{lineno}", **origin)


# --- PAWS-X ----------------------------------------------------------------------------------------------------------
_PAWSX_HEADER = ("id", "sentence1", "sentence2", "label")


def _pawsx_languages(root: pathlib.Path) -> list[str]:
    return sorted(p.name for p in (root / "pawsx" / "x-final").iterdir() if (p / "test_2k.tsv").is_file())


def _pawsx(root: pathlib.Path, lang: str, part: str) -> list[Item]:
    name = "test_2k" if part == "test" else "dev_2k"
    path = root / "pawsx" / "x-final" / lang / f"{name}.tsv"
    items = []
    for lineno, (uid, s1, s2, label) in read_tsv(path, 4, header=_PAWSX_HEADER):
        fields = {"sentence1": require_text(s1, path, lineno, "sentence1"),
                  "sentence2": require_text(s2, path, lineno, "sentence2")}
        gold = require_choice(label, ("1", "0"), path, lineno, "label")   # verbalizers are ordered (yes, no)
        items.append(_item(f"{name}:{uid}", fields, gold, path, lineno))
    return items


# --- XNLI ------------------------------------------------------------------------------------------------------------
def _xnli_languages(root: pathlib.Path) -> list[str]:
    return sorted(re.fullmatch(r"test-(\w+)\.tsv", p.name)[1]
                  for p in (root / "xnli" / "test_unlabeled_xtreme").glob("test-*.tsv"))


def _xnli_dev(root: pathlib.Path, lang: str) -> list[Item]:
    path = root / "xnli" / "dev" / f"dev-{lang}.tsv"
    return [_item(f"dev:{lineno}", {"premise": require_text(p, path, lineno, "premise"),
                                    "hypothesis": require_text(h, path, lineno, "hypothesis")},
                  require_choice(label, XNLI_LABELS, path, lineno, "label"), path, lineno)
            for lineno, (p, h, label) in read_tsv(path, 3)]


def _xnli_labelled(path: pathlib.Path) -> list[Item]:
    return [_item(f"test:{lineno}", {"premise": require_text(obj.get("premise"), path, lineno, "premise"),
                                     "hypothesis": require_text(obj.get("hypothesis"), path, lineno, "hypothesis")},
                  require_choice(obj.get("label"), (0, 1, 2), path, lineno, "label"), path, lineno)
            for lineno, obj in read_jsonl(path)]


def _xnli_test(root: pathlib.Path, lang: str) -> list[Item]:
    labelled = root / "xnli" / "test_labeled_hf" / lang / "test.jsonl"
    if labelled.is_file():
        return _xnli_labelled(labelled)
    # bg/el/ru/th: row i of the XTREME test file has the gold label of row i of the English test (xnli/SOURCE.md).
    english = _xnli_labelled(root / "xnli" / "test_labeled_hf" / "en" / "test.jsonl")
    path = root / "xnli" / "test_unlabeled_xtreme" / f"test-{lang}.tsv"
    items = []
    for lineno, (p, h) in read_tsv(path, 2):
        if lineno > len(english):
            raise SourceError(path, lineno, "<line>", f"more rows than the {len(english)} English labelled rows")
        items.append(_item(f"test:{lineno}", {"premise": require_text(p, path, lineno, "premise"),
                                              "hypothesis": require_text(h, path, lineno, "hypothesis")},
                           english[lineno - 1].label, path, lineno))
    if len(items) != len(english):
        raise SourceError(path, len(items), "<file>", f"{len(items)} rows but the English test has {len(english)}")
    return items


def _xnli(root: pathlib.Path, lang: str, part: str) -> list[Item]:
    return _xnli_test(root, lang) if part == "test" else _xnli_dev(root, lang)


# --- XCOPA (+ English COPA) ------------------------------------------------------------------------------------------
def _xcopa_languages(root: pathlib.Path) -> list[str]:
    found = [p.name for p in (root / "xcopa" / "data").iterdir() if (p / f"test.{p.name}.jsonl").is_file()]
    return sorted(found + (["en"] if (root / "xcopa" / "copa_en" / "test.jsonl").is_file() else []))


def _xcopa_path(root: pathlib.Path, lang: str, part: str) -> tuple[pathlib.Path, str]:
    if lang == "en":   # no English XCOPA val exists: COPA train serves as English dev set and demonstration pool
        return (root / "xcopa" / "copa_en" / "test.jsonl", "test") if part == "test" else \
            (root / "xcopa" / "copa_en" / "train.jsonl", "copa-train")
    name = "test" if part == "test" else "val"
    return root / "xcopa" / "data" / lang / f"{name}.{lang}.jsonl", name


def _xcopa(root: pathlib.Path, lang: str, part: str) -> list[Item]:
    path, name = _xcopa_path(root, lang, part)
    items = []
    for lineno, obj in read_jsonl(path):
        fields = {"premise": require_text(obj.get("premise"), path, lineno, "premise"),
                  "question": ("cause", "effect")[require_choice(obj.get("question"), ("cause", "effect"), path,
                                                                 lineno, "question")]}
        options = tuple(require_text(obj.get(f), path, lineno, f) for f in ("choice1", "choice2"))
        label = require_choice(obj.get("label"), (0, 1), path, lineno, "label")
        items.append(_item(f"{name}:{obj.get('idx', lineno)}", fields, label, path, lineno, options))
    return items


# --- XStoryCloze -----------------------------------------------------------------------------------------------------
_STORY_FILE = re.compile(r"spring2016\.val\.(\w+)\.tsv\.split_20_80_eval\.tsv")
_STORY_HEADER = ("InputStoryid", "InputSentence1", "InputSentence2", "InputSentence3", "InputSentence4",
                 "RandomFifthSentenceQuiz1", "RandomFifthSentenceQuiz2", "AnswerRightEnding")


def _xstorycloze_languages(root: pathlib.Path) -> list[str]:
    return sorted(m[1] for p in (root / "xstorycloze").iterdir() if (m := _STORY_FILE.fullmatch(p.name)))


def _xstorycloze(root: pathlib.Path, lang: str, part: str) -> list[Item]:
    path = root / "xstorycloze" / f"spring2016.val.{lang}.tsv.split_20_80_{'eval' if part == 'test' else 'train'}.tsv"
    items = []
    for lineno, row in read_tsv(path, 8, header=_STORY_HEADER):
        fields = {f"sentence{i}": require_text(row[i], path, lineno, _STORY_HEADER[i]) for i in range(1, 5)}
        options = tuple(require_text(row[i], path, lineno, _STORY_HEADER[i]) for i in (5, 6))
        label = require_choice(row[7], ("1", "2"), path, lineno, "AnswerRightEnding")
        items.append(_item(row[0], fields, label, path, lineno, options))
    return items


# --- XWinograd -------------------------------------------------------------------------------------------------------
def _xwinograd_rows(root: pathlib.Path) -> list[tuple[pathlib.Path, int, dict]]:
    path = root / "xwinograd" / "dataset.tsv"
    return [(path, lineno, row) for lineno, row in read_xwinograd(path)]


def _xwinograd_languages(root: pathlib.Path) -> list[str]:
    return sorted({row["language"] for _, _, row in _xwinograd_rows(root)})


def _xwinograd_key(row: dict, lang: str, lineno: int) -> str:
    if row["english"] is None:
        return f"{lang}:{lineno}"
    return "en:" + re.sub(r"\W+", " ", row["english"]).strip().casefold()


def _xwinograd_origin(key: str, row: dict, lang: str, english_keys: set[str]) -> dict:
    """An English row's collection; for a translation whose original is not an English row's text (none named,
    or reworded), the collections that original may be in."""
    if lang == "en":
        return {"collection": row["collection"]}
    return {} if key in english_keys else {"translates": WSC_COLLECTIONS}


def _xwinograd(root: pathlib.Path, lang: str, part: str) -> list[Item]:
    rows = _xwinograd_rows(root)
    english_keys = {_xwinograd_key(row, "en", lineno) for _, lineno, row in rows if row["language"] == "en"}
    items = []
    for path, lineno, row in rows:
        if row["language"] == lang:
            key = _xwinograd_key(row, lang, lineno)
            items.append(_item(key, {k: row[k] for k in ("sentence_part1", "sentence_part2")}, row["label"], path,
                               lineno, row["options"], **_xwinograd_origin(key, row, lang, english_keys)))
    return items


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    languages: Callable[[pathlib.Path], list[str]]
    load: Callable[[pathlib.Path, str, str], list[Item]]
    has_dev: bool = True        # a dev part disjoint from the test part (model selection)


TASKS: dict[str, TaskSpec] = {
    "xnli": TaskSpec(_xnli_languages, _xnli),
    "pawsx": TaskSpec(_pawsx_languages, _pawsx),
    "xcopa": TaskSpec(_xcopa_languages, _xcopa),
    "xstorycloze": TaskSpec(_xstorycloze_languages, _xstorycloze),
    "xwinograd": TaskSpec(_xwinograd_languages, _xwinograd, has_dev=False),
}


def _spec(task: str) -> TaskSpec:
    if task not in TASKS:
        raise KeyError(f"unknown task {task!r}; available: {sorted(TASKS)}")
    return TASKS[task]


def available_languages(task: str, data_dir: pathlib.Path | str | None = None) -> list[str]:
    """Every language whose files are present for ``task`` under ``data_dir``."""
    return _spec(task).languages(pathlib.Path(data_dir or default_data_dir()))


def parts(task: str) -> tuple[str, ...]:
    """The parts ``task`` has: all of ``PARTS``, or no ``dev`` (XWinograd)."""
    return PARTS if _spec(task).has_dev else tuple(p for p in PARTS if p != "dev")


def load_part(task: str, language: str, part: str, data_dir: pathlib.Path | str | None = None) -> list[Item]:
    """Items of one ``part`` ("test" | "dev" | "demo") of ``task`` in ``language``."""
    if part not in PARTS:
        raise ValueError(f"part {part!r}: expected one of {PARTS}")
    if part not in parts(task):
        raise ValueError(f"{task} has no {part} part: every row of its file is a test row, so it cannot select "
                         "models without selecting on the test set (AFP_SPEC §7.4)")
    root = pathlib.Path(data_dir or default_data_dir())
    languages = available_languages(task, root)
    if language not in languages:
        raise KeyError(f"{task} has no language {language!r} under {root}; available: {languages}")
    return _spec(task).load(root, language, part)

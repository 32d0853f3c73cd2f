"""Readers for the raw corpora the AFP builder draws from, with located errors and counted skips.

Instruction data (per language, aligned across languages by item id):
  * `bactrian`: Bactrian-X layout, `DIR/{lang}.json` = JSON list of `{id, instruction, input, output}`.
  * `alpaca`:   the shared/data/alpaca_en_zh layout, `DIR/{lang}/alpaca_data-<start>-<end>.{lang}.json` = JSON list of
                `{instruction, input, output}` without ids; the id is the Alpaca index = start + position. Position
                is only an id if the chunk is complete, so a file whose item count differs from `end - start` is
                rejected (see SOURCE.md: those chunks dropped or merged items and lose alignment). Only chunk
                15323-18280 is complete AND fully translated in both languages, hence the default `ALPACA_CLEAN_CHUNKS`.
  * `hf`:       a Hugging Face `datasets` object on local disk (a `save_to_disk` folder `DIR/{lang}`, or
                `DIR/{lang}.parquet` / `.json` / `.jsonl`), same columns; `id` is optional (row index otherwise).
  Explicit files may be given instead of a directory; their language is the last dot-field of the name
  (`en.json`, `alpaca_data-15323-18280.zh.json`, `sw.parquet`).

Parallel sentences (multi-way groups `{lang: text}` of translations):
  * `tsv:FILE` or `tsv:SRC-TGT:FILE`: two tab-separated columns per line (the reference's OPUS file); languages
    default to the first two requested languages.
  * `tatoeba:DIR`: `DIR/tatoeba.{xxx}-eng.{xxx,eng}`, line i of one translates line i of the other.
  * `flores:DIR` (alias `sib200:DIR`): `DIR/<flores_code>/<split>.tsv`, CSV-quoted, rows aligned by `index_id`.

Bad input raises SourceError(`{path}:{where}: {field}: {what}`), `where` being a line number or `item[i]`; with
`skip_bad` the item is dropped and counted in a DropLog instead.
"""
from __future__ import annotations

import collections
import csv
import dataclasses
import json
import os
import pathlib
import re
from typing import Any, Iterable, Iterator

from xalign_jax.data import languages as lang_codes
from xalign_jax.data.records import utf8_problem

INSTRUCTION_FORMATS = ("bactrian", "alpaca", "hf")
ALPACA_CLEAN_CHUNKS = ("15323-18280",)
PARALLEL_KINDS = ("tsv", "tatoeba", "flores", "sib200")
_ALPACA_NAME = re.compile(r"^alpaca_data-(\d+)-(\d+)\.")
_DATA_SUFFIXES = (".jsonl", ".json", ".parquet")

AlignedGroup = dict[str, str]  # language -> text; all texts of a group translate each other


class SourceError(ValueError):
    def __init__(self, path: str | os.PathLike, where: int | str, field: str, what: str, kind: str | None = None):
        super().__init__(f"{path}:{where}: {field}: {what}")
        self.field, self.what = field, what
        self.kind = kind or what  # without varying values: the key under which a skip is counted


@dataclasses.dataclass
class DropLog:
    """Everything the builder left out, counted by reason, with the first concrete message of each reason."""
    counts: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    examples: dict[str, str] = dataclasses.field(default_factory=dict)

    def add(self, reason: str, example: str = "", count: int = 1) -> None:
        if count:
            self.counts[reason] += count
            self.examples.setdefault(reason, example)

    def skip_or_raise(self, error: SourceError, skip_bad: bool) -> None:
        if not skip_bad:
            raise error
        self.add(f"bad input ({error.field}: {error.kind})", str(error))

    def merge(self, other: "DropLog") -> None:
        for reason, count in other.counts.items():
            self.add(reason, other.examples.get(reason, ""), count)


@dataclasses.dataclass(frozen=True)
class InstructionItem:
    id: str
    instruction: str
    input: str
    output: str


# ------------------------------------------------------------------------------------------- instruction data


def _file_language(path: pathlib.Path) -> str:
    name = path.name
    for suffix in _DATA_SUFFIXES:
        name = name.removesuffix(suffix)
    return name.rsplit(".", 1)[-1]


def _load_json_array(path: pathlib.Path) -> list:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise SourceError(path, error.lineno, "<json>", f"invalid JSON ({error.msg})") from None
    except UnicodeDecodeError as error:
        raise SourceError(path, f"byte {error.start}", "<json>", "invalid UTF-8") from None
    if not isinstance(data, list):
        raise SourceError(path, 0, "<json>", f"expected a JSON list of items, got {type(data).__name__}")
    return data


def _text_field(obj: dict, field: str, path, where, *, optional: bool) -> str:
    """The field's text without edge whitespace (templates add exactly one space between fields)."""
    value = obj.get(field)
    if value is None:
        if optional:
            return ""
        raise SourceError(path, where, field, "missing or null field", "missing field")
    if not isinstance(value, str):
        raise SourceError(path, where, field, f"expected a string, got {type(value).__name__}", "wrong type")
    if not optional and not value.strip():
        raise SourceError(path, where, field, "empty string")
    problem = utf8_problem(value)
    if problem:
        raise SourceError(path, where, field, problem, "invalid text")
    return value.strip()


def _item_id(obj: dict, path, where, default: Any) -> str:
    value = obj.get("id", default)
    if value is None or isinstance(value, bool) or not isinstance(value, (str, int)) or str(value) == "":
        raise SourceError(path, where, "id", f"expected a non-empty string or integer, got {value!r}", "bad id")
    return str(value)


def _make_item(obj: Any, path, where, default_id: Any) -> InstructionItem:
    if not isinstance(obj, dict):
        raise SourceError(path, where, "<item>", f"expected an object, got {type(obj).__name__}", "not an object")
    return InstructionItem(id=_item_id(obj, path, where, default_id),
                           instruction=_text_field(obj, "instruction", path, where, optional=False),
                           input=_text_field(obj, "input", path, where, optional=True),
                           output=_text_field(obj, "output", path, where, optional=False))


def _alpaca_start(path: pathlib.Path, count: int) -> int:
    match = _ALPACA_NAME.match(path.name)
    if not match:
        raise SourceError(path, 0, "<file>", "Alpaca file names must be alpaca_data-<start>-<end>.<lang>.json "
                          "(the id of item i is start + i)", "bad Alpaca file name")
    start, end = int(match[1]), int(match[2])
    if count != end - start:
        raise SourceError(path, 0, "<file>", f"{count} items for Alpaca indices {start}-{end} ({end - start}): "
                          "items were dropped or merged, so positions are not ids", "incomplete Alpaca chunk")
    return start


def _hf_rows(path: pathlib.Path) -> list[dict]:
    import datasets  # heavy import, only for this format

    if path.is_dir():
        data = datasets.load_from_disk(str(path))
        if isinstance(data, datasets.DatasetDict):
            if "train" not in data:
                raise SourceError(path, 0, "<split>", f"DatasetDict has no 'train' split (splits: {list(data)})")
            data = data["train"]
    elif path.suffix == ".parquet":
        data = datasets.Dataset.from_parquet(str(path))
    else:
        data = datasets.Dataset.from_json(str(path))
    return data.to_list()


def _raw_items(path: pathlib.Path, fmt: str) -> tuple[list, int | None]:
    """The items of one file and the id of its first item when ids are positional (None: ids in the items)."""
    if fmt == "hf":
        try:
            return _hf_rows(path), 0
        except SourceError:
            raise
        except Exception as error:  # datasets raises many types; the user needs the file name either way
            raise SourceError(path, 0, "<dataset>", f"cannot be read by datasets ({type(error).__name__}: "
                              f"{error})", "unreadable dataset") from error
    items = _load_json_array(path)
    return items, (_alpaca_start(path, len(items)) if fmt == "alpaca" else None)


def read_instruction_file(path: str | os.PathLike, fmt: str, drops: DropLog, *,
                          skip_bad: bool = False) -> dict[str, InstructionItem]:
    """Items of one language file, keyed by id in file order."""
    path = pathlib.Path(path)
    if not path.exists():
        raise FileNotFoundError(f"instruction file not found: {path}")
    try:
        raw, first_id = _raw_items(path, fmt)
    except SourceError as error:
        drops.skip_or_raise(error, skip_bad)
        return {}
    items: dict[str, InstructionItem] = {}
    for index, obj in enumerate(raw):
        where = f"item[{index}]"
        try:
            item = _make_item(obj, path, where, None if first_id is None else first_id + index)
            if item.id in items:
                raise SourceError(path, where, "id", f"duplicate id {item.id!r}", "duplicate id")
            items[item.id] = item
        except SourceError as error:
            drops.skip_or_raise(error, skip_bad)
    return items


def _directory_files(directory: pathlib.Path, lang: str, fmt: str, alpaca_chunks: Iterable[str]) -> list[pathlib.Path]:
    if fmt == "alpaca":
        return [directory / lang / f"alpaca_data-{chunk}.{lang}.json" for chunk in alpaca_chunks]
    if fmt == "bactrian":
        return [directory / f"{lang}.json"]
    candidates = [directory / lang] + [directory / f"{lang}{suffix}" for suffix in (".parquet", ".jsonl", ".json")]
    found = [path for path in candidates if path.exists()]
    if not found:
        raise FileNotFoundError(f"no Hugging Face dataset for {lang!r} in {directory} (tried {lang}/, "
                                f"{lang}.parquet, {lang}.jsonl, {lang}.json)")
    return found[:1]


def _is_saved_dataset(path: pathlib.Path) -> bool:
    """A `datasets` save_to_disk folder (one language), as opposed to a directory of language files."""
    return (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()


def instruction_files(paths: Iterable[str | os.PathLike], languages: Iterable[str], fmt: str,
                      alpaca_chunks: Iterable[str] = ALPACA_CLEAN_CHUNKS) -> dict[str, list[pathlib.Path]]:
    """Which files hold each requested language: directories are expanded by layout, files by their name."""
    languages = list(languages)
    files: dict[str, list[pathlib.Path]] = {lang: [] for lang in languages}
    for path in map(pathlib.Path, paths):
        if path.is_dir() and not _is_saved_dataset(path):
            for lang in languages:
                files[lang] += _directory_files(path, lang, fmt, alpaca_chunks)
            continue
        lang = _file_language(path)
        if lang not in files:
            raise ValueError(f"{path}: file name says language {lang!r}, which is not among {languages}")
        files[lang].append(path)
    missing = [lang for lang, found in files.items() if not found]
    if missing:
        raise ValueError(f"no instruction file for language(s) {missing} among {[str(p) for p in paths]}")
    return files


def load_instructions(paths: Iterable[str | os.PathLike], languages: Iterable[str], fmt: str, drops: DropLog, *,
                      alpaca_chunks: Iterable[str] = ALPACA_CLEAN_CHUNKS,
                      skip_bad: bool = False) -> dict[str, dict[str, InstructionItem]]:
    """Items of every requested language, keyed by id (ids unique across the files of one language)."""
    if fmt not in INSTRUCTION_FORMATS:
        raise ValueError(f"instruction format {fmt!r} is not one of {INSTRUCTION_FORMATS}")
    by_lang = {}
    for lang, files in instruction_files(paths, languages, fmt, alpaca_chunks).items():
        merged: dict[str, InstructionItem] = {}
        for path in files:
            for item_id, item in read_instruction_file(path, fmt, drops, skip_bad=skip_bad).items():
                if item_id in merged:
                    drops.skip_or_raise(SourceError(path, f"id {item_id}", "id", "id already read from another "
                                                    f"{lang} file", "duplicate id"), skip_bad)
                    continue
                merged[item_id] = item
        by_lang[lang] = merged
    return by_lang


# ------------------------------------------------------------------------------------------- parallel data


@dataclasses.dataclass(frozen=True)
class ParallelSpec:
    kind: str
    path: pathlib.Path
    languages: tuple[str, ...] = ()  # tsv column languages, when given in the spec

    @classmethod
    def parse(cls, text: str) -> "ParallelSpec":
        kind, sep, rest = text.partition(":")
        if not sep or kind not in PARALLEL_KINDS:
            raise ValueError(f"parallel source {text!r}: expected KIND:PATH with KIND in {PARALLEL_KINDS}")
        pair = re.match(r"^([a-z]{2,3})-([a-z]{2,3}):(.+)$", rest) if kind == "tsv" else None
        if pair:
            return cls(kind, pathlib.Path(pair[3]), (pair[1], pair[2]))
        return cls("flores" if kind == "sib200" else kind, pathlib.Path(rest))


def _text_lines(path: pathlib.Path) -> list[str]:
    if not path.is_file():
        raise FileNotFoundError(f"parallel file not found: {path}")
    with open(path, encoding="utf-8") as handle:
        return [line.rstrip("\r\n") for line in handle]


def _check_sentence(text: str, path, lineno: int, field: str) -> str:
    if not text.strip():
        raise SourceError(path, lineno, field, "empty sentence")
    return text.strip()


def read_tsv_pairs(path: pathlib.Path, src: str, tgt: str, drops: DropLog, *, skip_bad: bool) -> list[AlignedGroup]:
    groups = []
    for lineno, line in enumerate(_text_lines(path), start=1):
        try:
            columns = line.split("\t")
            if len(columns) != 2:
                raise SourceError(path, lineno, "columns", f"expected 2 tab-separated columns, got {len(columns)}",
                                  "wrong column count")
            groups.append({src: _check_sentence(columns[0], path, lineno, src),
                           tgt: _check_sentence(columns[1], path, lineno, tgt)})
        except SourceError as error:
            drops.skip_or_raise(error, skip_bad)
    return groups


def read_tatoeba(directory: pathlib.Path, languages: Iterable[str], drops: DropLog, *,
                 skip_bad: bool) -> list[AlignedGroup]:
    """xxx-eng pairs for every requested non-English language; English must be requested too."""
    languages = list(languages)
    if "en" not in languages:
        raise ValueError(f"Tatoeba pairs every language with English; 'en' is not among {languages}")
    groups = []
    for lang in (lang for lang in languages if lang != "en"):
        code = lang_codes.tatoeba_code(lang)
        xxx_path, eng_path = (directory / f"tatoeba.{code}-eng.{suffix}" for suffix in (code, "eng"))
        xxx_lines, eng_lines = _text_lines(xxx_path), _text_lines(eng_path)
        if len(xxx_lines) != len(eng_lines):
            drops.skip_or_raise(SourceError(xxx_path, len(xxx_lines), "<file>", f"{len(xxx_lines)} lines but "
                                            f"{eng_path.name} has {len(eng_lines)}: the files are not line-aligned",
                                            "files not line-aligned"), skip_bad)
            continue
        for lineno, (xxx, eng) in enumerate(zip(xxx_lines, eng_lines), start=1):
            try:
                groups.append({lang: _check_sentence(xxx, xxx_path, lineno, lang),
                               "en": _check_sentence(eng, eng_path, lineno, "en")})
            except SourceError as error:
                drops.skip_or_raise(error, skip_bad)
    return groups


def _flores_rows(path: pathlib.Path) -> Iterator[tuple[int, list[str]]]:
    if not path.is_file():
        raise FileNotFoundError(f"FLORES/SIB-200 file not found: {path}")
    with open(path, encoding="utf-8", newline="") as handle:
        rows = csv.reader(handle, delimiter="\t")
        header = next(rows, None)
        if header != ["index_id", "category", "text"]:
            raise SourceError(path, 1, "<header>", f"expected index_id, category, text; got {header}", "bad header")
        yield from enumerate(rows, start=2)


def _flores_texts(path: pathlib.Path, drops: DropLog, *, skip_bad: bool) -> dict[str, str]:
    texts: dict[str, str] = {}
    for lineno, row in _flores_rows(path):
        try:
            if len(row) != 3 or not row[0].strip().isdigit():
                raise SourceError(path, lineno, "index_id", f"expected 3 columns starting with an index, got {row}",
                                  "malformed row")
            if row[0] in texts:
                raise SourceError(path, lineno, "index_id", f"duplicate index_id {row[0]}", "duplicate index_id")
            texts[row[0]] = _check_sentence(row[2], path, lineno, "text")
        except SourceError as error:
            drops.skip_or_raise(error, skip_bad)
    return texts


def read_flores(directory: pathlib.Path, languages: Iterable[str], splits: Iterable[str], drops: DropLog, *,
                skip_bad: bool) -> list[AlignedGroup]:
    """Multi-way groups over the requested languages, joined on index_id (the FLORES sentence number)."""
    groups: dict[str, AlignedGroup] = {}
    for split in splits:
        for lang in languages:
            path = directory / lang_codes.flores_code(lang) / f"{split}.tsv"
            for index_id, text in _flores_texts(path, drops, skip_bad=skip_bad).items():
                groups.setdefault(f"{split}:{index_id}", {})[lang] = text
    return list(groups.values())


def read_parallel(spec: ParallelSpec, languages: Iterable[str], drops: DropLog, *,
                  flores_splits: Iterable[str] = ("train",), skip_bad: bool = False) -> list[AlignedGroup]:
    languages = list(languages)
    if spec.kind == "tsv":
        src, tgt = spec.languages or tuple(languages[:2])
        return read_tsv_pairs(spec.path, src, tgt, drops, skip_bad=skip_bad)
    if spec.kind == "tatoeba":
        return read_tatoeba(spec.path, languages, drops, skip_bad=skip_bad)
    return read_flores(spec.path, languages, flores_splits, drops, skip_bad=skip_bad)

"""The AFP training record: schema, strict validation with file:line:field errors, atomic JSON-lines I/O.

One record feeds both objectives of a training step (AFP_SPEC §2.3): `sent0`/`sent1` are a translation pair for
the contrastive loss, `clm_text` is a cross-lingual instruction sample for the causal-LM loss, and
`clm_prompt_len` is the length in CHARACTERS of its prompt (the answer, `clm_text[clm_prompt_len:]`, is the only
supervised part). Optional language tags let the trainer and the data summary see directions without guessing.

Validation is strict on purpose: a silently mis-typed prompt length would mask the wrong tokens for a whole run.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import os
import pathlib
import tempfile
from typing import Any, Iterable

TEXT_FIELDS = ("sent0", "sent1", "clm_text")
LANG_TAGS = ("sent0_lang", "sent1_lang", "src_lang", "tgt_lang")
REQUIRED_FIELDS = TEXT_FIELDS + ("clm_prompt_len",)
KNOWN_FIELDS = REQUIRED_FIELDS + LANG_TAGS


class RecordError(ValueError):
    """A malformed record; the message is `{path}:{lineno}: {field}: {what is wrong}`."""

    def __init__(self, path: str | os.PathLike, lineno: int, field: str, what: str, kind: str | None = None):
        super().__init__(f"{path}:{lineno}: {field}: {what}")
        self.path, self.lineno, self.field, self.what = str(path), lineno, field, what
        self.kind = kind or what  # the problem without its varying values: the key of skip counts


@dataclasses.dataclass(frozen=True)
class AFPRecord:
    sent0: str
    sent1: str
    clm_text: str
    clm_prompt_len: int
    sent0_lang: str | None = None
    sent1_lang: str | None = None
    src_lang: str | None = None
    tgt_lang: str | None = None
    source: str | None = dataclasses.field(default=None, compare=False)   # "FILE:LINE" it was read from

    @property
    def prompt(self) -> str:
        return self.clm_text[:self.clm_prompt_len]

    @property
    def answer(self) -> str:
        return self.clm_text[self.clm_prompt_len:]

    def to_json(self) -> dict[str, Any]:
        """The JSON object written to disk; absent language tags are omitted, not written as null."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None and k != "source"}


@dataclasses.dataclass
class ReadReport:
    """What `read_records` saw: every line is either a record, a blank line, or a counted skip."""
    path: str
    records: int = 0
    blank_lines: int = 0
    skipped: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    first_errors: list[str] = dataclasses.field(default_factory=list)

    def __str__(self) -> str:
        text = f"{self.path}: {self.records} records, {self.blank_lines} blank lines"
        if self.skipped:
            reasons = ", ".join(f"{n} x {reason}" for reason, n in sorted(self.skipped.items()))
            text += f", skipped {sum(self.skipped.values())} bad lines ({reasons}); first: {self.first_errors}"
        return text


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _fail(path, lineno: int, field: str, what: str, kind: str | None = None):
    raise RecordError(path, lineno, field, what, kind)


def utf8_problem(text: str) -> str | None:
    """Why ``text`` is not valid Unicode text, or None. JSON can spell a lone surrogate ("\\ud800"), which decodes
    to a str that no tokenizer or UTF-8 writer accepts; caught here, the error can still name the line and field."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        return f"lone surrogate {text[error.start]!r} at character {error.start} (not valid Unicode text)"
    return None


def _check_text(obj: dict, field: str, path, lineno: int) -> str:
    value = obj[field]
    if not isinstance(value, str):
        _fail(path, lineno, field, f"expected a string, got {_type_name(value)}", "wrong type")
    if not value.strip():
        _fail(path, lineno, field, "empty string")
    problem = utf8_problem(value)
    if problem:
        _fail(path, lineno, field, problem, "invalid text")
    return value


def _check_prompt_len(obj: dict, text: str, path, lineno: int) -> int:
    value = obj["clm_prompt_len"]
    if isinstance(value, bool) or not isinstance(value, int):
        _fail(path, lineno, "clm_prompt_len", f"expected an integer, got {_type_name(value)}", "wrong type")
    if not 0 <= value <= len(text):
        _fail(path, lineno, "clm_prompt_len", f"{value} is out of range 0..{len(text)} (len(clm_text))",
              "out of range")
    if not text[value:].strip():
        _fail(path, lineno, "clm_prompt_len", f"the answer clm_text[{value}:] = {text[value:]!r} is empty or only "
              "whitespace", "no answer")
    return value


def _check_lang_tag(obj: dict, field: str, path, lineno: int) -> str | None:
    value = obj.get(field)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        _fail(path, lineno, field, f"expected a non-empty language code string, got {value!r}", "wrong type")
    return value


def validate_record(obj: Any, path: str | os.PathLike = "<record>", lineno: int = 0) -> AFPRecord:
    """Check one decoded JSON value against the AFP schema; raise RecordError naming the first bad field."""
    if not isinstance(obj, dict):
        _fail(path, lineno, "<json>", f"expected a JSON object, got {_type_name(obj)}", "not an object")
    for field in REQUIRED_FIELDS:
        if field not in obj:
            _fail(path, lineno, field, "missing field")
    unknown = sorted(set(obj) - set(KNOWN_FIELDS))
    if unknown:
        _fail(path, lineno, unknown[0], f"unexpected field (known fields: {', '.join(KNOWN_FIELDS)})",
              "unexpected field")
    texts = {field: _check_text(obj, field, path, lineno) for field in TEXT_FIELDS}
    prompt_len = _check_prompt_len(obj, texts["clm_text"], path, lineno)
    tags = {field: _check_lang_tag(obj, field, path, lineno) for field in LANG_TAGS}
    return AFPRecord(**texts, clm_prompt_len=prompt_len, **tags, source=f"{path}:{lineno}")


def _decode_line(raw: bytes, path, lineno: int) -> Any:
    try:
        text = raw.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError as error:
        _fail(path, lineno, "<json>", f"invalid UTF-8 ({error.reason} at byte {error.start})", "invalid UTF-8")
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        _fail(path, lineno, "<json>", f"invalid JSON ({error.msg} at column {error.colno})", "invalid JSON")


def read_records(path: str | os.PathLike, *, skip_bad: bool = False) -> tuple[list[AFPRecord], ReadReport]:
    """Read and validate an AFP JSON-lines file.

    A bad line raises RecordError, unless `skip_bad`: then it is counted per reason in the report (and the first
    few messages kept) so that a dataset with a handful of broken lines can still be used knowingly.
    """
    path = pathlib.Path(path)
    records, report = [], ReadReport(str(path))
    with open(path, "rb") as handle:
        for lineno, raw in enumerate(handle, start=1):
            if not raw.strip():
                report.blank_lines += 1
                continue
            try:
                records.append(validate_record(_decode_line(raw, path, lineno), path, lineno))
            except RecordError as error:
                if not skip_bad:
                    raise
                report.skipped[f"{error.field}: {error.kind}"] += 1
                if len(report.first_errors) < 5:
                    report.first_errors.append(str(error))
    report.records = len(records)
    if not records:
        raise RecordError(path, 0, "<file>", f"no valid records ({report})")
    return records, report


def write_records(path: str | os.PathLike, records: Iterable[AFPRecord]) -> int:
    """Write records as JSON lines (UTF-8, not ASCII-escaped) atomically: a reader never sees a partial file."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            for record in records:
                handle.write(json.dumps(record.to_json(), ensure_ascii=False) + "\n")
                count += 1
        os.replace(tmp_name, path)
    except BaseException:
        pathlib.Path(tmp_name).unlink(missing_ok=True)
        raise
    return count

"""Line readers for the evaluation files: TSV and JSON Lines with errors that name file, line and field.

Every reader yields ``(line_number, row)``; the task loaders turn rows into items and raise ``SourceError`` (the
project's located-input error) for anything they cannot use, so nothing is dropped silently.
"""
from __future__ import annotations

import csv
import json
import pathlib
from typing import Any, Iterator, Sequence

from xalign_jax.data.sources import SourceError

__all__ = ["SourceError", "read_tsv", "read_jsonl", "require_text", "require_choice"]


def _open(path: pathlib.Path):
    if not path.is_file():
        raise FileNotFoundError(f"evaluation file not found: {path}")
    return open(path, encoding="utf-8", newline="")


def read_tsv(path: pathlib.Path, columns: int, *, header: Sequence[str] | None = None,
             quoted: bool = False) -> Iterator[tuple[int, list[str]]]:
    """Rows of exactly ``columns`` tab-separated fields; ``header`` (if given) must be line 1 verbatim.

    ``quoted=False`` splits on tabs only (the XNLI/PAWS-X/XStoryCloze files contain bare ``"`` characters that a CSV
    reader would take for quoting).
    """
    with _open(path) as handle:
        lines = csv.reader(handle, delimiter="\t") if quoted else (line.rstrip("\r\n").split("\t") for line in handle)
        for lineno, row in enumerate(lines, start=1):
            if lineno == 1 and header is not None:
                if list(row) != list(header):
                    raise SourceError(path, 1, "<header>", f"expected columns {list(header)}, got {row}")
                continue
            if row == [""] or not row:
                raise SourceError(path, lineno, "<line>", "empty line")
            if len(row) != columns:
                raise SourceError(path, lineno, "<columns>", f"expected {columns} tab-separated columns, "
                                                             f"got {len(row)}")
            yield lineno, row


def read_jsonl(path: pathlib.Path) -> Iterator[tuple[int, dict]]:
    """One JSON object per line."""
    with _open(path) as handle:
        for lineno, line in enumerate(handle, start=1):
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as error:
                message = f"invalid JSON ({error.msg} at column {error.colno})"
                raise SourceError(path, lineno, "<json>", message) from error
            if not isinstance(obj, dict):
                raise SourceError(path, lineno, "<json>", f"expected a JSON object, got {type(obj).__name__}")
            yield lineno, obj


def require_text(value: Any, path: pathlib.Path, lineno: int, field: str) -> str:
    """A non-empty string field (leading/trailing spaces kept: templates concatenate fields verbatim)."""
    if not isinstance(value, str):
        what = "missing" if value is None else f"expected a string, got {type(value).__name__}"
        raise SourceError(path, lineno, field, what)
    if not value.strip():
        raise SourceError(path, lineno, field, "empty text")
    return value


def require_choice(value: Any, allowed: Sequence[Any], path: pathlib.Path, lineno: int, field: str) -> int:
    """Index of ``value`` in ``allowed``; a located error listing the allowed values otherwise."""
    if value not in allowed or isinstance(value, bool):
        raise SourceError(path, lineno, field, f"expected one of {list(allowed)}, got {value!r}")
    return list(allowed).index(value)

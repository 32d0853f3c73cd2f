"""AFP record schema: round trip, and the exact error text for every kind of malformed line."""
import json

import pytest

from xalign_jax.data.records import AFPRecord, RecordError, read_records, validate_record, write_records

GOOD = {"sent0": "Hello.", "sent1": "你好。", "clm_text": "Say hi. Answer in Chinese: 你好", "clm_prompt_len": 27}


def write_lines(path, lines):
    path.write_bytes(b"".join((line if isinstance(line, bytes) else line.encode()) + b"\n" for line in lines))
    return path


def test_round_trip_keeps_unicode_tags_and_is_atomic(tmp_path):
    records = [AFPRecord(**GOOD, sent0_lang="en", sent1_lang="zh", src_lang="en", tgt_lang="zh"), AFPRecord(**GOOD)]
    path = tmp_path / "out" / "train.jsonl"
    assert write_records(path, records) == 2
    raw = path.read_text(encoding="utf-8")
    assert "你好" in raw and "\\u" not in raw  # ensure_ascii=False
    assert json.loads(raw.splitlines()[1]) == GOOD  # absent tags are omitted, not null
    assert sorted(p.name for p in path.parent.iterdir()) == ["train.jsonl"]  # no temp file left behind
    read, report = read_records(path)
    assert read == records and report.records == 2 and not report.skipped
    assert [r.source for r in read] == [f"{path}:1", f"{path}:2"]        # where each came from, never written
    assert read[0].prompt == "Say hi. Answer in Chinese: " and read[0].answer == "你好"


def test_failed_write_leaves_previous_file_untouched(tmp_path):
    path = tmp_path / "train.jsonl"
    write_records(path, [AFPRecord(**GOOD)])
    before = path.read_bytes()

    def broken():
        yield AFPRecord(**GOOD)
        raise RuntimeError("disk full")
    with pytest.raises(RuntimeError):
        write_records(path, broken())
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["train.jsonl"]


BAD_LINES = [
    ('{"sent0": "a",', "<json>: invalid JSON (Expecting property name enclosed in double quotes at column 15)"),
    (b'{"sent0": "\xff"}', "<json>: invalid UTF-8 (invalid start byte at byte 11)"),
    ("[1, 2]", "<json>: expected a JSON object, got list"),
    (json.dumps({k: v for k, v in GOOD.items() if k != "sent1"}), "sent1: missing field"),
    (json.dumps({**GOOD, "sent0": 3}), "sent0: expected a string, got int"),
    (json.dumps({**GOOD, "clm_text": None}), "clm_text: expected a string, got null"),
    (json.dumps({**GOOD, "sent1": " \t"}), "sent1: empty string"),
    (json.dumps({**GOOD, "clm_prompt_len": "27"}), "clm_prompt_len: expected an integer, got str"),
    (json.dumps({**GOOD, "clm_prompt_len": True}), "clm_prompt_len: expected an integer, got bool"),
    (json.dumps({**GOOD, "clm_prompt_len": -1}), "clm_prompt_len: -1 is out of range 0..29 (len(clm_text))"),
    (json.dumps({**GOOD, "clm_prompt_len": 30}), "clm_prompt_len: 30 is out of range 0..29 (len(clm_text))"),
    (json.dumps({**GOOD, "clm_prompt_len": 29}), "clm_prompt_len: the answer clm_text[29:] = '' is empty or only "
     "whitespace"),
    (json.dumps({**GOOD, "clm_text": "Say hi. Answer in Chinese:   ", "clm_prompt_len": 26}),
     "clm_prompt_len: the answer clm_text[26:] = '   ' is empty or only whitespace"),
    (json.dumps({**GOOD, "sent0": "Hi \ud800"}), "sent0: lone surrogate '\\ud800' at character 3 (not valid Unicode "
     "text)"),
    (json.dumps({**GOOD, "src_lang": 5}), "src_lang: expected a non-empty language code string, got 5"),
    (json.dumps({**GOOD, "tgt_lang": ""}), "tgt_lang: expected a non-empty language code string, got ''"),
    (json.dumps({**GOOD, "sent0_lnag": "en"}),
     "sent0_lnag: unexpected field (known fields: sent0, sent1, clm_text, clm_prompt_len, sent0_lang, sent1_lang, "
     "src_lang, tgt_lang)"),
]


@pytest.mark.parametrize("line,message", BAD_LINES)
def test_each_malformed_line_names_file_line_and_field(tmp_path, line, message):
    path = write_lines(tmp_path / "train.jsonl", [json.dumps(GOOD), "", line])
    with pytest.raises(RecordError) as error:
        read_records(path)
    assert str(error.value) == f"{path}:3: {message}"


def test_validate_record_alone_uses_given_location():
    with pytest.raises(RecordError, match=r"^x\.jsonl:7: clm_prompt_len: expected an integer, got float$"):
        validate_record({**GOOD, "clm_prompt_len": 2.0}, "x.jsonl", 7)
    assert validate_record(GOOD) == AFPRecord(**GOOD)


def test_skip_bad_counts_every_bad_line_by_reason(tmp_path):
    lines = [json.dumps(GOOD)] + [line for line, _ in BAD_LINES] + ["   ", json.dumps(GOOD)]
    path = write_lines(tmp_path / "train.jsonl", lines)
    records, report = read_records(path, skip_bad=True)
    assert len(records) == 2 and report.records == 2 and report.blank_lines == 1
    assert sum(report.skipped.values()) == len(BAD_LINES)
    assert report.skipped == {
        "<json>: invalid JSON": 1, "<json>: invalid UTF-8": 1, "<json>: not an object": 1,
        "sent1: missing field": 1, "sent0: wrong type": 1, "clm_text: wrong type": 1, "sent1: empty string": 1,
        "clm_prompt_len: wrong type": 2, "clm_prompt_len: out of range": 2, "clm_prompt_len: no answer": 2,
        "sent0: invalid text": 1, "src_lang: wrong type": 1, "tgt_lang: wrong type": 1,
        "sent0_lnag: unexpected field": 1}
    assert report.first_errors[0] == f"{path}:2: " + BAD_LINES[0][1]
    assert f"skipped {len(BAD_LINES)} bad lines" in str(report)


def test_file_without_any_valid_record_is_an_error(tmp_path):
    path = write_lines(tmp_path / "train.jsonl", ["[]", ""])
    with pytest.raises(RecordError, match=r"^.*train\.jsonl:0: <file>: no valid records"):
        read_records(path, skip_bad=True)

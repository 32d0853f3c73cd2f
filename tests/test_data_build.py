"""AFP training-set builder on the real shared corpora and on small fixtures written here.

Real data: shared/data/alpaca_en_zh (clean chunk), sib200_flores, tatoeba and the evaluation test sets.
Fixtures: Bactrian-X layout files whose texts name their language and id ("[zh] task 7"), so that alignment and
the language of every part of a record can be read back from the record itself.
"""
import collections
import csv
import dataclasses
import json
import math
import random

import pytest

from xalign_jax.data import build, heldout, languages, recipes, sources
from xalign_jax.data.records import read_records

ALPACA_FILE = "alpaca_en_zh/{lang}/alpaca_data-15323-18280.{lang}.json"


# ----------------------------------------------------------------------------------------------- helpers

def assert_binomial(count, n, p, sigmas=4.0):
    assert abs(count - n * p) <= sigmas * math.sqrt(n * p * (1 - p)), (count, n, p)


def alpaca_config(shared_data, **overrides):
    values = dict(mode="bilingual", languages=("en", "zh"), instructions=(str(shared_data / "alpaca_en_zh"),),
                  instruction_format="alpaca", data_dir=str(shared_data))
    return build.BuildConfig(**{**values, **overrides})


def write_bactrian(directory, langs=("en", "zh", "sw"), n=60, missing=None, seed=0):
    """`{lang}.json` files in shuffled id order; `missing` = {lang: [ids left out]}."""
    directory.mkdir(parents=True, exist_ok=True)
    rows_by_lang = {}
    for lang in langs:
        rows = [{"id": str(i), "instruction": f"[{lang}] task {i}", "input": f"[{lang}] input {i}" if i % 3 else "",
                 "output": f"[{lang}] answer {i}"} for i in range(n) if str(i) not in (missing or {}).get(lang, ())]
        random.Random(f"{seed}{lang}").shuffle(rows)
        (directory / f"{lang}.json").write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
        rows_by_lang[lang] = rows
    return rows_by_lang


def fixture_config(directory, shared_data, langs=("en", "zh", "sw"), **overrides):
    mode = "bilingual" if len(langs) == 2 else "multilingual"
    values = dict(mode=mode, languages=tuple(langs), instructions=(str(directory),), data_dir=str(shared_data))
    return build.BuildConfig(**{**values, **overrides})


def tag(text):
    """('zh', '7') from '[zh] task 7'."""
    lang, rest = text[1:].split("] ", 1)
    return lang, rest.rsplit(" ", 1)[-1]


def alpaca_items(shared_data):
    return {lang: json.loads((shared_data / ALPACA_FILE.format(lang=lang)).read_text(encoding="utf-8"))
            for lang in ("en", "zh")}


# ----------------------------------------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def alpaca_build(shared_data):
    return build.build_records(alpaca_config(shared_data, num_records=8000, seed=3))


RECONSTRUCT = "Reconstruct the given sentence by rearranging the words in alphabetical order."
ANTONYM = 'Create an antonym for the word "Early". Output the antonym.'
EXPECTED_CIF = {  # Alpaca index -> every clm_text it can give (source language x target language)
    15324: {f"{RECONSTRUCT} Hello how are you today Answer in English: Today you are how hello.",
            f"{RECONSTRUCT} Hello how are you today Answer in Chinese: 今天你好好吗。",
            "按照字母顺序重新排列给定的句子中的单词 你好你今天好吗。 Answer in Chinese: 今天你好好吗。",
            "按照字母顺序重新排列给定的句子中的单词 你好你今天好吗。 Answer in English: Today you are how hello."},
    15401: {"Name a disaster movie. Output the title of the movie. Answer in English: The Day After Tomorrow",
            "Name a disaster movie. Output the title of the movie. Answer in Chinese: 后天",
            "说出一部灾难片。输出电影的标题。 Answer in Chinese: 后天",
            "说出一部灾难片。输出电影的标题。 Answer in English: The Day After Tomorrow"},
    15405: {f"{ANTONYM} Answer in English: Late", f"{ANTONYM} Answer in Chinese: 晚的",
            "为“早期的”一词创建一个反义词。输出反义词。 Answer in Chinese: 晚的",
            "为“早期的”一词创建一个反义词。输出反义词。 Answer in English: Late"},
}


def prompt_head(record):
    """The instruction (and input) part of a CIF prompt."""
    return record.prompt.rsplit(" Answer in ", 1)[0]


def test_alpaca_records_have_the_exact_reference_templates(alpaca_build):
    records, _ = alpaca_build
    heads = {text.split(" Answer in ")[0]: index for index, texts in EXPECTED_CIF.items() for text in texts}
    seen = collections.Counter()
    for record in records:
        index = heads.get(prompt_head(record))
        if index is not None:
            assert record.clm_text in EXPECTED_CIF[index]
            assert record.prompt + record.answer == record.clm_text and record.prompt.endswith(": ")
            assert record.answer == record.clm_text.rsplit(": ", 1)[1]
            seen[index] += 1
    # 8000 records over 2943 items: every item is used at least twice
    assert set(seen) == set(EXPECTED_CIF) and min(seen.values()) >= 2


def test_alpaca_records_align_prompt_and_answer_by_id_with_correct_prompt_len(shared_data, alpaca_build):
    records, summary = alpaca_build
    items = alpaca_items(shared_data)
    heads = collections.defaultdict(set)  # "instruction input" -> {(lang, index)}
    for lang, rows in items.items():
        for index, row in enumerate(rows):
            heads[" ".join(filter(None, (row["instruction"], row["input"])))].add((lang, index))
    names = {"en": "English", "zh": "Chinese"}
    for record in records:
        head, lang_name = prompt_head(record), record.prompt[:-2].rsplit(" Answer in ", 1)[1]
        assert lang_name == names[record.tgt_lang]
        sources_ = heads[head]
        assert any(lang == record.src_lang and items[record.tgt_lang][index]["output"] == record.answer
                   for lang, index in sources_), record
        assert record.clm_prompt_len == len(record.clm_text) - len(record.answer)
        assert (record.sent0_lang, record.sent1_lang) == ("en", "zh")
    assert summary.records == len(records) == 8000


def test_bilingual_direction_mix_is_within_four_sigma(shared_data, alpaca_build):
    records, summary = alpaca_build
    for direction in ("en->en", "en->zh", "zh->en", "zh->zh"):
        assert_binomial(summary.directions[direction], len(records), 0.25)
    skewed, _ = build.build_records(alpaca_config(shared_data, num_records=4000, cross_probability=0.2))
    assert_binomial(sum(r.src_lang != r.tgt_lang for r in skewed), 4000, 0.2)


def records_using_test_items(records, shared_data):
    """Records whose CIF source or target item has a field that is, or has a sentence that is, an evaluation test
    sentence."""
    test_texts = heldout.evaluation_test_texts(shared_data)

    def leaks(text: str) -> bool:
        return not test_texts.isdisjoint(heldout.sentence_keys(text))

    items = alpaca_items(shared_data)
    leaked_heads, leaked_outputs = set(), set()
    for rows in items.values():
        for index, row in enumerate(rows):
            both = [items[other][index] for other in items]
            if any(leaks(r[f]) for r in both for f in ("instruction", "input", "output")):
                leaked_heads.add(" ".join(filter(None, (row["instruction"], row["input"]))))
                leaked_outputs.add(row["output"])
    return [r for r in records if prompt_head(r) in leaked_heads
            or r.answer in leaked_outputs or leaks(r.sent0) or leaks(r.sent1)]


def test_a_test_sentence_inside_a_longer_text_is_held_out():
    """The default recipe's Alpaca outputs had Tatoeba test sentences inside dialogues; a whole-field match
    missed them."""
    held = heldout.HeldoutFilter(frozenset({"what is your name?", "long time no see!", "..."}))
    assert held.is_heldout('Write a dialogue.\nJohn: Hi! What is your name?\nMary: "Long time no see!"')
    assert held.is_heldout("Ｗhat  is your NAME?")                     # width, case and spacing variants
    assert not held.is_heldout("Wait... what is your name, again?", "What is your name")
    assert held.removed == 2


def test_a_quoted_test_sentence_or_one_after_a_long_lead_in_is_held_out():
    held = heldout.HeldoutFilter(frozenset({"it is what it is.", "the apple is red.", "这是真的。", "hi there."}))
    assert held.is_heldout('Rewrite the following phrase in a more positive way: "It is what it is."')
    assert held.is_heldout("From the sentence “The apple is red.”, identify the main verb.")
    assert held.is_heldout("翻译：这是真的。然而，还有更多。")                    # a full-width colon, no space
    assert held.is_heldout("Jon: He said: hi there.")
    assert not held.is_heldout('He said "it is what it is" twice.', "The apple is red, he said.")


# Real Alpaca texts (shared/data/alpaca_en_zh) that quote a Tatoeba test sentence after a long lead-in or
# mid-sentence: the filter let them into the default recipe while it cut pieces only at sentence ends.
QUOTED_TEST_SENTENCES = {
    'Rewrite the following phrase in a more positive way: "It is what it is."': "It is what it is.",
    "From the sentence “The apple is red.”, identify the main verb.": "The apple is red.",
    'Identify the proper noun in the sentence "Today is Thursday."': "Today is Thursday.",
    'Convert this English sentence into French: "Where is the nearest store?"': "Where is the nearest store?",
    "Give me a response in Japanese to the phrase: What is your name?": "What is your name?",
    "从句子“The apple is red.”中，找出主要动词。": "The apple is red.",
}


def test_real_items_quoting_a_test_sentence_are_held_out(shared_data):
    test_texts = heldout.evaluation_test_texts(shared_data)
    alpaca = {item[field] for path in (shared_data / "alpaca_en_zh").glob("*/*.json")
              for item in json.loads(path.read_text(encoding="utf-8")) for field in ("instruction", "output")}
    held = heldout.HeldoutFilter(test_texts)
    for text, sentence in QUOTED_TEST_SENTENCES.items():
        assert text in alpaca and heldout.normalize(sentence) in test_texts and held.is_heldout(text), text


def test_heldout_filter_removes_every_test_sentence_and_the_check_can_fail(shared_data, alpaca_build):
    records, summary = alpaca_build
    assert summary.heldout_removed > 0
    assert summary.dropped.counts["item: contains an evaluation test sentence"] == summary.heldout_removed
    assert records_using_test_items(records, shared_data) == []
    unfiltered, off = build.build_records(alpaca_config(shared_data, num_records=8000, seed=3, heldout_filter=False))
    assert off.heldout_removed == 0 and len(records_using_test_items(unfiltered, shared_data)) > 0


def test_translation_from_sib200_templates_directions_and_heldout(shared_data):
    config = build.BuildConfig(mode="translation", languages=("en", "zh", "sw"), num_records=6000, seed=1,
                               parallel=(f"flores:{shared_data / 'sib200_flores'}",), flores_splits=("train", "test"),
                               data_dir=str(shared_data))
    records, summary = build.build_records(config)
    en = "Turkey is encircled by seas on three sides: the Aegean Sea to the west, the Black Sea to the north and " \
         "the Mediterranean Sea to the south."
    zh = "土耳其三面环海：西面是爱琴海，北面是黑海，南面则是地中海。"
    turkey = {r.clm_text for r in records if r.sent0 in (en, zh) and "sw" not in (r.src_lang, r.tgt_lang)}
    assert turkey and turkey <= {f"{en} Translate into Chinese: {zh}", f"{en} = {zh}",
                                 f"{zh} Translate into English: {en}", f"{zh} = {en}"}
    for record in records:
        assert record.clm_text == record.prompt + record.sent1 and record.sent0 == record.prompt.split(
            " Translate into " if "Translate into" in record.prompt else " = ")[0]
    assert_binomial(sum(r.src_lang == "en" for r in records), len(records), 0.5)
    assert_binomial(sum(" = " in r.prompt[-3:] for r in records), len(records), 0.5)
    assert_binomial(sum("sw" in (r.src_lang, r.tgt_lang) for r in records), len(records), 0.5)
    # the test split is the retrieval evaluation set: with the filter on none of it gets in
    test_texts = heldout.evaluation_test_texts(shared_data)
    assert summary.heldout_removed >= 2 * 200
    assert not any(heldout.normalize(t) in test_texts for r in records for t in (r.sent0, r.sent1))
    unfiltered, _ = build.build_records(dataclasses.replace(config, heldout_filter=False))
    assert sum(heldout.normalize(r.sent0) in test_texts for r in unfiltered) > 1000


def test_sib200_reader_decodes_csv_quoting(shared_data):
    path = shared_data / "sib200_flores/eng_Latn/train.tsv"
    raw = path.read_text(encoding="utf-8")
    with open(path, encoding="utf-8", newline="") as handle:
        quoted = [row[2] for row in csv.reader(handle, delimiter="\t") if '"' in row[2]]
    assert '""' in raw and quoted  # the file really uses CSV quoting
    groups = sources.read_flores(shared_data / "sib200_flores", ["en"], ["train"], sources.DropLog(), skip_bad=False)
    texts = {g["en"] for g in groups}
    assert len(groups) == 701 and set(quoted) <= texts and not any(t.startswith('"') and t.endswith('"')
                                                                     for t in texts if t not in quoted)


def test_tatoeba_pairs_are_line_aligned(shared_data):
    groups = sources.read_tatoeba(shared_data / "tatoeba/v1", ["en", "zh"], sources.DropLog(), skip_bad=False)
    assert len(groups) == 1000 and groups[0] == {"zh": "我們試試看！", "en": "Let's have a look."}


def test_language_tables_cover_bactrian_x_and_match_shared_files(shared_data):
    assert len(languages.BACTRIAN_X_NAMES) == 52 and languages.language_name("sw") == "Swahili"
    for lang, code in languages.TATOEBA_CODES.items():
        assert code == "eng" or (shared_data / f"tatoeba/v1/tatoeba.{code}-eng.{code}").is_file(), lang
    for lang, code in languages.FLORES_CODES.items():
        assert (shared_data / "sib200_flores" / code / "train.tsv").is_file(), lang
    with pytest.raises(languages.UnknownLanguageError, match="no Tatoeba code for language code 'ps'"):
        languages.tatoeba_code("ps")


# ----------------------------------------------------------------------------------------------- fixtures


def test_items_are_aligned_by_id_not_position_and_missing_ids_are_reported(tmp_path, shared_data):
    write_bactrian(tmp_path / "bx", langs=("en", "zh"), n=30, missing={"zh": ["7"]})
    records, summary = build.build_records(fixture_config(tmp_path / "bx", shared_data, ("en", "zh"),
                                                          num_records=500))
    assert summary.dropped.counts == {"item: id missing in zh": 1}
    used = set()
    for record in records:
        prompt_lang, prompt_id = tag(record.prompt.split(" Answer in ")[0])
        answer_lang, answer_id = tag(record.answer)
        assert (prompt_lang, answer_lang) == (record.src_lang, record.tgt_lang) and prompt_id == answer_id != "7"
        assert tag(record.sent0)[0] == "en" and tag(record.sent1)[0] == "zh" and tag(record.sent0)[1] == \
            tag(record.sent1)[1]
        used.add(prompt_id)
    assert len(used) == 29


def test_multilingual_direction_mix_and_consistent_pair_language(tmp_path, shared_data):
    write_bactrian(tmp_path / "bx")
    config = fixture_config(tmp_path / "bx", shared_data, num_records=6000, cross_probability=0.6,
                            change_probability=0.7, seed=5)
    records, summary = build.build_records(config)
    expected = {"en->en": 0.4 / 3, "zh->zh": 0.4 / 3, "sw->sw": 0.4 / 3, "zh->en": 0.21, "sw->en": 0.21,
                "en->zh": 0.09, "en->sw": 0.09}
    assert set(summary.directions) == set(expected)
    for direction, p in expected.items():
        assert_binomial(summary.directions[direction], 6000, p)
    for record in records:
        non_pivot = {record.src_lang, record.tgt_lang} - {"en"}
        assert tag(record.sent0)[0] == "en" and tag(record.sent1)[0] == record.sent1_lang
        assert not non_pivot or non_pivot == {record.sent1_lang}
    reference, _ = build.build_records(dataclasses.replace(config, reference=True, num_records=None))
    inconsistent = sum(bool({r.src_lang, r.tgt_lang} - {"en", r.sent1_lang}) for r in reference)
    assert len(reference) == 3 * 60 + 1 and inconsistent > 0.05 * len(reference)  # the reference bug, reproduced


def test_exact_record_count_and_reference_count(tmp_path, shared_data):
    write_bactrian(tmp_path / "bx", langs=("en", "zh"), n=50)
    config = fixture_config(tmp_path / "bx", shared_data, ("en", "zh"))
    assert len(build.build_records(dataclasses.replace(config, num_records=1234))[0]) == 1234
    assert len(build.build_records(dataclasses.replace(config, repeat=2.5))[0]) == 125
    assert len(build.build_records(dataclasses.replace(config, repeat=2.5, reference=True))[0]) == 126


def test_cli_is_reproducible_from_the_seed_and_prints_a_summary(tmp_path, shared_data, capsys):
    write_bactrian(tmp_path / "bx", langs=("en", "zh"), n=40)
    args = ["--mode", "bilingual", "--languages", "en", "zh", "--instructions", str(tmp_path / "bx"),
            "--num-records", "300", "--data-dir", str(shared_data)]
    outputs = []
    for seed, name in ((0, "a"), (0, "b"), (1, "c")):
        assert build.main(args + ["--seed", str(seed), "--out", str(tmp_path / f"{name}.jsonl"),
                                  "--summary-json", str(tmp_path / f"{name}.json")]) == 0
        outputs.append((tmp_path / f"{name}.jsonl").read_bytes())
    assert outputs[0] == outputs[1] and outputs[0] != outputs[2]
    assert len(read_records(tmp_path / "a.jsonl")[0]) == 300
    printed = capsys.readouterr().out
    assert "records: 300" in printed and "direction zh->en:" in printed and "contrastive pair en-zh: 300" in printed
    assert json.loads((tmp_path / "a.json").read_text())["records"] == 300


def test_pair_sources_dedupe_and_length_filter(tmp_path, shared_data):
    rows = write_bactrian(tmp_path / "bx", langs=("en", "zh"), n=12)
    (tmp_path / "pairs.tsv").write_text("[en] p 1\t[zh] p 1\n[en] p 1\t[zh] p 1\n[en] same\t[en] same\n"
                                        f"[en] {'x' * 50}\t[zh] long\n", encoding="utf-8")
    (tmp_path / "no_pivot.tsv").write_text("[zh] q\t[fr] q\n", encoding="utf-8")
    (tmp_path / "other.tsv").write_text("[en] r\t[fr] r\n", encoding="utf-8")
    config = fixture_config(tmp_path / "bx", shared_data, ("en", "zh"), num_records=200, max_pair_chars=40,
                            parallel=(f"tsv:en-zh:{tmp_path / 'pairs.tsv'}", f"tsv:zh-fr:{tmp_path / 'no_pivot.tsv'}",
                                      f"tsv:en-fr:{tmp_path / 'other.tsv'}"), pair_sources=("input", "parallel"))
    records, summary = build.build_records(config)
    with_input = sum(1 for r in rows["en"] if r["input"])
    assert {(r.sent0, r.sent1) for r in records} == (
        {(f"[en] input {i}", f"[zh] input {i}") for i in range(12) if i % 3} | {("[en] p 1", "[zh] p 1")})
    assert summary.dropped.counts == {"pair en-zh: empty side": 12 - with_input, "pair en-zh: duplicate": 1,
                                      "pair en-zh: identical sides (untranslated)": 1,
                                      "pair en-zh: longer than 40 characters": 1,
                                      "pair: aligned group with no en-X side among the languages": 2}
    assert summary.dropped.examples["pair: aligned group with no en-X side among the languages"] == (
        "sides ['fr', 'zh']: [zh] q")


def test_hf_datasets_inputs_give_the_same_records_as_json(tmp_path, shared_data):
    datasets = pytest.importorskip("datasets")
    rows = write_bactrian(tmp_path / "bx", langs=("en", "zh"), n=25)
    datasets.Dataset.from_list(rows["en"]).save_to_disk(str(tmp_path / "hf" / "en"))
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows["zh"])}).save_to_disk(str(tmp_path / "hf" / "zh"))
    datasets.Dataset.from_list(rows["zh"]).to_parquet(str(tmp_path / "zh.parquet"))
    config = fixture_config(tmp_path / "bx", shared_data, ("en", "zh"), num_records=100, seed=7)
    from_json, _ = build.build_records(config)
    from_disk, _ = build.build_records(dataclasses.replace(config, instructions=(str(tmp_path / "hf"),),
                                                         instruction_format="hf"))
    mixed, _ = build.build_records(dataclasses.replace(config, instruction_format="hf", instructions=(
        str(tmp_path / "hf" / "en"), str(tmp_path / "zh.parquet"))))
    assert from_json == from_disk == mixed and len(from_json) == 100


# ----------------------------------------------------------------------------------------------- bad input


def bad_item_cases():
    good = {"id": "5", "instruction": "i", "input": "", "output": "o"}
    return [
        ({**good, "output": "  "}, "item[5]: output: empty string", "output: empty string"),
        ({k: v for k, v in good.items() if k != "instruction"}, "item[5]: instruction: missing or null field",
         "instruction: missing field"),
        ({**good, "id": "0"}, "item[5]: id: duplicate id '0'", "id: duplicate id"),
        ({**good, "id": [1]}, "item[5]: id: expected a non-empty string or integer, got [1]", "id: bad id"),
        ("text", "item[5]: <item>: expected an object, got str", "<item>: not an object"),
        ({**good, "input": 3}, "item[5]: input: expected a string, got int", "input: wrong type"),
        ({**good, "output": "ok \ud83d"}, "item[5]: output: lone surrogate '\\ud83d' at character 3 (not valid "
         "Unicode text)", "output: invalid text"),
    ]


@pytest.mark.parametrize("bad_item,message,reason", bad_item_cases())
def test_bad_instruction_items_name_file_item_and_field(tmp_path, shared_data, bad_item, message, reason):
    rows = write_bactrian(tmp_path / "bx", langs=("en", "zh"), n=6, missing={"zh": ["5"]})
    path = tmp_path / "bx" / "zh.json"
    path.write_text(json.dumps(rows["zh"] + [bad_item]), encoding="utf-8")
    config = fixture_config(tmp_path / "bx", shared_data, ("en", "zh"), num_records=10)
    with pytest.raises(sources.SourceError) as error:
        build.build_records(config)
    assert str(error.value) == f"{path}:{message}"
    records, summary = build.build_records(dataclasses.replace(config, skip_bad=True))
    assert len(records) == 10 and summary.dropped.counts[f"bad input ({reason})"] == 1
    assert summary.dropped.examples[f"bad input ({reason})"] == f"{path}:{message}"


def test_bad_files_and_layouts_are_located(tmp_path, shared_data):
    drops = sources.DropLog()
    (tmp_path / "en.json").write_text('{"id": 1}')
    with pytest.raises(sources.SourceError, match=r"en\.json:0: <json>: expected a JSON list of items, got dict$"):
        sources.read_instruction_file(tmp_path / "en.json", "bactrian", drops)
    (tmp_path / "en.json").write_text('[{"id": 1,,}]')
    with pytest.raises(sources.SourceError, match=r"en\.json:1: <json>: invalid JSON \(Expecting property name"):
        sources.read_instruction_file(tmp_path / "en.json", "bactrian", drops)
    with pytest.raises(sources.SourceError, match=r"en\.json:0: <dataset>: cannot be read by datasets \("):
        sources.read_instruction_file(tmp_path / "en.json", "hf", drops)
    with pytest.raises(FileNotFoundError, match="instruction file not found: .*sw.json"):
        sources.read_instruction_file(tmp_path / "sw.json", "bactrian", drops)
    misaligned = shared_data / "alpaca_en_zh/zh/alpaca_data-0-3252.zh.json"
    with pytest.raises(sources.SourceError) as error:
        sources.read_instruction_file(misaligned, "alpaca", drops)
    assert str(error.value) == (f"{misaligned}:0: <file>: 3247 items for Alpaca indices 0-3252 (3252): items were "
                                "dropped or merged, so positions are not ids")
    with pytest.raises(ValueError, match=r"file name says language 'sw', which is not among \['en', 'zh'\]"):
        sources.instruction_files([tmp_path / "sw.json"], ["en", "zh"], "bactrian")


def test_bad_parallel_lines_are_located_or_counted(tmp_path):
    tsv = tmp_path / "p.tsv"
    tsv.write_text("a\tb\na\tb\tc\n\tb\n", encoding="utf-8")
    with pytest.raises(sources.SourceError, match=r"p\.tsv:2: columns: expected 2 tab-separated columns, got 3$"):
        sources.read_tsv_pairs(tsv, "en", "zh", sources.DropLog(), skip_bad=False)
    drops = sources.DropLog()
    assert sources.read_tsv_pairs(tsv, "en", "zh", drops, skip_bad=True) == [{"en": "a", "zh": "b"}]
    assert drops.counts == {"bad input (columns: wrong column count)": 1, "bad input (en: empty sentence)": 1}
    (tmp_path / "tatoeba.cmn-eng.cmn").write_text("一\n二\n", encoding="utf-8")
    (tmp_path / "tatoeba.cmn-eng.eng").write_text("one\n", encoding="utf-8")
    with pytest.raises(sources.SourceError, match=r"cmn:2: <file>: 2 lines but tatoeba.cmn-eng.eng has 1: the files"):
        sources.read_tatoeba(tmp_path, ["en", "zh"], sources.DropLog(), skip_bad=False)
    (tmp_path / "eng_Latn").mkdir()
    (tmp_path / "eng_Latn" / "train.tsv").write_text("index_id\tcategory\ttext\n4\tx\tA\n4\tx\tB\n")
    with pytest.raises(sources.SourceError, match=r"train\.tsv:3: index_id: duplicate index_id 4$"):
        sources.read_flores(tmp_path, ["en"], ["train"], sources.DropLog(), skip_bad=False)


def test_cli_errors_exit_with_a_message(tmp_path, shared_data, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build.main(["--mode", "bilingual", "--languages", "en", "zh", "sw", "--out", str(tmp_path / "x.jsonl"),
                    "--instructions", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "error: --mode bilingual needs 2 distinct languages, got ['en', 'zh', 'sw']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build.main(["--mode", "translation", "--languages", "en", "xx", "--out", str(tmp_path / "x.jsonl"),
                    "--parallel", f"flores:{shared_data / 'sib200_flores'}"])
    assert "no English name for language code 'xx'" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------- recipe


def test_default_recipe_mixes_cif_and_sib200_train_translation(tmp_path, shared_data):
    out = tmp_path / "data" / "train.jsonl"
    summary = recipes.build_default_training_set(shared_data, out, languages=("en", "zh", "sw"), num_records=1000,
                                                 seed=0)
    records, _ = read_records(out)
    assert len(records) == summary.records == 1000
    cif = [r for r in records if " Answer in " in r.prompt]
    assert len(cif) == 500 and {r.src_lang for r in cif} == {"en", "zh"}
    assert set(summary.directions) == {"en->en", "en->zh", "zh->en", "zh->zh", "en->sw", "sw->en"}
    train = {}
    for code in ("eng_Latn", "zho_Hans", "swh_Latn"):
        with open(shared_data / "sib200_flores" / code / "train.tsv", encoding="utf-8", newline="") as handle:
            train.update((row[2], code) for row in csv.reader(handle, delimiter="\t"))
    assert all(r.sent0 in train and r.sent1 in train for r in records if r not in cif)
    test_texts = heldout.evaluation_test_texts(shared_data)
    assert not any(heldout.normalize(t) in test_texts for r in records for t in (r.sent0, r.sent1, r.answer))
    again = tmp_path / "again.jsonl"
    recipes.build_default_training_set(shared_data, again, num_records=1000, seed=0)
    assert again.read_bytes() == out.read_bytes()

"""Task loaders on the real shared data, located errors on malformed files, templates and demonstrations."""
import json
import random
import shutil

import pytest

from xalign_jax.evaluation import fewshot, tasks, templates
from xalign_jax.evaluation.readers import SourceError

# (languages, {part: rows}) as the SOURCE.md files document them
DOCUMENTED = {
    "xnli": ("ar bg de el en es fr hi ru sw th tr ur vi zh", {"test": 5010, "dev": 2490, "demo": 2490}),
    "pawsx": ("de en es fr ja ko zh", {"test": 2000, "dev": 2000, "demo": 2000}),
    "xcopa": ("et ht id it qu sw ta th tr vi zh", {"test": 500, "dev": 100, "demo": 100}),
    "xstorycloze": ("ar en es hi id ru sw zh", {"test": 1511, "dev": 360, "demo": 360}),
}
XWINOGRAD_ROWS = {"en": 2325, "fr": 83, "ja": 959, "pt": 263, "ru": 315, "zh": 16}   # the file's jp is ja


@pytest.mark.parametrize("task", sorted(DOCUMENTED))
def test_every_language_file_loads_with_documented_counts(shared_data, task):
    languages, counts = DOCUMENTED[task]
    expected = sorted(languages.split() + (["en"] if task == "xcopa" else []))
    assert tasks.available_languages(task, shared_data) == expected
    for lang in expected:
        for part, rows in counts.items():
            if task == "xcopa" and lang == "en":   # English COPA: 500 test, 400 train as dev/demo pool
                rows = 500 if part == "test" else 400
            items = tasks.load_part(task, lang, part, shared_data)
            assert len(items) == rows, (task, lang, part)
            assert all(0 <= item.label < 3 for item in items)


def test_xwinograd_rows_and_conversion(shared_data):
    assert tasks.available_languages("xwinograd", shared_data) == sorted(XWINOGRAD_ROWS)
    for lang, rows in XWINOGRAD_ROWS.items():
        assert len(tasks.load_part("xwinograd", lang, "test", shared_data)) == rows
    assert tasks.parts("xwinograd") == ("test", "demo")
    with pytest.raises(ValueError, match="xwinograd has no dev part: every row of its file is a test row"):
        tasks.load_part("xwinograd", "en", "dev", shared_data)
    first = tasks.load_part("xwinograd", "en", "test", shared_data)[0]
    filled = first.fields["sentence_part1"] + first.options[first.label] + first.fields["sentence_part2"]
    assert filled == "The city councilmen refused the demonstrators a permit because The city councilmen feared violence."
    assert first.options == ("The city councilmen", "the demonstrators")


def test_xwinograd_translations_share_their_english_items_key(shared_data):
    """A jp/zh schema names the English one it translates: same key, so 5-shot English demonstrations never
    hold the evaluated item's own original (which, answer filled in, would give the answer away)."""
    english = tasks.load_part("xwinograd", "en", "test", shared_data)
    english_keys = {item.key for item in english}
    # zh: the two trophy schemas name "it's too small/large" where the English rows say "it is"; ja: the two
    # "Origin"/"Steam" schemas have no English row.
    for lang, linked in (("zh", 14), ("ja", 957)):
        items = tasks.load_part("xwinograd", lang, "test", shared_data)
        assert sum(item.key in english_keys for item in items) == linked, lang
    lawyer = next(i for i in tasks.load_part("xwinograd", "zh", "test", shared_data)
                  if i.fields["sentence_part1"].startswith("律师问了证人一个问题"))
    original = [i for i in english if i.key == lawyer.key]
    assert original and original[0].fields["sentence_part1"].startswith("The lawyer asked the witness a question")
    for seed in range(20):
        assert lawyer.key not in {d.key for d in fewshot.select_demos(english, 5, seed, evaluated=lawyer)}
    assert len({i.key for i in tasks.load_part("xwinograd", "fr", "test", shared_data)}) == 83   # keyed by line


def test_xwinograd_translations_without_an_original_see_no_english_wsc_schema(shared_data):
    """fr/pt/ru rows name no English original, but translate WSC schemas: the city councilmen, the first English
    and the first Russian row, must not be a Russian item's demonstration; no English row of the WSC collections
    is one for any of them, while same-language demonstrations are only kept off the item itself."""
    english = tasks.load_part("xwinograd", "en", "test", shared_data)
    assert {item.collection for item in english} == {"original", "superglue", "wsc_naive"}
    councilmen = [item for item in english if "councilmen refused" in item.fields["sentence_part1"]]
    assert councilmen and {item.collection for item in councilmen} <= tasks.WSC_COLLECTIONS
    for lang in ("fr", "pt", "ru"):
        items = tasks.load_part("xwinograd", lang, "test", shared_data)
        assert all(item.translates == tasks.WSC_COLLECTIONS for item in items), lang
        first = items[0]
        assert all(first.must_not_see(item) for item in councilmen)
        for seed in range(5):
            demos = fewshot.select_demos(english, 5, seed, evaluated=first)
            assert len(demos) == 5 and not {d.collection for d in demos} & tasks.WSC_COLLECTIONS
            assert [d.key for d in fewshot.select_demos(items, 5, seed, evaluated=first)] == \
                [d.key for d in fewshot.select_demos(items, 6, seed) if d.key != first.key][:5]
    chinese = tasks.load_part("xwinograd", "zh", "test", shared_data)
    assert chinese[0].translates == frozenset() and not any(map(chinese[0].must_not_see, councilmen[1:]))
    reworded = [item for item in chinese if item.translates]      # "it's too small/large": the trophy schemas
    trophies = [d for d in english if "trophy doesn't fit" in d.fields["sentence_part1"]]
    assert len(reworded) == 2 and trophies and all(item.must_not_see(d) for item in reworded for d in trophies)


def test_xnli_labels_for_unlabelled_languages_come_from_english_rows(shared_data):
    english = tasks.load_part("xnli", "en", "test", shared_data)
    assert english[0].label == 2   # "...talking to him again." / "I havent spoken to him again." (SOURCE.md)
    for lang in ("bg", "el", "ru", "th", "zh"):
        assert [i.label for i in tasks.load_part("xnli", lang, "test", shared_data)] == [i.label for i in english]


def test_label_balance_matches_source_documentation(shared_data):
    pawsx_en = tasks.load_part("pawsx", "en", "test", shared_data)
    assert sum(item.label == 0 for item in pawsx_en) == 907      # 907 paraphrases (gold "Yes") in en test
    xnli_dev = tasks.load_part("xnli", "sw", "dev", shared_data)
    assert [sum(i.label == c for i in xnli_dev) for c in range(3)] == [830, 830, 830]


def _copy_task(shared_data, tmp_path, *relative):
    for rel in relative:
        target = tmp_path / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(shared_data / rel, target)
    return tmp_path


def _corrupt_line(path, lineno, transform):
    lines = path.read_text(encoding="utf-8").split("\n")
    lines[lineno - 1] = transform(lines[lineno - 1])
    path.write_text("\n".join(lines), encoding="utf-8")


def test_malformed_pawsx_label_names_file_line_field(shared_data, tmp_path):
    root = _copy_task(shared_data, tmp_path, "pawsx/x-final/en/test_2k.tsv")
    path = root / "pawsx/x-final/en/test_2k.tsv"
    _corrupt_line(path, 7, lambda line: line.rsplit("\t", 1)[0] + "\tmaybe")
    with pytest.raises(SourceError, match=rf"{path}:7: label: expected one of \['1', '0'\], got 'maybe'"):
        tasks.load_part("pawsx", "en", "test", root)


def test_malformed_xcopa_json_and_missing_field(shared_data, tmp_path):
    root = _copy_task(shared_data, tmp_path, "xcopa/data/zh/test.zh.jsonl", "xcopa/copa_en/test.jsonl")
    path = root / "xcopa/data/zh/test.zh.jsonl"
    _corrupt_line(path, 3, lambda line: line[:-5])
    with pytest.raises(SourceError, match=rf"{path}:3: <json>: invalid JSON"):
        tasks.load_part("xcopa", "zh", "test", root)
    _corrupt_line(path, 3, lambda _: json.dumps({"premise": "p", "choice1": "a", "question": "cause", "label": 0}))
    with pytest.raises(SourceError, match=rf"{path}:3: choice2: missing"):
        tasks.load_part("xcopa", "zh", "test", root)


def test_malformed_xstorycloze_columns(shared_data, tmp_path):
    name = "xstorycloze/spring2016.val.sw.tsv.split_20_80_eval.tsv"
    root = _copy_task(shared_data, tmp_path, name)
    _corrupt_line(root / name, 12, lambda line: line.rsplit("\t", 1)[0])
    with pytest.raises(SourceError, match=r"split_20_80_eval.tsv:12: <columns>: expected 8 tab-separated columns, got 7"):
        tasks.load_part("xstorycloze", "sw", "test", root)


def test_malformed_xwinograd_span(shared_data, tmp_path):
    root = _copy_task(shared_data, tmp_path, "xwinograd/dataset.tsv")
    _corrupt_line(root / "xwinograd/dataset.tsv", 2, lambda line: line.replace("[9, 10]", "[9, 99]"))
    with pytest.raises(SourceError, match=r"dataset.tsv:2: pronoun: expected a token span"):
        tasks.load_part("xwinograd", "en", "test", root)


def test_unknown_language_and_template_errors_list_available(shared_data):
    with pytest.raises(KeyError, match=r"available: \['de', 'en', 'es', 'fr', 'ja', 'ko', 'zh'\]"):
        tasks.load_part("pawsx", "xx", "test", shared_data)
    with pytest.raises(templates.TemplateError, match=r"available languages: \['ar', 'en', 'zh'\]"):
        templates.get_template("xnli", "fr")


def test_pawsx_prompts_are_the_reference_strings(shared_data):
    template = templates.get_template("pawsx", "zh")
    item = tasks.load_part("pawsx", "zh", "test", shared_data)[0]
    demo = tasks.load_part("pawsx", "zh", "demo", shared_data)[0]
    demo_text = fewshot.render_demos(template, [demo], "</s>")
    answer = ("对", "不对")[demo.label]
    assert demo_text == f"{demo.fields['sentence1']}，对吗？ {answer}，{demo.fields['sentence2']}</s>"
    prompts = fewshot.build_prompts(template, item, demo_text)
    assert [p.text for p in prompts] == [
        f"{demo_text}{item.fields['sentence1']}，对吗？ {c}, {item.fields['sentence2']}" for c in ("对", "不对")]
    assert prompts[1].continuation == f"不对, {item.fields['sentence2']}"


def test_xcopa_prompt_and_xnli_reference_template(shared_data):
    item = tasks.load_part("xcopa", "en", "test", shared_data)[0]
    prompts = fewshot.build_prompts(templates.get_template("xcopa", "en"), item, "")
    assert prompts[0].text == f"{item.fields['question']}: {item.fields['premise']} " \
                              f"{'because' if item.fields['question'] == 'cause' else 'so'} {item.options[0]}"
    xnli = tasks.load_part("xnli", "en", "test", shared_data)[0]
    reference = fewshot.build_prompts(templates.get_template("xnli", "en", "reference"), xnli, "")
    assert len({p.text for p in reference}) == 1          # cannot discriminate, as the reference ships it
    xglm = fewshot.build_prompts(templates.get_template("xnli", "en"), xnli, "")
    assert [p.text for p in xglm] == [f"{xnli.fields['premise']}, right? {w}, {xnli.fields['hypothesis']}"
                                      for w in ("Yes", "Also", "No")]


def test_demonstrations_follow_the_reference_shuffle(shared_data):
    pool = tasks.load_part("pawsx", "en", "demo", shared_data)
    reference_pool = list(pool)
    random.seed(3)
    random.shuffle(reference_pool)            # the reference: global RNG, in place, first k
    assert fewshot.select_demos(pool, 5, 3) == reference_pool[:5]
    assert fewshot.select_demos(pool, 0, 3) == []
    excluded = fewshot.select_demos(pool, 5, 3, evaluated=reference_pool[1])
    assert excluded == reference_pool[:1] + reference_pool[2:6]
    evaluated = [tasks.Item(key, {}, 0) for key in ("a", "b")]
    per_item = [fewshot.select_demos(pool, 5, 3, evaluated=item, per_item=True) for item in evaluated]
    assert per_item[0] != per_item[1]
    assert per_item[0] == fewshot.select_demos(pool, 5, 3, evaluated=evaluated[0], per_item=True)


def test_connector_uses_the_tokenizers_eos_spelling():
    template = templates.get_template("xcopa", "en")
    assert fewshot.connector_text(template, "</s>") == "</s>"
    assert fewshot.connector_text(template, "<eos>") == "<eos>"
    assert fewshot.connector_text(templates.get_template("xnli", "en", "reference"), "<eos>") == "\n\n"

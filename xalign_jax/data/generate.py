"""AFP record generators for the three builder modes (AFP_SPEC §2.3-2.5), with the reference's exact templates.

* bilingual (2 languages): src ~ Uniform(languages); with probability `cross` the target is the other language,
  else the same. Instruction and input come from the src item, the output from the tgt item with the same id.
* multilingual (>= 3 languages, languages[0] = pivot): draw a non-pivot t; with probability 1 - `cross` the sample
  is monolingual in a uniform language, else t -> pivot with probability `change`, pivot -> t otherwise.
  The contrastive pair is pivot - (the record's non-pivot language); the reference draws it with t *before* the
  monolingual override (AFP_SPEC §7.15), reproduced only with `reference=True`.
* translation: each parallel pair, direction swapped with probability `change`, one of two templates uniformly;
  the pair itself is the contrastive pair.

`clm_prompt_len = len(clm_text) - len(answer)` in characters, so every prompt ends with ": " (or "= ").
"""
from __future__ import annotations

import random
from typing import Callable, Sequence

from xalign_jax.data.align import ItemsByLanguage, Pair, ShuffledCycle
from xalign_jax.data.languages import language_name
from xalign_jax.data.records import AFPRecord

CIF_TEMPLATE = "{instruction} {input} Answer in {lang}: {output}"
CIF_TEMPLATE_NO_INPUT = "{instruction} Answer in {lang}: {output}"
TRANSLATION_TEMPLATES = ("{input} Translate into {lang}: {output}", "{input} = {output}")

# (src, tgt, language paired with the pivot in the contrastive pair)
Direction = tuple[str, str, str]
DirectionSampler = Callable[[random.Random], Direction]


def record_count(units: int, repeat: float, *, reference: bool) -> int:
    """Default size: `repeat` uses of each unit; the reference writes one record more (AFP_SPEC §2.3)."""
    return int(repeat * units) + (1 if reference else 0)


def bilingual_sampler(languages: Sequence[str], cross_probability: float) -> DirectionSampler:
    pivot, other = languages

    def sample(rng: random.Random) -> Direction:
        src = rng.choice(languages)
        tgt = (other if src == pivot else pivot) if rng.random() < cross_probability else src
        return src, tgt, other
    return sample


def multilingual_sampler(languages: Sequence[str], cross_probability: float, change_probability: float, *,
                         reference: bool = False) -> DirectionSampler:
    pivot, others = languages[0], list(languages[1:])

    def sample(rng: random.Random) -> Direction:
        t = rng.choice(others)
        if rng.random() >= cross_probability:
            src = tgt = rng.choice(languages)
        elif rng.random() < change_probability:
            src, tgt = t, pivot
        else:
            src, tgt = pivot, t
        if reference:
            return src, tgt, t
        return src, tgt, (src if src != pivot else tgt if tgt != pivot else t)
    return sample


def cif_text(instruction: str, input_text: str, output: str, tgt_lang: str) -> str:
    template = CIF_TEMPLATE if input_text else CIF_TEMPLATE_NO_INPUT
    return template.format(instruction=instruction, input=input_text, lang=language_name(tgt_lang), output=output)


def cif_records(items: ItemsByLanguage, ids: Sequence[str], count: int, sampler: DirectionSampler,
                pair_streams: dict[str, ShuffledCycle[Pair]], pivot: str, rng: random.Random) -> list[AFPRecord]:
    """`count` CIF records; each aligned item is used count/len(ids) times (±1), each with a fresh direction."""
    records = []
    for item_id in ShuffledCycle(ids, rng, "aligned instruction items").take(count):
        src, tgt, pair_lang = sampler(rng)
        source, output = items[src][item_id], items[tgt][item_id].output
        text = cif_text(source.instruction, source.input, output, tgt)
        sent0, sent1 = next(pair_streams[pair_lang])
        records.append(AFPRecord(sent0=sent0, sent1=sent1, clm_text=text, clm_prompt_len=len(text) - len(output),
                                 sent0_lang=pivot, sent1_lang=pair_lang, src_lang=src, tgt_lang=tgt))
    return records


def translation_records(pairs: dict[tuple[str, str], list[Pair]], count: int, change_probability: float,
                        rng: random.Random) -> list[AFPRecord]:
    """`count` translation records over the pooled language pairs (each pair used count/total times ±1)."""
    units = [(langs, pair) for langs, lang_pairs in pairs.items() for pair in lang_pairs]
    records = []
    for (src, tgt), (source, target) in ShuffledCycle(units, rng, "translation pairs").take(count):
        if rng.random() < change_probability:
            src, tgt, source, target = tgt, src, target, source
        text = rng.choice(TRANSLATION_TEMPLATES).format(input=source, lang=language_name(tgt), output=target)
        records.append(AFPRecord(sent0=source, sent1=target, clm_text=text, clm_prompt_len=len(text) - len(target),
                                 sent0_lang=src, sent1_lang=tgt, src_lang=src, tgt_lang=tgt))
    return records

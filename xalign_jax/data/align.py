"""Cross-language alignment: which instruction items exist in every language, and the translation-pair pools.

The reference sorts each language file by id and zips by position (AFP_SPEC §7.15), which silently pairs
unrelated items as soon as one language misses an id. Here items are joined on the id itself and every id absent
from some language is counted. Pairs for the contrastive loss come from any aligned source (an instruction field
of aligned items, or parallel sentences); they are deduplicated on their normalised text, length-filtered and
checked against the evaluation test sets.
"""
from __future__ import annotations

import random
from typing import Generic, Iterable, Sequence, TypeVar

from xalign_jax.data.heldout import HeldoutFilter, normalize
from xalign_jax.data.sources import AlignedGroup, DropLog, InstructionItem

ItemsByLanguage = dict[str, dict[str, InstructionItem]]
Pair = tuple[str, str]
T = TypeVar("T")

INSTRUCTION_FIELDS = ("instruction", "input", "output")


def aligned_ids(items: ItemsByLanguage, drops: DropLog, heldout: HeldoutFilter | None) -> list[str]:
    """Ids present in every language (in the order of the first language's files), minus held-out items."""
    languages = list(items)
    all_ids = dict.fromkeys(item_id for lang in languages for item_id in items[lang])
    for lang in languages:
        missing = [item_id for item_id in all_ids if item_id not in items[lang]]
        drops.add(f"item: id missing in {lang}", f"e.g. id {missing[0]!r}" if missing else "", len(missing))
    ids = [item_id for item_id in all_ids if all(item_id in items[lang] for lang in languages)]
    if heldout is None:
        return ids
    kept = []
    for item_id in ids:
        texts = [getattr(items[lang][item_id], f) for lang in languages for f in INSTRUCTION_FIELDS]
        if heldout.is_heldout(*texts):
            drops.add("item: contains an evaluation test sentence", f"id {item_id!r}")
        else:
            kept.append(item_id)
    return kept


def instruction_groups(items: ItemsByLanguage, ids: Iterable[str], field: str) -> list[AlignedGroup]:
    """One group per aligned item: the `field` text in every language (for Alpaca/Bactrian-X `instruction` and
    `input` are translations; `output` is only one where the outputs were translated, as in alpaca_en_zh)."""
    return [{lang: getattr(by_id[item_id], field) for lang, by_id in items.items()} for item_id in ids]


def collect_pairs(groups: Iterable[AlignedGroup], lang_a: str, lang_b: str, drops: DropLog, *,
                  max_chars: int | None, heldout: HeldoutFilter | None) -> list[Pair]:
    """(lang_a text, lang_b text) pairs of every group that covers both languages, filtered and deduplicated."""
    seen, pairs = set(), []
    name = f"pair {lang_a}-{lang_b}"
    for group in groups:
        if lang_a not in group or lang_b not in group:
            continue
        a, b = group[lang_a], group[lang_b]
        key = (normalize(a), normalize(b))
        if not key[0] or not key[1]:
            drops.add(f"{name}: empty side", f"{a!r} / {b!r}")
        elif key[0] == key[1]:
            drops.add(f"{name}: identical sides (untranslated)", a)
        elif max_chars is not None and max(len(a), len(b)) > max_chars:
            drops.add(f"{name}: longer than {max_chars} characters", a[:60])
        elif key in seen:
            drops.add(f"{name}: duplicate", a[:60])
        elif heldout is not None and heldout.is_heldout(a, b):
            drops.add(f"{name}: evaluation test sentence", a[:60])
        else:
            seen.add(key)
            pairs.append((a, b))
    return pairs


class ShuffledCycle(Generic[T]):
    """Endless draws without replacement: every element once per pass, a fresh shuffle for each pass. Gives each
    item the same number of uses (±1), unlike i.i.d. draws."""

    def __init__(self, elements: Sequence[T], rng: random.Random, name: str = "elements"):
        if not elements:
            raise ValueError(f"no {name} to draw from (all filtered out or none in the sources)")
        self._elements, self._rng, self._order, self._next = list(elements), rng, [], 0

    def __next__(self) -> T:
        if self._next == len(self._order):
            self._order = self._elements[:]
            self._rng.shuffle(self._order)
            self._next = 0
        self._next += 1
        return self._order[self._next - 1]

    def take(self, count: int) -> list[T]:
        return [next(self) for _ in range(count)]

"""Demonstrations and prompt assembly (AFP_SPEC §3.2-3.3).

Reference rule: ``random.Random(seed)`` shuffles a COPY of the pool (the reference reseeds the global RNG and shuffles
in place, §7.13: same order, no side effects here), the first k become the demonstrations, and the same ones serve
every test item of a (task, language, seed). The evaluated item itself (matched by ``Item.key``, which translations
share) or a row that may be its original (``Item.must_not_see``) is skipped when it falls among them, so an item
never sees its own answer. ``per_item=True`` draws a separate sample per item instead (seeded by seed and item key).

Each candidate gives one ``Prompt``: ``context`` = demonstrations + query text before the candidate,
``continuation`` = candidate + query text after it (PAWS-X's ``, {sentence2}``, XWinograd's second half).
The reference scores ``context + continuation`` as a whole; completion scoring conditions the continuation on the
context.
"""
from __future__ import annotations

import dataclasses
import random
from typing import Sequence

from xalign_jax.evaluation.tasks import Item
from xalign_jax.evaluation.templates import EOS_TEXT, Template


@dataclasses.dataclass(frozen=True)
class Prompt:
    context: str
    continuation: str

    @property
    def text(self) -> str:
        return self.context + self.continuation


def candidates(template: Template, item: Item) -> tuple[str, ...]:
    """The strings that fill ``{choice}``: the template's verbalizers, else the item's own options."""
    options = template.verbalizers or item.options
    if not options:
        raise ValueError(f"{item.source}: template {template.task}/{template.name} has no verbalizers and the item "
                         "has no options")
    return options


def connector_text(template: Template, eos_token: str | None) -> str:
    """The template's connector, with the reference's literal ``</s>`` replaced by the tokenizer's EOS text.

    The reference relies on HF tokenizers parsing ``</s>`` as the EOS token (true for XGLM/BLOOM/Llama-2); a
    tokenizer whose EOS is spelled differently (Gemma ``<eos>``, Llama-3 ``<|end_of_text|>``) gets its own spelling,
    so the demonstrations stay separated by the EOS id as the reference intends.
    """
    if template.connector == EOS_TEXT and eos_token:
        return eos_token
    return template.connector


def select_demos(pool: Sequence[Item], k: int, seed: int, *, evaluated: Item | None = None,
                 per_item: bool = False) -> list[Item]:
    """The first ``k`` pool items after a ``random.Random`` shuffle, skipping any the evaluated item must not see."""
    if k <= 0:
        return []
    rng = random.Random(f"{seed}:{evaluated.key if evaluated else None}" if per_item else seed)
    order = list(pool)
    rng.shuffle(order)
    demos = [item for item in order if evaluated is None or not evaluated.must_not_see(item)][:k]
    if len(demos) < k:
        raise ValueError(f"{k} demonstrations requested but the pool has only {len(demos)} usable items")
    return demos


def render_demos(template: Template, demos: Sequence[Item], connector: str) -> str:
    """Each demonstration filled with its gold answer, followed by the connector."""
    return "".join(template.render_example(d.fields, candidates(template, d)[d.label]) + connector for d in demos)


def build_prompts(template: Template, item: Item, demo_text: str) -> list[Prompt]:
    """One prompt per candidate of ``item``."""
    before, after = template.query_parts(item.fields)
    return [Prompt(demo_text + before, choice + after if "{choice}" in template.query else after)
            for choice in candidates(template, item)]

"""The default AFP training set, built on the fly from shared/data (never committed: licences, and it is cheap).

Why this mix (the paper's Bactrian-X + OPUS data are not available offline, AFP_SPEC §2.1):
  * CIF half: bilingual en-zh cross-lingual instruction following (AFP_SPEC §2.3 templates) from the one Alpaca
    chunk whose English and Chinese items are verifiably aligned and fully translated (alpaca_en_zh 15323-18280,
    2,957 items); its aligned `instruction` fields are the contrastive pairs, as in the reference.
  * translation half: en <-> every other requested language present in SIB-200, from the SIB-200 TRAIN split
    (human FLORES-200 translations, 701 sentences per language, multi-way parallel). dev/test stay untouched for
    evaluation; the translation pair itself is the contrastive pair. This is what brings in languages, like
    Swahili, that have no instruction data here.
  * Tatoeba is NOT used: it is the retrieval evaluation set.
  * Held-out filter on: nothing that occurs in an evaluation test set gets in (a handful of Alpaca items do).
Without zh among the languages there is no instruction data, and the set is translation records only.
Both halves come from one seed and are shuffled together; building 6,000 records takes about two seconds.
"""
from __future__ import annotations

import os
import pathlib
import random
from typing import Sequence

from xalign_jax.data import build
from xalign_jax.data.languages import FLORES_CODES
from xalign_jax.data.records import write_records

CIF_LANGUAGES = ("en", "zh")
CIF_SHARE = 0.5  # fraction of CIF records when instruction data exists for the requested languages
ALPACA_DIR = "alpaca_en_zh"
FLORES_DIR = "sib200_flores"


def recipe_configs(data_dir: str | os.PathLike, languages: Sequence[str], num_records: int,
                   seed: int) -> list[build.BuildConfig]:
    """The builder configurations of the default recipe (one per part)."""
    languages = tuple(languages)
    if len(languages) < 2 or languages[0] != "en":
        raise ValueError(f"the default recipe pivots on English: languages must start with 'en' and name at least "
                         f"one other language, got {list(languages)}")
    missing = [lang for lang in languages if lang not in FLORES_CODES]
    if missing:
        raise ValueError(f"languages {missing} have no SIB-200 folder in shared/data; available: "
                         f"{' '.join(sorted(FLORES_CODES))}")
    data_dir = pathlib.Path(data_dir)
    with_cif = all(lang in languages for lang in CIF_LANGUAGES)
    cif_records = round(num_records * CIF_SHARE) if with_cif else 0
    configs = [build.BuildConfig(mode="translation", languages=languages, num_records=num_records - cif_records,
                                 parallel=(f"flores:{data_dir / FLORES_DIR}",), flores_splits=("train",), seed=seed,
                                 data_dir=str(data_dir))]
    if cif_records:  # a different seed, so that the two parts do not replay the same random stream
        configs.append(build.BuildConfig(mode="bilingual", languages=CIF_LANGUAGES, num_records=cif_records,
                                         instructions=(str(data_dir / ALPACA_DIR),), instruction_format="alpaca",
                                         pair_sources=("instruction",), seed=seed + 1, data_dir=str(data_dir)))
    return configs


def build_default_training_set(data_dir: str | os.PathLike, out_path: str | os.PathLike, *,
                               languages: Sequence[str] = ("en", "zh", "sw"), num_records: int = 6000,
                               seed: int = 0) -> build.BuildSummary:
    """Build the default recipe into `out_path` (JSON lines) and return its summary."""
    if num_records < 2:
        raise ValueError(f"num_records must be at least 2, got {num_records}")
    records, summaries = [], []
    for config in recipe_configs(data_dir, languages, num_records, seed):
        part, summary = build.build_records(config)
        records += part
        summaries.append(summary)
    random.Random(seed).shuffle(records)
    write_records(out_path, records)
    return build.BuildSummary.combine(summaries)

"""Build AFP training records (JSON lines) from instruction corpora and parallel text.

    python -m xalign_jax.data.build --mode bilingual --languages en zh --out train.jsonl \\
        --instructions ../shared/data/alpaca_en_zh --instruction-format alpaca
    python -m xalign_jax.data.build --mode translation --languages en zh sw --out trans.jsonl \\
        --parallel flores:../shared/data/sib200_flores --num-records 3000

Modes (AFP_SPEC §2.3-2.5; the first language is the pivot):
  bilingual     2 languages, cross-lingual instruction-following (CIF) records from aligned instruction items.
  multilingual  >= 3 languages, CIF records pivot <-> each other language (the reference calls it "crosslingual").
  translation   >= 2 languages, translation records pivot <-> each other language from parallel pairs.

Instruction layouts (`--instruction-format`; details in xalign_jax/data/sources.py):
  bactrian  DIR/{lang}.json: JSON list of {id, instruction, input, output} (Bactrian-X).
  alpaca    DIR/{lang}/alpaca_data-<start>-<end>.{lang}.json without ids (id = Alpaca index = start + position).
            Only complete chunks are accepted, and `--alpaca-chunks` defaults to 15323-18280: the one chunk of
            shared/data/alpaca_en_zh whose en and zh items are verifiably 1:1 and fully translated (the other
            chunks dropped or merged items upstream, so positions stop being ids; see its SOURCE.md).
  hf        a local `datasets` folder DIR/{lang} (save_to_disk) or DIR/{lang}.parquet|.jsonl|.json; never the hub.
  A file may be named instead of a DIR; its language is the last dot-field of its name (zh.json, x.zh.json).

Contrastive pairs (`--pair-source`): a field of the aligned instruction items (`instruction`, the reference's
choice; `input`; `output`, a translation only where outputs were translated) and/or `parallel` (the `--parallel`
sentences). Default: `parallel` when `--parallel` is given, else `instruction`. Pairs are deduplicated on their
normalised text, untranslated (identical) pairs dropped, pairs longer than `--max-pair-chars` dropped.

Fixes relative to the reference generator (AFP_SPEC §7.15), undone by `--reference` where a comparison needs it:
  * exactly `--num-records` records (default int(repeat x units)); `--reference` writes the extra +1 record;
  * items are joined on their id, not on sorted position; ids missing in a language are counted and left out;
  * multilingual: the pair language is the record's non-pivot language (`--reference`: drawn before the
    monolingual override, so a zh->zh record may carry an en-th pair).
Held-out filter (on unless `--no-heldout-filter`): any item or pair with a text field that is, or has a sentence
or quoted sentence that is (after normalisation), a sentence of an evaluation test set under `--data-dir` is left
out (xalign_jax/data/heldout.py).
Reproducible: one `random.Random(--seed)` drives every draw. A summary (records per direction, pairs per language
pair, everything dropped and why) is printed at the end. Bad input stops with `file:line-or-item: field: problem`
unless `--skip-bad`, which counts and reports the skipped items instead.
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import pathlib
import random
import sys
from typing import Any, Sequence

from xalign_jax.config_defaults import DEFAULT_DATA_DIR
from xalign_jax.data import align, generate, sources
from xalign_jax.data.heldout import HeldoutFilter
from xalign_jax.data.languages import language_name
from xalign_jax.data.records import AFPRecord, write_records

MODES = ("bilingual", "multilingual", "translation")
PAIR_SOURCES = align.INSTRUCTION_FIELDS + ("parallel",)
DEFAULT_MAX_PAIR_CHARS = 300  # keeps every Alpaca instruction and 99.3% of the SIB-200 train sentences


@dataclasses.dataclass(frozen=True)
class BuildConfig:
    mode: str
    languages: tuple[str, ...]
    num_records: int | None = None
    cross_probability: float = 0.5
    change_probability: float = 0.5
    repeat: float = 3.0
    seed: int = 0
    instructions: tuple[str, ...] = ()
    instruction_format: str = "bactrian"
    alpaca_chunks: tuple[str, ...] = sources.ALPACA_CLEAN_CHUNKS
    parallel: tuple[str, ...] = ()
    flores_splits: tuple[str, ...] = ("train",)
    pair_sources: tuple[str, ...] | None = None
    max_pair_chars: int | None = DEFAULT_MAX_PAIR_CHARS
    heldout_filter: bool = True
    data_dir: str = DEFAULT_DATA_DIR
    skip_bad: bool = False
    reference: bool = False

    @property
    def pivot(self) -> str:
        return self.languages[0]

    @property
    def resolved_pair_sources(self) -> tuple[str, ...]:
        return self.pair_sources or (("parallel",) if self.parallel else ("instruction",))

    def validate(self) -> None:
        counts = {"bilingual": (2, 2), "multilingual": (3, 99), "translation": (2, 99)}
        if self.mode not in counts:
            raise ValueError(f"--mode {self.mode!r} is not one of {MODES}")
        low, high = counts[self.mode]
        if not low <= len(self.languages) <= high or len(set(self.languages)) != len(self.languages):
            raise ValueError(f"--mode {self.mode} needs {low}{'' if low == high else '+'} distinct languages, "
                             f"got {list(self.languages)}")
        for lang in self.languages:
            language_name(lang)
        for name in ("cross_probability", "change_probability"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"--{name.replace('_', '-')} must be in [0, 1], got {getattr(self, name)}")
        if self.repeat <= 0 or (self.num_records is not None and self.num_records <= 0):
            raise ValueError(f"--repeat and --num-records must be positive, got {self.repeat}, {self.num_records}")
        unknown = set(self.resolved_pair_sources) - set(PAIR_SOURCES)
        if unknown:
            raise ValueError(f"--pair-source {sorted(unknown)} not among {PAIR_SOURCES}")
        if "parallel" in self.resolved_pair_sources and not self.parallel:
            raise ValueError("--pair-source parallel needs at least one --parallel source")
        needs_items = self.mode != "translation" or set(self.resolved_pair_sources) & set(align.INSTRUCTION_FIELDS)
        if needs_items and not self.instructions:
            raise ValueError(f"--mode {self.mode} with pair sources {self.resolved_pair_sources} needs --instructions")


@dataclasses.dataclass
class BuildSummary:
    records: int
    directions: collections.Counter
    pair_languages: collections.Counter
    dropped: sources.DropLog
    heldout_removed: int

    @classmethod
    def of(cls, records: Sequence[AFPRecord], dropped: sources.DropLog, heldout_removed: int) -> "BuildSummary":
        """Counts are taken from the records themselves, so the summary describes what was actually written."""
        return cls(records=len(records),
                   directions=collections.Counter(f"{r.src_lang}->{r.tgt_lang}" for r in records),
                   pair_languages=collections.Counter(f"{r.sent0_lang}-{r.sent1_lang}" for r in records),
                   dropped=dropped, heldout_removed=heldout_removed)

    @classmethod
    def combine(cls, parts: Sequence["BuildSummary"]) -> "BuildSummary":
        dropped = sources.DropLog()
        for part in parts:
            dropped.merge(part.dropped)
        return cls(records=sum(p.records for p in parts), directions=sum((p.directions for p in parts),
                   collections.Counter()), pair_languages=sum((p.pair_languages for p in parts), collections.Counter()),
                   dropped=dropped, heldout_removed=sum(p.heldout_removed for p in parts))

    def to_dict(self) -> dict[str, Any]:
        return {"records": self.records, "directions": dict(sorted(self.directions.items())),
                "pair_languages": dict(sorted(self.pair_languages.items())),
                "dropped": dict(sorted(self.dropped.counts.items())), "heldout_removed": self.heldout_removed}

    def __str__(self) -> str:
        lines = [f"records: {self.records}"]
        lines += [f"  direction {k}: {v}" for k, v in sorted(self.directions.items())]
        lines += [f"  contrastive pair {k}: {v}" for k, v in sorted(self.pair_languages.items())]
        lines.append(f"held-out (evaluation test) texts removed: {self.heldout_removed}")
        lines.append(f"dropped: {sum(self.dropped.counts.values())}")
        lines += [f"  {reason}: {count}   [{self.dropped.examples.get(reason, '')}]"
                  for reason, count in sorted(self.dropped.counts.items())]
        return "\n".join(lines)


def _pair_groups(config: BuildConfig, items: align.ItemsByLanguage, ids: list[str],
                 drops: sources.DropLog) -> list[sources.AlignedGroup]:
    groups: list[sources.AlignedGroup] = []
    for source in config.resolved_pair_sources:
        if source != "parallel":
            groups += align.instruction_groups(items, ids, source)
            continue
        for spec in map(sources.ParallelSpec.parse, config.parallel):
            groups += sources.read_parallel(spec, config.languages, drops, flores_splits=config.flores_splits,
                                            skip_bad=config.skip_bad)
    return groups


def _pair_pools(config: BuildConfig, groups: list[sources.AlignedGroup], drops: sources.DropLog,
                heldout: HeldoutFilter | None) -> dict[tuple[str, str], list[align.Pair]]:
    """The (pivot, language) pair pools; a group that can give none of them (no pivot side, or no side in another
    of the languages: a zh-sw or en-fr file for en, zh, sw) is counted as dropped, not skipped silently."""
    others = set(config.languages[1:])
    for group in groups:
        if config.pivot not in group or not others & set(group):
            drops.add(f"pair: aligned group with no {config.pivot}-X side among the languages",
                      f"sides {sorted(group)}: {next(iter(group.values()))[:60]}")
    pools = {(config.pivot, lang): align.collect_pairs(groups, config.pivot, lang, drops,
                                                       max_chars=config.max_pair_chars, heldout=heldout)
             for lang in config.languages[1:]}
    empty = [f"{a}-{b}" for (a, b), pairs in pools.items() if not pairs]
    if empty:
        raise ValueError(f"no contrastive/translation pairs left for {empty} from sources "
                         f"{config.resolved_pair_sources} (dropped: {dict(drops.counts)})")
    return pools


def _sampler(config: BuildConfig) -> generate.DirectionSampler:
    if config.mode == "bilingual":
        return generate.bilingual_sampler(config.languages, config.cross_probability)
    return generate.multilingual_sampler(config.languages, config.cross_probability, config.change_probability,
                                         reference=config.reference)


def build_records(config: BuildConfig) -> tuple[list[AFPRecord], BuildSummary]:
    """All records of one build, in random order, and the summary of what went in and what was left out."""
    config.validate()
    rng, drops = random.Random(config.seed), sources.DropLog()
    heldout = HeldoutFilter.from_data_dir(config.data_dir) if config.heldout_filter else None
    items, ids = {}, []
    if config.instructions:
        items = sources.load_instructions(config.instructions, config.languages, config.instruction_format, drops,
                                          alpaca_chunks=config.alpaca_chunks, skip_bad=config.skip_bad)
        ids = align.aligned_ids(items, drops, heldout)
    pools = _pair_pools(config, _pair_groups(config, items, ids, drops), drops, heldout)
    if config.mode == "translation":
        units = sum(map(len, pools.values()))
        count = config.num_records or generate.record_count(units, config.repeat, reference=config.reference)
        records = generate.translation_records(pools, count, config.change_probability, rng)
    else:
        count = config.num_records or generate.record_count(len(ids), config.repeat, reference=config.reference)
        streams = {b: align.ShuffledCycle(pairs, rng, f"{a}-{b} pairs") for (a, b), pairs in pools.items()}
        records = generate.cif_records(items, ids, count, _sampler(config), streams, config.pivot, rng)
    return records, BuildSummary.of(records, drops, heldout.removed if heldout else 0)


def build_training_set(config: BuildConfig, out_path: str | pathlib.Path) -> BuildSummary:
    records, summary = build_records(config)
    write_records(out_path, records)
    return summary


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m xalign_jax.data.build", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--mode", required=True, choices=MODES)
    add("--languages", required=True, nargs="+", metavar="LANG",
        help="ISO 639-1 codes; the first is the pivot (e.g. en zh sw)")
    add("--out", required=True, type=pathlib.Path, help="output JSON-lines file (written atomically)")
    add("--num-records", type=int, help="exact number of records (default: int(repeat x items or pairs))")
    add("--cross-probability", type=float, default=0.5, help="P(src != tgt) for CIF records")
    add("--change-probability", type=float, default=0.5,
        help="multilingual: P(other -> pivot | cross); translation: P(direction swapped)")
    add("--repeat", type=float, default=3.0, help="uses of each item / pair when --num-records is not given")
    add("--seed", type=int, default=0)
    add("--instructions", nargs="+", default=(), metavar="DIR_OR_FILE",
        help="instruction data (see Instruction layouts)")
    add("--instruction-format", choices=sources.INSTRUCTION_FORMATS, default="bactrian")
    add("--alpaca-chunks", nargs="+", default=sources.ALPACA_CLEAN_CHUNKS, metavar="START-END",
        help="alpaca layout: chunks to read (default: the one cleanly aligned en-zh chunk)")
    add("--parallel", nargs="+", default=(), metavar="KIND:PATH",
        help="tsv:FILE | tsv:SRC-TGT:FILE | tatoeba:DIR | flores:DIR (alias sib200:DIR)")
    add("--flores-splits", nargs="+", default=("train",), help="FLORES/SIB-200 splits to read (default train)")
    add("--pair-source", nargs="+", dest="pair_sources", choices=PAIR_SOURCES,
        help="where contrastive pairs come from (default: parallel if --parallel, else instruction)")
    add("--max-pair-chars", type=int, default=DEFAULT_MAX_PAIR_CHARS,
        help="drop pairs with a side longer than this many characters (0: no limit)")
    add("--no-heldout-filter", dest="heldout_filter", action="store_false",
        help="keep sentences of evaluation test sets (only for measuring leakage)")
    add("--data-dir", default=DEFAULT_DATA_DIR, help="where the evaluation test sets are (held-out filter)")
    add("--skip-bad", action="store_true", help="count and skip malformed input items instead of stopping")
    add("--reference", action="store_true", help="reproduce the reference's record count and pair-language draw")
    add("--summary-json", type=pathlib.Path, help="also write the summary as JSON here")
    return parser


def config_from_args(args: argparse.Namespace) -> BuildConfig:
    fields = {f.name for f in dataclasses.fields(BuildConfig)}
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in vars(args).items() if k in fields}
    values["max_pair_chars"] = values["max_pair_chars"] or None
    return BuildConfig(**values)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        summary = build_training_set(config_from_args(args), args.out)
    except (ValueError, OSError) as error:
        parser.exit(2, f"error: {error}\n")
    print(f"wrote {args.out}\n{summary}")
    if args.summary_json:
        args.summary_json.write_text(json.dumps(summary.to_dict(), indent=1, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""AFP records -> token ids: the CLM example with its supervised-token mask, and the two contrastive sentences.

Prompt masking (``prompt_masking``):
  * ``offsets`` (default): the clm_text is tokenized once with character offsets. A token is supervised iff it
    contains at least one answer character, i.e. it ends after ``clm_prompt_len`` (or, zero-width, sits at or after
    it). A token straddling the prompt/answer boundary therefore IS supervised: it carries answer characters, so no
    answer character is ever left unsupervised, at the price of one prompt character (usually the space after
    "Answer in X:") inside a supervised token. Special tokens added by the tokenizer (BOS) are not supervised,
    except the closing EOS (below).
  * ``reference``: AFP_SPEC §1.3/§7.9. The prompt prefix is tokenized separately, the common token prefix of the
    two tokenizations is masked, and every BOS/EOS id is supervised wherever it occurs (even inside the prompt).
    Measured on real Alpaca en/zh records with the XLM-R and Gemma-3 tokenizers, the two rules supervise exactly
    the same tokens except BOS; they part where a literal "</s>" sits in a text or a tokenizer re-segments the prompt.

Special tokens follow the tokenizer's own ``add_special_tokens=True`` convention (AFP_SPEC §6.2: XGLM prepends
``</s>``, Llama/Gemma ``<s>``/``<bos>``, BLOOM nothing). Our choice, configurable by ``append_eos``: one EOS closes
every CLM example and is supervised, so the model learns to stop after an answer (a tokenizer that already closes
with EOS is not given a second one).

Truncation to ``seq_len`` (one packed row): an example whose answer is cut away entirely is dropped and counted
(training on a prompt alone would teach nothing and the reference silently keeps such prompts, §7.8). An answer cut
partially keeps what remains, WITHOUT the closing EOS (the model must not learn to stop mid-answer); counted too.
Contrastive sentences are tokenized raw with the default special tokens and cut to the largest bucket (counted).
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
from typing import Any, Sequence

import numpy as np

from xalign_jax.data.records import AFPRecord

log = logging.getLogger(__name__)

MASKING_MODES = ("offsets", "reference")
CHUNK_RECORDS = 10_000
# A training text's "<eos>" or "<mask>" is text: parsed as the control token it would become an EOS or a mask in
# mid-answer, and the special-tokens mask would leave it unsupervised. Only the tokenizer's own BOS/EOS are special.
# (XLM-R's tokenizer.json also has its control strings among its Unigram pieces, so there they still match.)
TEXT_IS_DATA = {"split_special_tokens": True}


@dataclasses.dataclass(frozen=True)
class TokenizedExample:
    """One record's token ids. ``clm_ids``/``clm_labels`` are None when its CLM example was dropped."""
    sent0_ids: np.ndarray            # int32 [n0]
    sent1_ids: np.ndarray            # int32 [n1]
    clm_ids: np.ndarray | None       # int32 [n]
    clm_labels: np.ndarray | None    # bool [n]: True = supervised (predicted by the previous token)


@dataclasses.dataclass
class TokenizeReport:
    """Counts of everything kept, cut and dropped; ``str()`` is the one-line summary the trainer logs."""
    records: int = 0
    clm_kept: int = 0
    clm_dropped_answer_truncated: int = 0
    clm_answer_partially_truncated: int = 0     # some answer tokens, or only the closing EOS, were cut
    clm_tokens: int = 0
    supervised_tokens: int = 0                  # targets: labels[1:] (position 0 is never predicted)
    contrastive_sentences_truncated: int = 0
    seconds: float = 0.0

    def __str__(self) -> str:
        return (f"{self.records} records: {self.clm_kept} CLM examples kept "
                f"({self.clm_tokens} tokens, {self.supervised_tokens} supervised), "
                f"{self.clm_dropped_answer_truncated} dropped because truncation cut the whole answer away, "
                f"{self.clm_answer_partially_truncated} with the answer partially truncated; "
                f"{self.contrastive_sentences_truncated} contrastive sentences truncated; {self.seconds:.1f}s")


@dataclasses.dataclass
class TokenizedCorpus:
    examples: list[TokenizedExample]
    report: TokenizeReport
    pad_id: int

    def __len__(self) -> int:
        return len(self.examples)

    def digest(self) -> str:
        """sha256 of every example's token ids and labels, in order: what a saved data position must belong to
        (the same record count from another file, tokenizer or masking rule would resume into other examples)."""
        sha = hashlib.sha256()
        for example in self.examples:
            for array in (example.sent0_ids, example.sent1_ids, example.clm_ids, example.clm_labels):
                sha.update(b"-" if array is None else np.asarray(array).tobytes() + b"|")
        return sha.hexdigest()


def special_ids(tokenizer: Any) -> tuple[int | None, int | None, int]:
    """(bos, eos, pad) ids; pad falls back to eos, then 0 (pad positions are masked, the value never matters)."""
    bos, eos, pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    if pad is None:
        pad = eos if eos is not None else 0
    return bos, eos, pad


def offsets_label_mask(offsets: Sequence[tuple[int, int]], special: Sequence[int], prompt_len: int) -> np.ndarray:
    """Supervised iff a non-special token holds an answer character (ends after, or zero-width at/after, the prompt)."""
    starts = np.asarray([o[0] for o in offsets], dtype=np.int64)
    ends = np.asarray([o[1] for o in offsets], dtype=np.int64)
    answer = (ends > prompt_len) | ((starts == ends) & (starts >= prompt_len))
    return answer & ~np.asarray(special, dtype=bool)


def reference_label_mask(ids: Sequence[int], prompt_ids: Sequence[int], prompt_len: int,
                         bos: int | None, eos: int | None) -> np.ndarray:
    """The reference rule (AFP_SPEC §1.3): mask the common token prefix with the prompt, then OR in every BOS/EOS."""
    ids = np.asarray(ids, dtype=np.int64)
    masked = 0
    if prompt_len > 0:
        limit = min(len(ids), len(prompt_ids))
        differs = np.nonzero(ids[:limit] != np.asarray(prompt_ids[:limit], dtype=np.int64))[0]
        masked = int(differs[0]) if differs.size else limit
    labels = np.arange(len(ids)) >= masked
    for special in (bos, eos):
        if special is not None:
            labels |= ids == special
    return labels


def _close_with_eos(ids: list[int], labels: np.ndarray, special: Sequence[int],
                    eos: int) -> tuple[list[int], np.ndarray]:
    """Append a supervised EOS, or supervise the tokenizer's own closing EOS if it already added one."""
    if ids and ids[-1] == eos and special[-1]:
        labels = labels.copy()
        labels[-1] = True
        return ids, labels
    return ids + [eos], np.append(labels, True)


def tokenize_clm(records: Sequence[AFPRecord], tokenizer: Any, *, seq_len: int, mode: str = "offsets",
                 append_eos: bool = True, report: TokenizeReport | None = None
                 ) -> list[tuple[np.ndarray, np.ndarray] | None]:
    """(ids int32, labels bool) per record, or None where truncation cut the whole answer away."""
    if mode not in MASKING_MODES:
        raise ValueError(f"data.prompt_masking: {mode!r} is not one of {MASKING_MODES}")
    report = report if report is not None else TokenizeReport()
    bos, eos, _ = special_ids(tokenizer)
    if append_eos and eos is None:
        raise ValueError("data.append_eos: the tokenizer has no eos_token; set append_eos=False or give it one")
    texts = [r.clm_text for r in records]
    enc = tokenizer(texts, add_special_tokens=True, return_offsets_mapping=(mode == "offsets"),
                    return_special_tokens_mask=True, verbose=False, **TEXT_IS_DATA)
    if mode == "reference":
        prompts = tokenizer([r.prompt for r in records], add_special_tokens=True, verbose=False,
                            **TEXT_IS_DATA)["input_ids"]
    out: list[tuple[np.ndarray, np.ndarray] | None] = []
    for i, record in enumerate(records):
        ids, special = list(enc["input_ids"][i]), enc["special_tokens_mask"][i]
        if mode == "offsets":
            labels = offsets_label_mask(enc["offset_mapping"][i], special, record.clm_prompt_len)
        else:
            labels = reference_label_mask(ids, prompts[i], record.clm_prompt_len, bos, eos)
        if append_eos:
            ids, labels = _close_with_eos(ids, labels, special, eos)
        out.append(_fit(ids, labels, seq_len, report))
    return out


def _fit(ids: list[int], labels: np.ndarray, seq_len: int, report: TokenizeReport):
    """Truncate to one row and count what happened. Position 0 is never a target (the token at t is predicted
    from those before it), so a label there, the reference rule's BOS, neither keeps an example nor counts."""
    kept_ids, kept_labels = np.asarray(ids[:seq_len], np.int32), labels[:seq_len]
    targets = int(kept_labels[1:].sum())
    if len(ids) > seq_len:
        if not targets:
            report.clm_dropped_answer_truncated += 1
            return None
        report.clm_answer_partially_truncated += 1
    report.clm_kept += 1
    report.clm_tokens += len(kept_ids)
    report.supervised_tokens += targets
    return kept_ids, kept_labels


def tokenize_sentences(sentences: Sequence[str], tokenizer: Any, *, max_len: int, field: str,
                       where: Sequence[str] | None = None, report: TokenizeReport | None = None) -> list[np.ndarray]:
    """Raw sentences with the default special tokens, cut to ``max_len`` tokens (cuts are counted); ``where``
    names each sentence's record in errors (its file and line)."""
    report = report if report is not None else TokenizeReport()
    out = []
    encoded = tokenizer(list(sentences), add_special_tokens=True, verbose=False, **TEXT_IS_DATA)["input_ids"]
    for i, ids in enumerate(encoded):
        if not ids:
            raise ValueError(f"{where[i] if where else f'sentence {i}'}: {field}: {sentences[i]!r} tokenizes to no "
                             "tokens (nothing to pool)")
        if len(ids) > max_len:
            report.contrastive_sentences_truncated += 1
        out.append(np.asarray(ids[:max_len], np.int32))
    return out


def _tokenize_chunk(records: Sequence[AFPRecord], first: int, tokenizer: Any, data_cfg: Any,
                    report: TokenizeReport) -> list[TokenizedExample]:
    clm = tokenize_clm(records, tokenizer, seq_len=int(data_cfg.seq_len), mode=str(data_cfg.prompt_masking),
                       append_eos=bool(data_cfg.append_eos), report=report)
    sentences = {}
    where = [r.source or f"record {first + i} (0-based)" for i, r in enumerate(records)]
    for field in ("sent0", "sent1"):
        sentences[field] = tokenize_sentences([getattr(r, field) for r in records], tokenizer, field=field,
                                              max_len=int(max(data_cfg.cl_buckets)), where=where, report=report)
    return [TokenizedExample(s0, s1, *(c if c is not None else (None, None)))
            for s0, s1, c in zip(sentences["sent0"], sentences["sent1"], clm)]


def tokenize_corpus(records: Sequence[AFPRecord], tokenizer: Any, data_cfg: Any) -> TokenizedCorpus:
    """Every record tokenized once, up front: about 3,000 records per second with a fast tokenizer on one core.

    Chunked so that the tokenizer's per-token offset lists stay small in memory, with a progress line per chunk.
    """
    start = time.perf_counter()
    report = TokenizeReport(records=len(records))
    examples: list[TokenizedExample] = []
    for first in range(0, len(records), CHUNK_RECORDS):
        examples += _tokenize_chunk(records[first:first + CHUNK_RECORDS], first, tokenizer, data_cfg, report)
        log.info("tokenized %d/%d records (%.1fs)", len(examples), len(records), time.perf_counter() - start)
    report.seconds = time.perf_counter() - start
    return TokenizedCorpus(examples, report, pad_id=special_ids(tokenizer)[2])

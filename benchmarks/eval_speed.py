"""Items/s of the jitted evaluator vs the reference procedure (PyTorch, one item per batch, every candidate fully
re-encoded, log2 of the softmax) on the same weights and the same real items.

The reference evaluates in fp32 on one GPU and with bf16 weights under DeepSpeed (AFP_SPEC §3.4); both loops are
timed (``--reference-dtypes``). Our scorer runs in the same two dtypes (``--dtypes``; bf16 weights and products with
fp32 accumulation, ``layers.dense``). Each row gives the speed-up of each of our dtypes over the loop in the same
dtype, and ``speedup``: our faster over the reference's faster. Agreement is reported against the fp32 loop (the
bf16 loop's scores differ from it by its rounding, ours in bf16 by ours). Each loop runs in a process of its own
(``benchmarks/eval_reference.py``), as the train step's reference does in ``xalign_jax.bench``.

    OMP_WAIT_POLICY=PASSIVE HF_HUB_OFFLINE=1 python benchmarks/eval_speed.py --items 100 --out eval_speed.json

On an accelerator add ``--torch-device cuda`` (the scorer uses JAX's default device, the same GPU).

The model is a random small Llama (sizes below) with the real XLM-R tokenizer, saved in HF format and loaded by
both sides (accuracy is meaningless, only speed and score agreement are reported), or with ``--model DIR`` a real
HF checkpoint such as the main job's converted Gemma-3-270M. The scorer runs as the evaluator does, leaving out the
terms all of an item's candidates share; agreement is reported on the candidates' score differences within each
item (``max_abs_within_item_diff_*``), which decide the predictions.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import tempfile
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from tests.test_tokenize import xlmr_tokenizer  # noqa: E402
from xalign_jax import bench, models  # noqa: E402
from xalign_jax.evaluation import fewshot, scorer, tasks, templates  # noqa: E402
from xalign_jax.evaluation.runner import default_eval_config  # noqa: E402

WORKLOADS = (("xcopa", "zh"), ("pawsx", "en"))
DTYPES = ("float32", "bfloat16")


def _save_model(tok, directory: pathlib.Path, hidden: int, layers: int) -> None:
    config = transformers.LlamaConfig(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 64), num_key_value_heads=max(1, hidden // 64),
        max_position_embeddings=2048, tie_word_embeddings=True, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(directory)
    tok.save_pretrained(directory)


def _prompts(task: str, language: str, shots: int, items: int, eos: str) -> list[list[fewshot.Prompt]]:
    template = templates.get_template(task, "en")
    pool = tasks.load_part(task, "en", "demo")
    demos = fewshot.render_demos(template, fewshot.select_demos(pool, shots, 0), eos)
    return [fewshot.build_prompts(template, item, demos) for item in tasks.load_part(task, language, "test")[:items]]


def prompt_texts(per_item: list[list[fewshot.Prompt]]) -> list[list[str]]:
    """Each item's candidates as the full texts the reference loop tokenizes."""
    return [[p.text for p in prompts] for prompts in per_item]


def write_items(per_item: list[list[fewshot.Prompt]], workdir: pathlib.Path) -> pathlib.Path:
    """The items' texts as the JSON file a loop process reads (``benchmarks/eval_reference.py``)."""
    path = workdir / "items.json"
    path.write_text(json.dumps(prompt_texts(per_item)))
    return path


def _reference(loop: bench.JsonLinesWorker, items_path: pathlib.Path) -> tuple[float, np.ndarray]:
    """The reference loop's (seconds, scores in nats) over the items in ``items_path``, run in its process."""
    reply = loop.request(str(items_path))
    return reply["seconds"], np.array(reply["scores"])


def work_ratio(tok, per_item: list[list[fewshot.Prompt]]) -> float:
    """Vocabulary positions the reference loop computes (every token of every candidate, padded to the item's
    longest) over those the scorer computes (distinct prefixes, without the ones all of an item's candidates
    share): the speed-up at equal matmul rates, since with a 250k vocabulary the projection is most of the work."""
    reference = sum(len(prompts) * max(len(tok(p.text)["input_ids"]) for p in prompts) for prompts in per_item)
    rows = scorer.encode_prompts(tok, [p for prompts in per_item for p in prompts])
    plan = scorer.plan_scoring(rows, continuation_only=False, groups=item_groups(per_item))
    return reference / int((plan.owner_row >= 0).sum())


def item_groups(per_item: list[list[fewshot.Prompt]]) -> np.ndarray:
    """Each row's item index: the groups whose candidates the evaluator compares."""
    return np.repeat(np.arange(len(per_item)), [len(prompts) for prompts in per_item])


def within_item(scores: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Each candidate's score minus its item's first candidate's: what decides a prediction, and what the scorer's
    relative reference scores share with the reference loop's whole-string ones."""
    _, first, group_index = np.unique(groups, return_index=True, return_inverse=True)
    return scores - scores[first][group_index]


def _ours(ours: scorer.Scorer, tok, per_item) -> tuple[float, np.ndarray]:
    """As the evaluator scores a task: relative reference scores, grouped by item."""
    start = time.perf_counter()
    result = ours.score(scorer.encode_prompts(tok, [p for prompts in per_item for p in prompts]),
                        groups=item_groups(per_item))
    return time.perf_counter() - start, result.reference


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=100)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--batch-rows", type=int, default=16)
    parser.add_argument("--buckets", default=",".join(map(str, scorer.DEFAULT_BUCKETS)),
                        help="row length buckets, comma-separated")
    parser.add_argument("--model", default="", help="an HF directory with its tokenizer (e.g. the main job's "
                        "converted Gemma-3-270M) instead of the random Llama; both sides load it")
    parser.add_argument("--head-positions", type=int, default=0, help="positions per vocabulary call (0: the "
                        "scorer's default)")
    parser.add_argument("--unroll-layers", action="store_true", help="our model's blocks unrolled instead of a scan "
                        "(model.unroll_layers)")
    parser.add_argument("--out", default="eval_speed.json")
    parser.add_argument("--torch-device", default="cpu", help="where the reference loop runs (cpu, cuda)")
    parser.add_argument("--reference-dtypes", default="float32,bfloat16",
                        help="the reference loop's model dtypes, comma-separated (float32, bfloat16)")
    parser.add_argument("--dtypes", default="float32,bfloat16",
                        help="our scorer's model dtypes (weights and compute), comma-separated")
    args = parser.parse_args()
    for flag in ("reference_dtypes", "dtypes"):
        unknown = sorted(set(getattr(args, flag).split(",")) - set(DTYPES))
        if unknown:
            parser.error(f"--{flag.replace('_', '-')} {unknown}: choose from {list(DTYPES)}")
    machine = bench.machine_info()                            # before any work: its load average is the sitting's
    with tempfile.TemporaryDirectory() as tmp:
        if args.model:
            tok, directory = transformers.AutoTokenizer.from_pretrained(args.model), args.model
        else:
            tok, directory = xlmr_tokenizer(), tmp
            _save_model(tok, pathlib.Path(tmp), args.hidden, args.layers)
        loops = {dtype: bench.JsonLinesWorker(["-m", "benchmarks.eval_reference", directory, dtype, args.torch_device],
                                              f"the {dtype} reference loop")
                 for dtype in args.reference_dtypes.split(",")}
        options = {"batch_rows": args.batch_rows, "buckets": tuple(int(b) for b in args.buckets.split(",")),
                   "reference_scores": default_eval_config().reference_scores}
        if args.head_positions:
            options["head_positions"] = args.head_positions
        scorers = {dtype: scorer.Scorer(models.from_pretrained(directory, dtype=dtype, param_dtype=dtype,
                                                                unroll_layers=args.unroll_layers), **options)
                   for dtype in args.dtypes.split(",")}
        report = {"args": vars(args), "machine": machine, "results": []}
        for task, language in WORKLOADS:
            for shots in (0, 5):
                per_item = _prompts(task, language, shots, args.items, tok.eos_token)
                report["results"].append(workload_row(task, language, shots, per_item, tok, scorers, loops,
                                                      pathlib.Path(tmp)))
                print(" | ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                                 for k, v in report["results"][-1].items()), flush=True)
                pathlib.Path(args.out).write_text(json.dumps(report, indent=2))
        report["reference_processes"] = {dtype: {"threads": loop.ready["threads"], **loop.close()}
                                         for dtype, loop in loops.items()}
    pathlib.Path(args.out).write_text(json.dumps(report, indent=2))


def workload_row(task: str, language: str, shots: int, per_item: list[list[fewshot.Prompt]], tok,
                 scorers: dict[str, scorer.Scorer], loops: dict[str, bench.JsonLinesWorker],
                 workdir: pathlib.Path) -> dict:
    """One workload on both sides: items/s of each, the speed-ups, and the within-item agreement with the fp32
    loop."""
    groups = item_groups(per_item)
    row = {"task": task, "language": language, "shots": shots, "items": len(per_item),
           "work_ratio": work_ratio(tok, per_item)}
    ours, references = {}, {}
    for dtype, ours_scorer in scorers.items():
        compiles = scorer.compile_count()
        first, _ = _ours(ours_scorer, tok, per_item)                   # includes compilation
        ours[dtype] = _ours(ours_scorer, tok, per_item)
        row.update({f"ours_{dtype}_items_per_s": len(per_item) / ours[dtype][0],
                    f"ours_{dtype}_first_call_s": first,
                    f"ours_{dtype}_compiles": scorer.compile_count() - compiles})
    items_path = write_items(per_item, workdir)                         # once, for every loop precision
    for dtype, loop in loops.items():
        references[dtype] = _reference(loop, items_path)
        row[f"reference_{dtype}_items_per_s"] = len(per_item) / references[dtype][0]
    for dtype, (seconds, got) in ours.items():
        if dtype in references:
            row[f"speedup_{dtype}_vs_{dtype}"] = references[dtype][0] / seconds
        if "float32" in references:
            gaps = within_item(got, groups) - within_item(references["float32"][1], groups)
            row[f"max_abs_within_item_diff_{dtype}_vs_float32"] = float(np.max(np.abs(gaps)))
    row["speedup"] = min(s for s, _ in references.values()) / min(s for s, _ in ours.values())
    return row


if __name__ == "__main__":
    main()

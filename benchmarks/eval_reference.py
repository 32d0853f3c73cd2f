"""The reference's batch-1 evaluation loop (AFP_SPEC §3.4), and a process that runs it for ``eval_speed.py``.

    python -m benchmarks.eval_reference MODEL_DIR DTYPE DEVICE

loads the HF checkpoint in MODEL_DIR (fp32, then cast to DTYPE, as the reference's bf16 DeepSpeed runs) and its
tokenizer, answers ``{"ready": true, "threads": ...}``, then for each path read on stdin (a JSON file: a list of
items, each a list of its candidates' full prompt texts) runs the loop over those items and answers
``{"seconds": s, "scores": [...]}`` (one score per candidate, nats); at the end of stdin ``{"peak_rss_bytes": n}``.
A process of its own, as the train-step reference (``xalign_jax.bench.JsonLinesWorker``): the loop then has the
heap and the warm caches it has alone, not the scorer's.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json  # noqa: E402
import math  # noqa: E402
import pathlib  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

from benchmarks.torch_reference import answer_lines, reply_channel  # noqa: E402


def reference_loop(model: transformers.PreTrainedModel, tok, per_item: list[list[str]]) -> tuple[float, np.ndarray]:
    """The reference loop: per item, tokenize its candidates' texts padded together, one forward, the log2 of the
    softmax over the vocabulary (the reference computes ``log2(softmax(.))``, not ``log_softmax``: AFP_SPEC §3.4,
    §7.6), the targets' values masked and summed; (seconds, scores in nats, as the scorer's).

    Padded on the right whatever the tokenizer's default: under left padding (Gemma's) the reference's mask also
    scores each shorter row's first token from a pad position, a padding artefact of ~20 nats that is not the
    quantity the scorer computes (``tests/test_eval_scorer.py`` compares both sides under both paddings)."""
    tok.pad_token, tok.padding_side = tok.eos_token, "right"
    scores, start = [], time.perf_counter()
    for texts in per_item:
        batch = tok(texts, padding="longest", return_tensors="pt").to(model.device)
        with torch.no_grad():
            log2_prob = torch.log2(torch.softmax(model(**batch).logits.float(), dim=-1))
        picked = log2_prob[:, :-1].gather(2, batch.input_ids[:, 1:, None])[..., 0]
        scores.extend((picked * batch.attention_mask[:, 1:]).sum(dim=1).tolist())
    return time.perf_counter() - start, np.array(scores) * math.log(2)


def load_model(directory: str, dtype: str, device: str) -> transformers.PreTrainedModel:
    """The checkpoint in fp32, then cast to ``dtype`` on ``device``."""
    model = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    return model.to(device, getattr(torch, dtype))


def serve(directory: str, dtype: str, device: str) -> None:
    replies = reply_channel()
    torch.set_num_threads(os.cpu_count() or 1)
    tok, model = transformers.AutoTokenizer.from_pretrained(directory), load_model(directory, dtype, device)

    def answer(path: str) -> dict:
        seconds, scores = reference_loop(model, tok, json.loads(pathlib.Path(path).read_text()))
        return {"seconds": seconds, "scores": scores.tolist()}
    answer_lines(replies, answer)


if __name__ == "__main__":
    serve(*sys.argv[1:4])

"""The AFP reference training step in eager PyTorch on CPU: the baseline that ``xalign_jax.bench --torch`` times.

It reproduces the reference recipe (AFP_SPEC §1.2-1.4) on a transformers ``*ForCausalLM`` built from the same HF
config dict as the JAX model (random weights):
  1. contrastive pass: sent0 and sent1 stacked into [2B, L] through the WHOLE base decoder with
     ``output_hidden_states=True`` (the reference computes every layer even though it pools layer k);
  2. pooling: the hidden state of token ``sum(mask) - 1`` of ``hidden_states[k]`` (right padding, as the reference);
  3. one-directional InfoNCE, ``cross_entropy(cos(z0_i, z1_j) / temperature, arange(B))``;
  4. CLM pass without an attention mask, full [rows, T, vocab] logits shifted by one (a contiguous copy, as the
     reference's and transformers' loss code make), mean cross-entropy over the supervised tokens;
  5. ``loss = cl + 1.5 * clm``, backward, global-norm clipping at 1.0, ``torch.optim.AdamW`` step.
The batches hold the JAX pipeline's own host batches' tokens, laid out as the reference's collator lays them out
(``xalign_jax.bench.reference_collation``: sentences padded to the batch's longest, the CLM examples as one
unpadded stream cut into 512-token blocks), so both sides see the same tokens and each its own padding.

The bench runs it in a process of its own (``python -m benchmarks.torch_reference INPUT.npz``, ``serve``): the
reference's bf16 autocast step, run in the bench's own process, grew the heap both sides shared and slowed steps of
either side by 0.4-1.2 s (BENCHMARKS.md, "The blocks unrolled"). Separate processes keep separate heaps, as the
reference and our trainer have when each runs alone.

torch is imported here only (never on the training path). ``OMP_WAIT_POLICY=PASSIVE`` must be set before torch is
imported: on small shared CPUs torch's spinning OpenMP workers otherwise slow it down many times.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import json  # noqa: E402
import pathlib  # noqa: E402
import sys  # noqa: E402
from typing import Any, Callable, Mapping, Sequence, TextIO  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from xalign_jax.bench import IGNORE_INDEX, measured_step, memory_status  # noqa: E402


def build_model(hf_config: Mapping[str, Any], seed: int = 0, *, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """A randomly initialised ``*ForCausalLM`` for ``hf_config`` (a transformers config.json dict), in train mode."""
    import transformers

    torch.manual_seed(seed)
    config = transformers.AutoConfig.for_model(**dict(hf_config))
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.train()
    return model


def make_optimizer(model: torch.nn.Module, lr: float = 1e-5) -> torch.optim.Optimizer:
    """The reference's AdamW: betas (0.9, 0.999), eps 1e-8, no weight decay (AFP_SPEC §1.4)."""
    return torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)


def to_torch_batch(collated: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """A ``reference_collation`` batch (numpy) as int64 torch tensors."""
    return {k: torch.from_numpy(np.asarray(collated[k]).astype(np.int64))
            for k in ("sent0_ids", "sent0_mask", "sent1_ids", "sent1_mask", "clm_ids", "clm_labels")}


def last_token_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The reference's ``last-k`` pooling: the state at index ``sum(mask) - 1`` (correct for right padding)."""
    last = mask.sum(dim=1) - 1
    return hidden[torch.arange(hidden.shape[0]), last]


def info_nce(z0: torch.Tensor, z1: torch.Tensor, temperature: float) -> torch.Tensor:
    """One-directional InfoNCE: sent0 anchors, the batch's sent1 are the candidates (cosine eps 1e-8, fp32)."""
    sim = F.cosine_similarity(z0.float()[:, None, :], z1.float()[None, :, :], dim=-1, eps=1e-8) / temperature
    return F.cross_entropy(sim, torch.arange(z0.shape[0]))


def reference_losses(model: torch.nn.Module, batch: Mapping[str, torch.Tensor], *, layer: int,
                     temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(contrastive loss, CLM loss) exactly as the reference computes them: full passes, full logits."""
    ids = torch.cat([batch["sent0_ids"], batch["sent1_ids"]], dim=0)
    mask = torch.cat([batch["sent0_mask"], batch["sent1_mask"]], dim=0)
    hidden = model.base_model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[layer]
    z0, z1 = last_token_pool(hidden, mask).chunk(2, dim=0)
    cl_loss = info_nce(z0, z1, temperature)
    logits = model(input_ids=batch["clm_ids"]).logits
    shifted = logits[:, :-1].contiguous()
    clm_loss = F.cross_entropy(shifted.float().view(-1, shifted.shape[-1]), batch["clm_labels"][:, 1:].reshape(-1),
                               ignore_index=IGNORE_INDEX)
    return cl_loss, clm_loss


def reference_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: Mapping[str, torch.Tensor], *,
                   layer: int = 1, temperature: float = 0.05, cl_weight: float = 1.0, clm_weight: float = 1.5,
                   grad_clip: float = 1.0, bf16_autocast: bool = False) -> float:
    """One training step of the reference recipe; returns the loss (a host sync, as the reference's logging does)."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16_autocast):
        cl_loss, clm_loss = reference_losses(model, batch, layer=layer, temperature=temperature)
        loss = cl_weight * cl_loss + clm_weight * clm_loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())


def prepare_steps(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                  host_batches: Sequence[Mapping[str, np.ndarray]], *, warmup: int,
                  **step_options: Any) -> Callable[[int], dict]:
    """Run ``warmup`` steps untimed and return the timer of the remaining batches' steps: the
    ``bench.measured_step`` record (wall seconds, loss, page faults, context switches) of timed batch i."""
    batches = [to_torch_batch(b) for b in host_batches]
    for batch in batches[:warmup]:
        reference_step(model, optimizer, batch, **step_options)

    return lambda index: measured_step(
        lambda: reference_step(model, optimizer, batches[warmup + index], **step_options))


def thread_settings() -> dict:
    """What decides torch's CPU speed here: its version, intra/inter-op threads and the OpenMP wait policy."""
    return {"torch_version": torch.__version__, "num_threads": torch.get_num_threads(),
            "num_interop_threads": torch.get_num_interop_threads(),
            "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")}


# ------------------------------------------------------------------------------------------------- worker process
def write_worker_input(path: pathlib.Path, batches: Sequence[Mapping[str, np.ndarray]],
                       spec: Mapping[str, Any]) -> None:
    """What ``serve`` needs in one file: the collated batches (warm-up ones first) and ``spec``, a JSON-ready dict
    with ``hf_config``, ``seed``, ``lr``, ``warmup`` and ``step_options`` (``reference_step``'s keyword arguments)."""
    arrays = {f"{index}/{key}": np.asarray(value)
              for index, batch in enumerate(batches) for key, value in batch.items()}
    np.savez(path, spec=np.array(json.dumps(dict(spec))), **arrays)


def read_worker_input(path: pathlib.Path) -> tuple[dict, list[dict[str, np.ndarray]]]:
    with np.load(path) as stored:
        spec = json.loads(str(stored["spec"]))
        batches: dict[int, dict[str, np.ndarray]] = {}
        for name in stored.files:
            if name != "spec":
                index, key = name.split("/", 1)
                batches.setdefault(int(index), {})[key] = stored[name]
    return spec, [batches[index] for index in sorted(batches)]


def reply_channel() -> TextIO:
    """This process's stdout for a worker's JSON replies alone: the file descriptor is duplicated for them, and
    stdout itself is pointed at stderr, so that whatever a library prints cannot corrupt the replies."""
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    return replies


def answer_lines(replies: TextIO, answer: Callable[[str], dict]) -> None:
    """The worker's side of ``xalign_jax.bench.JsonLinesWorker``: ``{"ready": true, "threads": ...}``, then
    ``answer(line)`` for each line read from stdin, and at the end of stdin ``{"peak_rss_bytes": n}`` (VmHWM:
    ``ru_maxrss`` would carry the parent's RSS over the fork); one JSON line each on ``replies``."""
    replies.write(json.dumps({"ready": True, "threads": thread_settings()}) + "\n")
    for line in sys.stdin:
        replies.write(json.dumps(answer(line.strip())) + "\n")
    replies.write(json.dumps({"peak_rss_bytes": memory_status()["peak"]}) + "\n")


def serve(input_path: pathlib.Path) -> None:
    """Build the model, run the warm-up steps, then time one step per index read from stdin (``answer_lines``):
    ``measured_step``'s record per step. Anything else printed (library warnings) is sent to stderr, so stdout
    carries the replies only."""
    replies = reply_channel()
    spec, batches = read_worker_input(input_path)
    model = build_model(spec["hf_config"], seed=spec["seed"])
    timed_step = prepare_steps(model, make_optimizer(model, lr=spec["lr"]), batches, warmup=spec["warmup"],
                               **spec["step_options"])
    answer_lines(replies, lambda line: timed_step(int(line)))


if __name__ == "__main__":
    serve(pathlib.Path(sys.argv[1]))

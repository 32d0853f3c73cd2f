"""How fast the CPU train step could be against the reference with no padding at all, at the FLOP rate we measured.

Reads the bench reports ``{bloom,gemma3}_float32_torch.json`` of a folder (default: this one; the same batches on
both sides), or those a name PATTERN with ``{model}`` gives, against the reference precision each holds, and
prints, per model: our executed FLOP rate, the reference's, the step we would take if we executed
only the model FLOPs of the real tokens at our rate, that step's ratio, and the rate 2x would need with no padding.
Usage: python bound.py [FOLDER [PATTERN]]
"""
import json
import pathlib
import sys

RUN = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else pathlib.Path(__file__).parent)
PATTERN = sys.argv[2] if len(sys.argv) > 2 else "{model}_float32_torch.json"
for model in ("bloom", "gemma3"):
    report = json.loads((RUN / PATTERN.format(model=model)).read_text())
    batch = report["batch"]
    ours, theirs = report["jax"]["step_s"]["median"], next(iter(report["torch"].values()))["step_s"]["median"]
    our_rate = batch["executed_flops_per_step"] / ours
    their_rate = batch["reference_executed_flops_per_step"] / theirs
    unpadded_step = batch["flops_per_step"] / our_rate
    rate_for_2x = batch["flops_per_step"] / (theirs / 2)
    print(f"{model}: measured {theirs / ours:.2f}x; our rate {our_rate / 1e9:.1f} GFLOP/s, the reference's "
          f"{their_rate / 1e9:.1f}; real-token work {batch['flops_per_step'] / 1e9:.1f} of "
          f"{batch['executed_flops_per_step'] / 1e9:.1f} GFLOP executed (reference "
          f"{batch['reference_executed_flops_per_step'] / 1e9:.1f}); no padding at our rate: {unpadded_step:.3f} s, "
          f"{theirs / unpadded_step:.2f}x; 2x with no padding needs {rate_for_2x / 1e9:.1f} GFLOP/s")

"""The scorer's vocabulary call (blocked_target_logprobs, token-major, bf16 compute) on a Gemma-3-shaped tied head
(262,144 x 640), 256 positions, blocks of 16,384 rows, both logits dtypes: median of 9 calls."""
import sys, time, jax, jax.numpy as jnp, numpy as np
sys.path.insert(0, ".")
from xalign_jax import models
from xalign_jax.models.architectures import GEMMA3_270M
from xalign_jax.models.decoder import blocked_target_logprobs
rng = np.random.default_rng(0)
head = {"embed": jnp.asarray(0.02 * rng.standard_normal((262144, 640)), jnp.float32)}
hidden = jnp.asarray(rng.standard_normal((256, 640)), jnp.float32)
targets = jnp.asarray(rng.integers(0, 262144, 256), jnp.int32)
out = {}
for logits_dtype in ("float32", "bfloat16"):
    cfg = models.ModelConfig.from_hf(GEMMA3_270M, dtype="bfloat16", logits_dtype=logits_dtype)
    f = jax.jit(lambda h, x, t: blocked_target_logprobs(cfg, h, x, t, 16384, token_major=True))
    out[logits_dtype] = np.asarray(f(head, hidden, targets))
    times = []
    for _ in range(9):
        start = time.perf_counter(); f(head, hidden, targets).block_until_ready(); times.append(time.perf_counter() - start)
    print(f"logits {logits_dtype}: {np.median(times) * 1e3:.1f} ms")
print("max |bf16 - fp32 logits| log-prob difference:", float(np.abs(out["bfloat16"] - out["float32"]).max()))

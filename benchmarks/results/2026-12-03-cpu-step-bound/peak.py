"""The fp32 rate of one large square product, XLA and torch (2 threads), on this VM: the ceiling bound.py's rates
are read against."""
import time, jax, jax.numpy as jnp, torch
torch.set_num_threads(2)
n = 4096
a = jnp.ones((n, n), jnp.float32); b = jnp.ones((n, n), jnp.float32)
f = jax.jit(lambda x, y: x @ y); f(a, b).block_until_ready()
ts = []
for _ in range(5):
    t = time.perf_counter(); f(a, b).block_until_ready(); ts.append(time.perf_counter() - t)
print("xla fp32 4096^3 GFLOP/s best", 2 * n**3 / min(ts) / 1e9, "median", 2 * n**3 / sorted(ts)[2] / 1e9)
x = torch.ones(n, n); y = torch.ones(n, n); x @ y
ts = []
for _ in range(5):
    t = time.perf_counter(); x @ y; ts.append(time.perf_counter() - t)
print("torch fp32 4096^3 GFLOP/s best", 2 * n**3 / min(ts) / 1e9, "median", 2 * n**3 / sorted(ts)[2] / 1e9)

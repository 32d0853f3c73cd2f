"""The AdamW update of a [250880, 384] fp32 leaf jitted alone (state donated), as one program of elementwise
fusions and as a lax.map over row blocks; median of 9 calls. Run with freed memory kept mapped (ab.sh's GLIBC_TUNABLES)."""
import time, functools, jax, jax.numpy as jnp, numpy as np
V, D = 250880, 384
rng = np.random.default_rng(0)
mk = lambda: jnp.asarray(rng.standard_normal((V, D), np.float32))
b1, b2, eps, lr = 0.9, 0.999, 1e-8, 1e-5
def adam(p, m, v, g, f):
    g = g * f
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    p = p - lr * (m / (jnp.sqrt(v) + eps) + 0.01 * p)
    return p, m, v
plain = jax.jit(adam, donate_argnums=(0, 1, 2))
def blocked(p, m, v, g, f, rows=1024):
    n = V // rows
    r = lambda x: x.reshape(n, rows, D)
    out = jax.lax.map(lambda xs: adam(*xs, f), (r(p), r(m), r(v), r(g)))
    return tuple(o.reshape(V, D) for o in out)
def bench(fn, name):
    p, m, v, g = mk(), mk(), jnp.abs(mk()), mk(); f = jnp.float32(0.5)
    p, m, v = fn(p, m, v, g, f); jax.block_until_ready(p)
    ts = []
    for _ in range(9):
        s = time.perf_counter(); p, m, v = fn(p, m, v, g, f); jax.block_until_ready((p, m, v)); ts.append(time.perf_counter() - s)
    print(f"{name}: {np.median(ts)*1e3:.1f} ms", flush=True)
    return p, m, v
ref = bench(plain, "plain")
for rows in (256, 1024, 3920):
    bench(jax.jit(functools.partial(blocked, rows=rows), donate_argnums=(0, 1, 2)), f"blocked rows={rows}")

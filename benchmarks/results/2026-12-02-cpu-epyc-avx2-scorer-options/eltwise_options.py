"""Time two elementwise programs of the bloom train step under YNNPACK option sets."""
import time
import jax, jax.numpy as jnp, numpy as np

V, N, D = 250880, 320, 384
SETS = {"reduce": {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_REDUCE"},
        "reduce+eltwise": {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_REDUCE,LIBRARY_FUSION_TYPE_ELTWISE"}}

def softmax_grad(logits, lse, w, t):
    is_t = jax.lax.broadcasted_iota(jnp.int32, logits.shape, 0) == t[None]
    return (jnp.exp(logits - lse[None]) - is_t) * w[None]

def lse_fn(logits):
    return jax.nn.logsumexp(logits, axis=0)

def adam(p, g, m, v):
    g = g * 0.5
    m = 0.9 * m + 0.1 * g
    v = 0.999 * v + 0.001 * g * g
    p = p - 1e-3 * (m / 0.1 / (jnp.sqrt(v / 0.001) + 1e-8) + 0.01 * p)
    return p, m, v

def timeit(f, args, n=5):
    jax.block_until_ready(f(*args)); ts = []
    for _ in range(n):
        s = time.perf_counter(); jax.block_until_ready(f(*args)); ts.append(time.perf_counter() - s)
    return np.median(ts), min(ts)

key = jax.random.PRNGKey(0)
logits = jax.random.normal(key, (V, N)) * 3
lse = lse_fn(logits); w = jnp.ones((N,)); t = jax.random.randint(key, (N,), 0, V)
p, g, m, v = (jax.random.normal(jax.random.fold_in(key, i), (V, D)) for i in range(4))
for _ in range(2):
    for name, opts in SETS.items():
        c1 = jax.jit(softmax_grad).lower(logits, lse, w, t).compile(opts)
        c2 = jax.jit(lse_fn).lower(logits).compile(opts)
        c3 = jax.jit(adam).lower(p, g, m, v).compile(opts)
        ynn = sum(c.as_text().count("__ynn_fusion") for c in (c1, c2, c3))
        r = [timeit(c1, (logits, lse, w, t)), timeit(c2, (logits,)), timeit(c3, (p, g, m, v))]
        print(f"{name:16s} ynn={ynn} softmax_grad {r[0][0]*1e3:.1f} ({r[0][1]*1e3:.1f}) ms  lse {r[1][0]*1e3:.1f} ({r[1][1]*1e3:.1f}) ms  adam {r[2][0]*1e3:.1f} ({r[2][1]*1e3:.1f}) ms", flush=True)
a = jax.jit(softmax_grad).lower(logits, lse, w, t).compile(SETS["reduce"])(logits, lse, w, t)
b = jax.jit(softmax_grad).lower(logits, lse, w, t).compile(SETS["reduce+eltwise"])(logits, lse, w, t)
print("max |diff| softmax grad", float(jnp.max(jnp.abs(a - b))))

"""``layers.einsum_fp32_out``: plain autodiff in fp32; in bf16 the backward matmuls stay in bf16 (the fp32
cotangent of an fp32-output product would otherwise turn them into fp32 matmuls). ``layers.dense``: the einsum
over the trailing dimensions, as one flattened product. ``layers.product_fp32_out``: on CPU every product of its
forward and backward reaches XLA's compiled program as a bf16 one."""
from __future__ import annotations

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np

from tests import hlo
from xalign_jax.models import layers

SPEC = "btd,vd->btv"


def _operands(dtype):
    kx, ky, kg = jax.random.split(jax.random.PRNGKey(0), 3)
    return (jax.random.normal(kx, (2, 5, 16), jnp.float32).astype(dtype),
            jax.random.normal(ky, (40, 16), jnp.float32).astype(dtype),
            jax.random.normal(kg, (2, 5, 40), jnp.float32))


def _grads(fn, x, y, g):
    return jax.grad(lambda a, b: jnp.sum(fn(a, b) * g), argnums=(0, 1))(x, y)


def _plain(a, b):
    return jnp.einsum(SPEC, a, b, preferred_element_type=jnp.float32)


def _custom(a, b):
    return layers.einsum_fp32_out(SPEC, a, b)


def _dot_operand_dtypes(fn, x, y, g) -> list[tuple]:
    """Operand dtypes of every dot_general in the gradient's jaxpr (sub-jaxprs included)."""
    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "dot_general":
                yield tuple(str(v.aval.dtype) for v in eqn.invars)
            for sub in jax.extend.core.jaxprs_in_params(eqn.params):
                yield from walk(sub)
    return list(walk(jax.make_jaxpr(lambda a, b: _grads(fn, a, b, g))(x, y).jaxpr))


def test_fp32_operands_give_exactly_plain_autodiff():
    x, y, g = _operands(jnp.float32)
    np.testing.assert_array_equal(np.asarray(_custom(x, y)), np.asarray(_plain(x, y)))
    for got, want in zip(_grads(_custom, x, y, g), _grads(_plain, x, y, g)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-6)


def test_bf16_backward_matmuls_run_in_bf16_and_stay_close():
    x, y, g = _operands(jnp.bfloat16)
    plain_dots = _dot_operand_dtypes(_plain, x, y, g)
    assert any("float32" in dtypes for dtypes in plain_dots)          # the problem this exists for
    custom_dots = _dot_operand_dtypes(_custom, x, y, g)
    assert len(custom_dots) >= 3 and all(set(d) == {"bfloat16"} for d in custom_dots), custom_dots
    assert _custom(x, y).dtype == jnp.float32
    exact = _grads(_plain, x.astype(jnp.float32), y.astype(jnp.float32), g)
    for got, want in zip(_grads(_custom, x, y, g), exact):
        assert got.dtype == jnp.bfloat16
        np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want), rtol=3e-2, atol=3e-2)


def test_dense_is_the_einsum_over_the_trailing_dimensions_with_its_gradients():
    kx, kw = jax.random.split(jax.random.PRNGKey(1))
    x = jax.random.normal(kx, (2, 3, 4, 5))
    for in_dims, weight_shape, spec in ((1, (5, 6, 7), "btij,jkl->btikl"), (2, (4, 5, 6), "btij,ijk->btk")):
        weight = jax.random.normal(kw, weight_shape)
        got, got_grads = jax.value_and_grad(lambda a, w: jnp.sum(jnp.sin(layers.dense(a, w, in_dims))),
                                            argnums=(0, 1))(x, weight)
        want, want_grads = jax.value_and_grad(lambda a, w: jnp.sum(jnp.sin(jnp.einsum(spec, a, w))),
                                              argnums=(0, 1))(x, weight)
        np.testing.assert_allclose(float(got), float(want), rtol=1e-5)
        for ours, reference in zip(got_grads, want_grads):
            np.testing.assert_allclose(np.asarray(ours), np.asarray(reference), rtol=1e-4, atol=1e-5)


def test_dense_in_bf16_gives_the_rounded_exact_product_and_gradients():
    """On CPU ``dense`` takes bf16 operands through ``product_fp32_out``, whose backward multiplies copies of the
    transposed operands; that must stay a layout choice: the results and gradients are those of bf16 operands with
    exact accumulation, rounded once to bf16. Checked against float64, not against ``jnp.matmul``: with jax 0.12
    on CPU, jnp.matmul's bf16 weight gradient over [batch, time] tokens was off by up to 0.89 here, where one bf16
    rounding is at most 0.16 (``dense``: 0.12)."""
    kx, kw, kc = jax.random.split(jax.random.PRNGKey(2), 3)
    x = jax.random.normal(kx, (4, 24, 96)).astype(jnp.bfloat16)
    weight = jax.random.normal(kw, (96, 160)).astype(jnp.bfloat16)
    cotangent = jax.random.normal(kc, (4, 24, 160)).astype(jnp.bfloat16)
    got, pullback = jax.vjp(jax.jit(layers.dense), x, weight)
    x64, weight64, cotangent64 = (np.asarray(a, np.float64) for a in (x, weight, cotangent))
    exact = (np.einsum("bti,ij->btj", x64, weight64), np.einsum("btj,ij->bti", cotangent64, weight64),
             np.einsum("bti,btj->ij", x64, cotangent64))
    for ours, reference in zip((got, *pullback(cotangent)), exact):
        assert ours.dtype == jnp.bfloat16
        np.testing.assert_allclose(np.asarray(ours, np.float64), reference, rtol=2 ** -8, atol=1e-5)


def test_bf16_products_and_their_backward_reach_xla_as_bf16_products():
    """Compiled under XLA's defaults (the bf16 train step's options), the forward product and both backward
    products of ``product_fp32_out`` stay bf16 x bf16 dots. The weight gradient written by autodiff, which
    contracts the tokens of a transposed operand, is the case ``row_major`` exists for: XLA:CPU rewrote it as an
    fp32 product of upcast operands, at about half the speed (BENCHMARKS.md)."""
    kx, kw, kc = jax.random.split(jax.random.PRNGKey(3), 3)
    rows = jax.random.normal(kx, (512, 128)).astype(jnp.bfloat16)
    matrix = jax.random.normal(kw, (128, 256)).astype(jnp.bfloat16)
    cotangent = jax.random.normal(kc, (512, 256), jnp.float32)

    def forward_and_backward(a, b, g):
        out, pullback = jax.vjp(layers.product_fp32_out, a, b)
        return (out, *pullback(g))

    program = jax.jit(forward_and_backward).lower(rows, matrix, cotangent).compile().as_text()
    dots = [(lhs, rhs) for _, lhs, rhs in hlo.dot_types(program)]
    assert len(dots) == 3 and set(dots) == {("bf16", "bf16")}, dots
    out, rows_grad, matrix_grad = jax.jit(forward_and_backward)(rows, matrix, cotangent)
    a, b = (np.asarray(x, np.float64) for x in (rows, matrix))
    g = np.asarray(cotangent.astype(jnp.bfloat16), np.float64)   # the cotangent is rounded to bf16 first
    assert out.dtype == jnp.float32 and rows_grad.dtype == matrix_grad.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(out, np.float64), a @ b, rtol=1e-5, atol=1e-4)
    for ours, exact in ((rows_grad, g @ b.T), (matrix_grad, a.T @ g)):
        np.testing.assert_allclose(np.asarray(ours, np.float64), exact, rtol=2 ** -8, atol=1e-3)


def test_row_major_is_the_identity():
    x = jnp.arange(12.0).reshape(3, 4)
    np.testing.assert_array_equal(np.asarray(jax.jit(lambda a: layers.row_major(a.T))(x)), np.asarray(x).T)

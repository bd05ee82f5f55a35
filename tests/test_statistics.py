"""Per-example gradient statistics (functional_bp.statistics): the noise scale's parts,
and the statistics under the caller's jit and vmap. Their values against jax.grad of
every activation and cost: tests/equivalence/test_statistics_vs_autodiff.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_tree_close, random_problem

import functional_bp as fbp
from functional_bp import statistics


def test_noise_scale_is_trace_over_grad_norm():
    params, xs, ys = random_problem(403, batch=16, sizes=[5, 4, 3])
    noise = statistics.gradient_noise_scale(params, xs, ys)
    np.testing.assert_allclose(noise.b_simple, noise.trace / noise.grad_norm_sq, rtol=1e-15)
    assert noise.trace > 0


def test_noise_scale_needs_two_examples():
    params, xs, ys = random_problem(402, batch=1, sizes=[3, 2])
    with pytest.raises(ValueError, match="at least two examples"):
        statistics.gradient_noise_scale(params, xs, ys)


def test_statistics_under_the_callers_jit_and_vmap():
    params, xs, ys = random_problem(600, batch=12, sizes=[4, 3, 2])
    groups = xs.reshape(3, 4, 4), ys.reshape(3, 4, 2)
    for fn in (statistics.sum_grad_squared, statistics.grad_variance, statistics.batch_dot):
        vmapped = jax.jit(jax.vmap(fn, in_axes=(None, 0, 0)))(params, *groups)
        separate = [fn(params, groups[0][g], groups[1][g]) for g in range(3)]
        assert_tree_close(vmapped, jax.tree.map(lambda *a: jnp.stack(a), *separate), rtol=1e-12)


def test_variance_of_identical_examples_is_zero_not_negative():
    params, xs, ys = random_problem(601, batch=1, sizes=[4, 3, 2])
    xs, ys = jnp.repeat(xs, 5, axis=0), jnp.repeat(ys, 5, axis=0)
    variance = statistics.grad_variance(params, xs, ys, net=fbp.Network("tanh"))
    assert all(np.all(np.asarray(v) >= 0) for v in jax.tree.leaves(variance))
    assert_tree_close(variance, jax.tree.map(jnp.zeros_like, variance), rtol=0, atol=1e-15)

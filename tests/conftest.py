import jax
import numpy as np
import pytest

# float64 for the tight comparisons; float32 tests ask for float32 explicitly.
jax.config.update("jax_enable_x64", True)
# Catches the classic (n,) vs (n, 1) broadcasting bug of hand-written backprop.
jax.config.update("jax_numpy_rank_promotion", "raise")

import functional_bp as fbp  # noqa: E402

ACTIVATION_NAMES = ["sigmoid", "tanh", "relu", "identity"]
COST_NAMES = ["quadratic", "squared_error", "cross_entropy"]


def output_activation_for(activation, cost):
    """Cross-entropy is defined for outputs in (0, 1): it gets a sigmoid output layer."""
    return "sigmoid" if cost == "cross_entropy" else None


def random_sizes(rng, *, max_depth=5, max_width=64):
    """Depth 1 to max_depth layers, widths 1 to max_width, one in four a width-1 chain."""
    depth = int(rng.integers(1, max_depth + 1))
    if rng.random() < 0.25:
        return [1] * (depth + 1)
    return [int(n) for n in rng.integers(1, max_width + 1, size=depth + 1)]


def random_problem(seed, dtype=np.float64, batch=None, sizes=None, cost="quadratic"):
    """Params, xs, ys for a random architecture; targets in (0, 1) as the costs expect."""
    rng = np.random.default_rng(seed)
    sizes = random_sizes(rng) if sizes is None else sizes
    batch = int(rng.integers(1, 9)) if batch is None else batch
    params = [
        fbp.Layer(
            rng.normal(size=(n_out, n_in)).astype(dtype) / np.sqrt(n_in).astype(dtype),
            rng.normal(size=(n_out,)).astype(dtype),
        )
        for n_in, n_out in zip(sizes[:-1], sizes[1:])
    ]
    params = jax.tree.map(jax.numpy.asarray, params)
    xs = rng.normal(size=(batch, sizes[0])).astype(dtype)
    ys = rng.uniform(0.05, 0.95, size=(batch, sizes[-1])).astype(dtype)
    return params, xs, ys


def assert_tree_close(actual, expected, rtol):
    """Structure first, then each leaf to rtol relative to that leaf's largest entry."""
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
        a, e = np.asarray(a), np.asarray(e)
        assert a.shape == e.shape and a.dtype == e.dtype, (a.shape, a.dtype, e.shape, e.dtype)
        assert np.all(np.isfinite(a)) and np.all(np.isfinite(e))
        scale = float(np.max(np.abs(e))) if e.size else 0.0
        np.testing.assert_allclose(a, e, rtol=rtol, atol=rtol * scale)


@pytest.fixture
def key():
    return jax.random.key(0)

"""Curvature from the backward pass (functional_bp.curvature): Kronecker factors of a
batch, the Monte-Carlo diagonal, and the diagonal GGN preconditioner. The exact diagonal
and the factors against jax.hessian: tests/equivalence/test_statistics_vs_autodiff.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import NORM_COST, assert_tree_close, combo_params, network, random_problem

import functional_bp as fbp
from functional_bp import curvature, training


def test_kronecker_factors_of_a_batch_are_the_means():
    params, xs, ys = random_problem(300, batch=6, sizes=[3, 4, 2])
    net = fbp.Network("tanh", "softmax", "log_likelihood")
    batch = curvature.kfac_factors(params, xs, ys, net=net)
    singles = [
        curvature.kfac_factors(params, xs[i : i + 1], ys[i : i + 1], net=net) for i in range(6)
    ]
    mean = jax.tree.map(lambda *leaves: sum(leaves) / 6, *singles)
    assert_tree_close(batch, mean, rtol=1e-12)


@pytest.mark.parametrize(
    "combo",
    combo_params(
        [
            ("sigmoid", None, "quadratic"),
            ("tanh", None, "squared_error"),
            ("relu", "sigmoid", "cross_entropy"),
            ("tanh", "softmax", "log_likelihood"),
        ],
        quick=[("sigmoid", None, "quadratic"), ("relu", "sigmoid", "cross_entropy")],
    ),
)
def test_diag_ggn_mc_converges_to_diag_ggn(combo):
    params, xs, ys = random_problem(400, batch=4, sizes=[3, 5, 3])
    ys = jnp.asarray(np.eye(3)[[0, 2, 1, 0]])  # one-hot: log-likelihood's sampler assumes it
    net = network(combo)
    exact = curvature.diag_ggn(params, xs, ys, net=net)
    one = curvature.diag_ggn_mc(jax.random.key(1), params, xs, ys, net=net)
    many = curvature.diag_ggn_mc(jax.random.key(2), params, xs, ys, samples=20_000, net=net)
    assert_tree_close(many, exact, rtol=0.05)
    assert jax.tree.all(jax.tree.map(lambda a, b: a.shape == b.shape, one, exact))


def test_diag_ggn_mc_without_a_sampler_says_so():
    params, xs, ys = random_problem(401, batch=3, sizes=[3, 2])
    with pytest.raises(ValueError, match="'norm' after output activation 'sigmoid' has no sample"):
        curvature.diag_ggn_mc(jax.random.key(0), params, xs, ys, net=fbp.Network(cost=NORM_COST))
    with pytest.raises(ValueError, match="samples to be an int >= 1"):
        curvature.diag_ggn_mc(jax.random.key(0), params, xs, ys, samples=0)


@pytest.mark.slow
def test_curvature_under_the_callers_jit_and_vmap():
    params, xs, ys = random_problem(600, batch=12, sizes=[4, 3, 2])
    groups = xs.reshape(3, 4, 4), ys.reshape(3, 4, 2)
    for fn in (curvature.diag_ggn, curvature.kfac_factors):
        vmapped = jax.jit(jax.vmap(fn, in_axes=(None, 0, 0)))(params, *groups)
        separate = [fn(params, groups[0][g], groups[1][g]) for g in range(3)]
        assert_tree_close(vmapped, jax.tree.map(lambda *a: jnp.stack(a), *separate), rtol=1e-12)


@pytest.mark.slow
def test_diag_ggn_descent_is_a_preconditioned_step():
    params, xs, ys = random_problem(700, batch=5, sizes=[4, 3, 2])
    net = fbp.Network("tanh", "softmax", "log_likelihood")
    optimizer = curvature.diag_ggn_descent(0.5, damping=1e-2, decay=0.0)
    state = optimizer.init(params)
    new, state = training.train_step(None, optimizer, params, state, xs, ys, net=net)
    grads, diagonal = fbp.grad(params, xs, ys, net=net), curvature.diag_ggn(params, xs, ys, net=net)
    expected = jax.tree.map(lambda p, g, c: p - 0.5 * g / (c + 1e-2), params, grads, diagonal)
    assert_tree_close(new, expected, rtol=1e-12)
    # A running average (bias-corrected): the first step is the same, the state keeps it.
    averaged = curvature.diag_ggn_descent(0.5, damping=1e-2, decay=0.9)
    first, avg_state = training.train_step(
        None, averaged, params, averaged.init(params), xs, ys, net=net
    )
    assert_tree_close(first, expected, rtol=1e-12)
    assert_tree_close(avg_state[0].curvature, jax.tree.map(lambda c: 0.1 * c, diagonal), 1e-12)


def test_diag_ggn_descent_trains_and_checks_its_arguments():
    params, xs, ys = random_problem(701, batch=32, sizes=[4, 6, 3])
    net = fbp.Network("sigmoid", "softmax", "log_likelihood")
    optimizer = curvature.diag_ggn_descent(0.1, damping=1e-3, decay=0.9)
    before = float(fbp.loss(params, xs, ys, net=net))
    params, _ = training.epoch(
        jax.random.key(0),
        optimizer,
        params,
        optimizer.init(params),
        xs,
        ys,
        batch_size=4,
        net=net,
    )
    assert float(fbp.loss(params, xs, ys, net=net)) < before
    with pytest.raises(ValueError, match="damping to be a finite number > 0"):
        curvature.diag_ggn_descent(0.1, damping=0.0)
    with pytest.raises(ValueError, match=r"decay in \[0, 1\)"):
        curvature.scale_by_diag_ggn(decay=1.0)
    with pytest.raises(ValueError, match="needs diag_ggn="):
        transform = curvature.scale_by_diag_ggn()
        transform.update(params, transform.init(params), params)

"""Gradient statistics and curvature against references written here from
`jax.vmap(jax.grad)`, `jax.jacobian` and `jax.hessian`, in float64 to 1e-10.

Each problem runs the library and the references inside one `jax.jit`.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import (
    COMBOS,
    LOGSUMEXP_COST,
    NORM_COST,
    NORMALISE,
    assert_tree_close,
    combo_id,
    options,
    random_problem,
)
from jax.flatten_util import ravel_pytree

import functional_bp as fbp
from functional_bp._options import resolve

USER_COMBOS = [
    ("tanh", "sigmoid", NORM_COST),
    (NORMALISE, "identity", LOGSUMEXP_COST),
    ("relu", NORMALISE, "quadratic"),
]
ALL_COMBOS = COMBOS + USER_COMBOS
# Depth 1 to 4, a width-1 layer among them.
ARCHITECTURES = [[5, 4, 3], [3, 7, 2], [6, 5, 4, 3], [2, 3, 3, 3, 2], [8, 1, 4], [4, 6]]


def _output_and_cost(combo):
    """The GGN's split: (network output, cost of it), in z^L where a closed form exists."""
    opts = resolve(*combo)
    form = opts.cost.closed_form(opts.output_activation)
    kw = dict(activation=combo[0], output_activation=combo[1])

    def output(params, x):
        cache = fbp.forward(params, x, **kw)[1]
        return cache.zs[-1] if form is not None else cache.activations[-1]

    return output, (opts.cost.fn if form is None else form.fn)


def reference_ggn_blocks(params, xs, ys, combo):
    """(1/N) sum_i J_i^T H_i J_i over all params, flattened as `ravel_pytree` orders them."""
    output, cost = _output_and_cost(combo)
    flat, unravel = ravel_pytree(params)

    def one(x, y):
        jac = jax.jacobian(lambda f: output(unravel(f), x))(flat)
        hess = jax.hessian(cost)(output(params, x), y)
        return jac.T @ hess @ jac

    return jnp.mean(jax.vmap(one)(xs, ys), axis=0), unravel


@functools.partial(jax.jit, static_argnames="combo")
def library_and_reference(params, xs, ys, combo):
    kw = options(combo)
    n = xs.shape[0]
    per_example = jax.vmap(
        jax.grad(lambda p, x, y: fbp.loss(p, x[None], y[None], **kw)), in_axes=(None, 0, 0)
    )(params, xs, ys)
    flat = jax.vmap(lambda g: ravel_pytree(g)[0])(per_example)  # (N, P)
    _, unravel = ravel_pytree(params)
    mean = jnp.mean(flat, axis=0)
    trace = jnp.sum((flat - mean[None]) ** 2) / (n - 1)
    ggn, _ = reference_ggn_blocks(params, xs, ys, combo)
    library = dict(
        sgs=fbp.sum_grad_squared(params, xs, ys, **kw),
        var=fbp.grad_variance(params, xs, ys, **kw),
        dot=fbp.batch_dot(params, xs, ys, **kw),
        noise=fbp.gradient_noise_scale(params, xs, ys, **kw)[1:],
        ggn=fbp.diag_ggn(params, xs, ys, **kw),
    )
    grad_norm_sq = jnp.sum(mean**2) - trace / n
    reference = dict(
        sgs=unravel(jnp.sum(flat**2, axis=0)),
        var=unravel(jnp.var(flat, axis=0)),
        dot=flat @ flat.T,
        noise=(trace, grad_norm_sq),
        ggn=unravel(jnp.diag(ggn)),
    )
    return library, reference


@pytest.mark.parametrize("combo", ALL_COMBOS, ids=[combo_id(c) for c in ALL_COMBOS])
def test_float64_statistics_and_diag_ggn_equal_references(combo):
    seed = ALL_COMBOS.index(combo)
    sizes = ARCHITECTURES[seed % len(ARCHITECTURES)]
    params, xs, ys = random_problem(100 + seed, batch=int(3 + seed % 5), sizes=sizes)
    library, reference = library_and_reference(params, xs, ys, combo)
    assert_tree_close(library, reference, rtol=1e-10)


@pytest.mark.parametrize("combo", ALL_COMBOS[::3], ids=[combo_id(c) for c in ALL_COMBOS[::3]])
def test_kronecker_factors_are_the_ggn_block_of_one_example(combo):
    """kron(G, A) with params ordered as the row-major [w | b] of each layer."""
    params, xs, ys = random_problem(200 + ALL_COMBOS.index(combo), batch=1, sizes=[4, 5, 3, 2])
    factors = fbp.kfac_factors(params, xs, ys, **options(combo))
    output, cost = _output_and_cost(combo)
    x, y = xs[0], ys[0]
    hess = jax.hessian(cost)(output(params, x), y)
    for l, (layer, factor) in enumerate(zip(params, factors)):

        def out_of_augmented(wb, l=l):
            layer_l = fbp.Layer(wb[:, :-1], wb[:, -1])
            return output([*params[:l], layer_l, *params[l + 1 :]], x)

        augmented = jnp.concatenate([layer.w, layer.b[:, None]], axis=1)
        jac = jax.jacobian(out_of_augmented)(augmented).reshape(hess.shape[0], -1)
        np.testing.assert_allclose(
            np.kron(factor.G, factor.A), jac.T @ hess @ jac, rtol=1e-10, atol=1e-12
        )


def test_kronecker_factors_of_a_batch_are_the_means():
    params, xs, ys = random_problem(300, batch=6, sizes=[3, 4, 2])
    combo = ("tanh", "softmax", "log_likelihood")
    batch = fbp.kfac_factors(params, xs, ys, **options(combo))
    singles = [
        fbp.kfac_factors(params, xs[i : i + 1], ys[i : i + 1], **options(combo)) for i in range(6)
    ]
    mean = jax.tree.map(lambda *leaves: sum(leaves) / 6, *singles)
    assert_tree_close(batch, mean, rtol=1e-12)


@pytest.mark.parametrize(
    "combo",
    [
        ("sigmoid", None, "quadratic"),
        ("tanh", None, "squared_error"),
        ("relu", "sigmoid", "cross_entropy"),
        ("tanh", "softmax", "log_likelihood"),
    ],
    ids=combo_id,
)
def test_diag_ggn_mc_converges_to_diag_ggn(combo):
    params, xs, ys = random_problem(400, batch=4, sizes=[3, 5, 3])
    ys = jnp.asarray(np.eye(3)[[0, 2, 1, 0]])  # one-hot: log-likelihood's sampler assumes it
    exact = fbp.diag_ggn(params, xs, ys, **options(combo))
    one = fbp.diag_ggn_mc(jax.random.key(1), params, xs, ys, **options(combo))
    many = fbp.diag_ggn_mc(jax.random.key(2), params, xs, ys, samples=20_000, **options(combo))
    assert_tree_close(many, exact, rtol=0.05)
    assert jax.tree.all(jax.tree.map(lambda a, b: a.shape == b.shape, one, exact))


def test_diag_ggn_mc_without_a_sampler_says_so():
    params, xs, ys = random_problem(401, batch=3, sizes=[3, 2])
    with pytest.raises(ValueError, match="'norm' after output activation 'sigmoid' has no sample"):
        fbp.diag_ggn_mc(jax.random.key(0), params, xs, ys, cost=NORM_COST)
    with pytest.raises(ValueError, match="samples to be an int >= 1"):
        fbp.diag_ggn_mc(jax.random.key(0), params, xs, ys, samples=0)


def test_noise_scale_is_trace_over_grad_norm():
    params, xs, ys = random_problem(403, batch=16, sizes=[5, 4, 3])
    noise = fbp.gradient_noise_scale(params, xs, ys)
    np.testing.assert_allclose(noise.b_simple, noise.trace / noise.grad_norm_sq, rtol=1e-15)
    assert noise.trace > 0


def test_noise_scale_needs_two_examples():
    params, xs, ys = random_problem(402, batch=1, sizes=[3, 2])
    with pytest.raises(ValueError, match="at least two examples"):
        fbp.gradient_noise_scale(params, xs, ys)


def test_float32_statistics_at_dtype_tolerance():
    params, xs, ys = random_problem(500, batch=8, sizes=[6, 5, 4])
    combo = ("tanh", "softmax", "log_likelihood")
    exact, _ = library_and_reference(params, xs, ys, combo)
    low = jax.tree.map(lambda a: a.astype(jnp.float32), (params, xs, ys))
    fast, _ = library_and_reference(*low, combo)
    fast = {k: v for k, v in fast.items() if k != "noise"}  # a ratio of differences
    exact = jax.tree.map(
        lambda a: a.astype(jnp.float32), {k: v for k, v in exact.items() if k != "noise"}
    )
    assert_tree_close(fast, exact, rtol=1e-4)


def test_under_the_callers_jit_and_vmap():
    params, xs, ys = random_problem(600, batch=12, sizes=[4, 3, 2])
    groups = xs.reshape(3, 4, 4), ys.reshape(3, 4, 2)
    for fn in (
        fbp.sum_grad_squared,
        fbp.grad_variance,
        fbp.batch_dot,
        fbp.diag_ggn,
        fbp.kfac_factors,
    ):
        vmapped = jax.jit(jax.vmap(fn, in_axes=(None, 0, 0)))(params, *groups)
        separate = [fn(params, groups[0][g], groups[1][g]) for g in range(3)]
        assert_tree_close(vmapped, jax.tree.map(lambda *a: jnp.stack(a), *separate), rtol=1e-12)


def test_diag_ggn_descent_is_a_preconditioned_step():
    params, xs, ys = random_problem(700, batch=5, sizes=[4, 3, 2])
    kw = options(("tanh", "softmax", "log_likelihood"))
    optimizer = fbp.diag_ggn_descent(0.5, damping=1e-2, decay=0.0)
    state = optimizer.init(params)
    new, state = fbp.optax_step(optimizer, params, state, xs, ys, **kw)
    grads, curvature = fbp.grad(params, xs, ys, **kw), fbp.diag_ggn(params, xs, ys, **kw)
    expected = jax.tree.map(lambda p, g, c: p - 0.5 * g / (c + 1e-2), params, grads, curvature)
    assert_tree_close(new, expected, rtol=1e-12)
    # A running average (bias-corrected): the first step is the same, the state keeps it.
    averaged = fbp.diag_ggn_descent(0.5, damping=1e-2, decay=0.9)
    first, avg_state = fbp.optax_step(averaged, params, averaged.init(params), xs, ys, **kw)
    assert_tree_close(first, expected, rtol=1e-12)
    assert_tree_close(
        avg_state[0].curvature, jax.tree.map(lambda c: 0.1 * c, curvature), rtol=1e-12
    )


def test_diag_ggn_descent_trains_and_checks_its_arguments():
    params, xs, ys = random_problem(701, batch=32, sizes=[4, 6, 3])
    kw = options(("sigmoid", "softmax", "log_likelihood"))
    optimizer = fbp.diag_ggn_descent(0.1, damping=1e-3, decay=0.9)
    before = float(fbp.loss(params, xs, ys, **kw))
    params, _ = fbp.optax_epoch(
        jax.random.key(0), optimizer, params, optimizer.init(params), xs, ys, batch_size=4, **kw
    )
    assert float(fbp.loss(params, xs, ys, **kw)) < before
    with pytest.raises(ValueError, match="damping to be a finite number > 0"):
        fbp.diag_ggn_descent(0.1, damping=0.0)
    with pytest.raises(ValueError, match=r"decay in \[0, 1\)"):
        fbp.scale_by_diag_ggn(decay=1.0)
    with pytest.raises(ValueError, match="needs diag_ggn="):
        transform = fbp.scale_by_diag_ggn()
        transform.update(params, transform.init(params), params)


def test_cli_tracks_the_noise_scale_and_trains_with_diag_ggn(tmp_path, capsys):
    from functional_bp.cli import main

    history = tmp_path / "h.json"
    argv = ["train", "--epochs", "2", "--optimizer", "diag_ggn", "--eta", "0.3"]
    argv += ["--init", "scaled_normal"]
    argv += ["--output-activation", "softmax", "--cost", "log_likelihood", "--no-progress"]
    argv += ["--track", "noise-scale", "--track-examples", "500", "--json", str(history)]
    argv += ["--plot", str(tmp_path / "h.png")]
    assert main(argv) == 0
    rows = __import__("json").loads(history.read_text())["history"]
    assert [sorted(k for k in row if k.startswith("noise")) for row in rows] == [
        ["noise_grad_norm_sq", "noise_scale", "noise_trace"]
    ] * 2
    assert all(row["noise_trace"] > 0 for row in rows)
    assert rows[-1]["eval_accuracy"] > 0.5

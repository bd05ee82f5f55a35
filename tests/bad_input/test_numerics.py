"""Numerics of functional_bp.statistics and functional_bp.curvature: numeric bad input
refused before any computation with the argument named, the diagonal-GGN step a descent
direction for a cost of indefinite Hessian, float16 and bfloat16 computed in float32,
and the gradient noise scale where its ratio has no finite value.

Values are compared with jax.jacobian, jax.hessian and jax.grad in float64."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import assert_tree_close, random_problem
from jax.flatten_util import ravel_pytree

import functional_bp as fbp
from functional_bp import curvature, statistics, training

SIZES = [3, 4, 2]
NET = fbp.Network("tanh", "softmax", "log_likelihood")


def _problem(batch=5, dtype=np.float64, seed=0):
    return random_problem(seed, dtype=dtype, batch=batch, sizes=SIZES)


# Every public function of the two modules that takes (params, xs, ys): one call each.
DATA_FUNCTIONS = {
    "diag_ggn": lambda p, x, y: curvature.diag_ggn(p, x, y),
    "diag_ggn_mc": lambda p, x, y: curvature.diag_ggn_mc(jax.random.key(0), p, x, y),
    "kfac_factors": lambda p, x, y: curvature.kfac_factors(p, x, y),
    "sum_grad_squared": lambda p, x, y: statistics.sum_grad_squared(p, x, y),
    "grad_variance": lambda p, x, y: statistics.grad_variance(p, x, y),
    "batch_dot": lambda p, x, y: statistics.batch_dot(p, x, y),
    "gradient_noise_scale": lambda p, x, y: statistics.gradient_noise_scale(p, x, y),
}


# Hyperparameters: refused when the optimizer is made, before any step.

BAD_NUMBERS = [-1.0, 0.0, float("nan"), float("inf"), -np.float32(0.5)]
NOT_NUMBERS = ["0.1", True, None, 1j]


@pytest.mark.parametrize("value", BAD_NUMBERS, ids=repr)
@pytest.mark.parametrize(
    "make",
    [
        lambda d: curvature.scale_by_diag_ggn(damping=d),
        lambda d: curvature.diag_ggn_descent(0.1, damping=d),
    ],
    ids=["scale_by_diag_ggn", "diag_ggn_descent"],
)
def test_damping_must_be_finite_and_positive(make, value):
    with pytest.raises(ValueError, match="damping to be a finite number > 0"):
        make(value)


@pytest.mark.parametrize("value", NOT_NUMBERS, ids=repr)
@pytest.mark.parametrize(
    "make",
    [
        lambda d: curvature.scale_by_diag_ggn(damping=d),
        lambda d: curvature.diag_ggn_descent(0.1, damping=d),
    ],
    ids=["scale_by_diag_ggn", "diag_ggn_descent"],
)
def test_damping_must_be_a_number(make, value):
    with pytest.raises(TypeError, match="damping to be a"):
        make(value)


@pytest.mark.parametrize("value", [-0.1, float("nan"), float("-inf")], ids=repr)
def test_decay_below_zero_or_not_finite(value):
    with pytest.raises(ValueError, match="decay to be a finite number >= 0"):
        curvature.scale_by_diag_ggn(decay=value)


@pytest.mark.parametrize("value", [1.0, 1.5, float("inf")], ids=repr)
def test_decay_at_or_above_one(value):
    with pytest.raises(ValueError, match="decay"):
        curvature.diag_ggn_descent(0.1, decay=value)


@pytest.mark.parametrize("value", [0.0, -1.0, float("nan")], ids=repr)
def test_learning_rate_must_be_finite_and_positive(value):
    with pytest.raises(ValueError, match="learning_rate to be a finite number > 0"):
        curvature.diag_ggn_descent(value)


# Concrete JAX arrays are checked like Python numbers (`_validation.check_number`).
@pytest.mark.parametrize("value", [-1.0, 0.0, float("nan"), float("inf")], ids=repr)
def test_damping_as_a_concrete_array_is_checked(value):
    with pytest.raises(ValueError, match="damping"):
        curvature.scale_by_diag_ggn(damping=jnp.array(value))
    with pytest.raises(ValueError, match="damping"):
        curvature.diag_ggn_descent(0.1, damping=jnp.array(value))


@pytest.mark.parametrize("value", [-0.1, float("nan"), 1.0], ids=repr)
def test_decay_as_a_concrete_array_is_checked(value):
    with pytest.raises(ValueError, match="decay"):
        curvature.scale_by_diag_ggn(decay=jnp.array(value))


def test_learning_rate_as_a_concrete_array_is_checked():
    with pytest.raises(ValueError, match="learning_rate"):
        curvature.diag_ggn_descent(jnp.array(-1.0))


def test_damping_array_of_several_entries_is_refused():
    with pytest.raises(TypeError, match="damping to be a real scalar"):
        curvature.scale_by_diag_ggn(damping=jnp.ones(2))


@pytest.mark.parametrize("samples", [0, -1], ids=repr)
def test_samples_below_one(samples):
    params, xs, ys = _problem()
    with pytest.raises(ValueError, match="samples to be an int >= 1"):
        curvature.diag_ggn_mc(jax.random.key(0), params, xs, ys, samples=samples, net=NET)


@pytest.mark.parametrize("samples", [1.5, True, "2"], ids=repr)
def test_samples_not_an_int(samples):
    params, xs, ys = _problem()
    with pytest.raises(TypeError, match="samples to be an int >= 1"):
        curvature.diag_ggn_mc(jax.random.key(0), params, xs, ys, samples=samples, net=NET)


# Data.


@pytest.mark.parametrize("name", DATA_FUNCTIONS)
def test_empty_batch(name):
    params, xs, ys = _problem()
    with pytest.raises(ValueError, match="xs to hold at least one example"):
        DATA_FUNCTIONS[name](params, xs[:0], ys[:0])


def test_noise_scale_of_one_example():
    params, xs, ys = _problem(batch=1)
    with pytest.raises(ValueError, match="at least two examples.*xs of shape"):
        statistics.gradient_noise_scale(params, xs, ys)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=repr)
@pytest.mark.parametrize("name", DATA_FUNCTIONS)
def test_xs_not_finite(name, bad):
    params, xs, ys = _problem()
    xs = xs.copy()
    xs[1, 2] = bad
    with pytest.raises(ValueError, match=r"xs to be finite, got 1 NaN or infinite"):
        DATA_FUNCTIONS[name](params, jnp.asarray(xs), ys)


@pytest.mark.parametrize("name", DATA_FUNCTIONS)
def test_ys_not_finite(name):
    params, xs, ys = _problem()
    ys = ys.copy()
    ys[0] = np.nan
    with pytest.raises(ValueError, match=r"ys to be finite, got 2 NaN or infinite"):
        DATA_FUNCTIONS[name](params, xs, ys)  # a NumPy array: checked on the host


@pytest.mark.parametrize("name", DATA_FUNCTIONS)
def test_xs_of_integers(name):
    params, xs, ys = _problem()
    with pytest.raises(TypeError, match="x to have a real floating dtype.*int32"):
        DATA_FUNCTIONS[name](params, jnp.asarray(xs, jnp.int32), ys)


@pytest.mark.parametrize("name", DATA_FUNCTIONS)
def test_params_of_integers(name):
    params, xs, ys = _problem()
    params = [fbp.Layer(jnp.asarray(w, jnp.int32), b) for w, b in params]
    with pytest.raises(TypeError, match=r"layer 1 \(params\[0\]\) w to have a real floating"):
        DATA_FUNCTIONS[name](params, xs, ys)


@pytest.mark.parametrize("name", DATA_FUNCTIONS)
def test_integer_class_labels_are_not_cast_to_floats(name):
    """The float32 upcast keeps integer labels labels: the result is the one-hot one's."""
    params, xs, _ = _problem()
    labels = np.array([1, 0, 1, 1, 0], np.int32)
    one_hot = np.eye(2)[labels]
    assert_tree_close(
        DATA_FUNCTIONS[name](params, xs, labels), DATA_FUNCTIONS[name](params, xs, one_hot), 1e-15
    )


def test_traced_nan_is_not_checked_but_propagates():
    """Under the caller's jit a NaN cannot be seen before the call: it reaches the result."""
    params, xs, ys = _problem()
    xs = xs.copy()
    xs[0, 0] = np.nan
    variance = jax.jit(statistics.grad_variance)(params, xs, ys)
    assert np.isnan(np.asarray(variance[0].w)).any()


# The diagonal-GGN step descends for a cost whose Hessian is indefinite.

# C(a, y) = 1/2 (a_1 - y_1)^2 - 1/2 (a_2 - y_2)^2: its Hessian in a is diag(1, -1).
SADDLE_COST = fbp.Cost(
    lambda a, y: 0.5 * (a[0] - y[0]) ** 2 - 0.5 * (a[1] - y[1]) ** 2,
    lambda a, y: jnp.array([1.0, -1.0], a.dtype) * (a - y),
    name="saddle",
)
SADDLE_NET = fbp.Network("tanh", "identity", SADDLE_COST)


@functools.partial(jax.jit, static_argnames="net")
def _reference_diag_ggn(params, xs, ys, net):
    """diag (1/N) sum_i J_i^T H_i J_i from jax.jacobian and jax.hessian."""
    flat, unravel = ravel_pytree(params)

    def one(x, y):
        output = lambda f: fbp.forward(unravel(f), x, net=net)[1].activations[-1]
        jac = jax.jacobian(output)(flat)
        hess = jax.hessian(net.cost.fn)(output(flat), y)
        return jnp.diag(jac.T @ hess @ jac)

    return unravel(jnp.mean(jax.vmap(one)(xs, ys), axis=0))


def _dot(a, b):
    return sum(float(jnp.vdot(x, y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_diag_ggn_step_descends_for_an_indefinite_hessian():
    params, xs, ys = _problem(batch=6, seed=3)
    lr, damping, decay = 0.1, 1e-3, 0.9  # the bias-corrected average: its first step
    diagonal = curvature.diag_ggn(params, xs, ys, net=SADDLE_NET)
    assert_tree_close(diagonal, _reference_diag_ggn(params, xs, ys, SADDLE_NET), rtol=1e-10)
    # The GGN is not PSD: c + damping < 0 in some entries, where the old g / (c + damping)
    # climbed the cost.
    c = ravel_pytree(diagonal)[0]
    assert np.any(np.asarray(c) + damping < 0) and np.any(np.asarray(c) > 0)
    g = fbp.grad(params, xs, ys, net=SADDLE_NET)
    g_ref = jax.jit(jax.grad(lambda p: fbp.loss(p, xs, ys, net=SADDLE_NET)))(params)
    assert_tree_close(g, g_ref, rtol=1e-10)
    old = jax.tree.map(lambda g, c: -lr * g / (c + damping), g, diagonal)
    assert _dot(old, g) > 0  # the unclamped step was an ascent direction here

    optimizer = curvature.diag_ggn_descent(lr, damping=damping, decay=decay)
    state = optimizer.init(params)
    new, state = training.train_step(None, optimizer, params, state, xs, ys, net=SADDLE_NET)
    update = jax.tree.map(lambda n, p: n - p, new, params)
    expected = jax.tree.map(lambda g, c: -lr * g / (jnp.maximum(c, 0) + damping), g, diagonal)
    assert_tree_close(update, expected, rtol=1e-10)
    # Entry by entry a descent direction: update * g <= 0, and < 0 in total.
    assert all(np.all(np.asarray(u * gr) <= 0) for u, gr in zip(*map(jax.tree.leaves, (update, g))))
    assert _dot(update, g) < 0
    # Where c >= 0 it is the unclamped step.
    for u, o, cc in zip(*map(jax.tree.leaves, (update, old, diagonal))):
        np.testing.assert_allclose(np.asarray(u)[cc >= 0], np.asarray(o)[cc >= 0], rtol=1e-12)
    # A short step along it lowers the cost (first order: <update, g> < 0).
    stepped = jax.tree.map(lambda p, u: p + 1e-3 * u, params, update)
    assert fbp.loss(stepped, xs, ys, net=SADDLE_NET) < fbp.loss(params, xs, ys, net=SADDLE_NET)


def test_preconditioner_equals_the_unclamped_one_for_a_convex_cost():
    params, xs, ys = _problem(batch=4, seed=4)
    net = fbp.Network("sigmoid", None, "quadratic")
    diagonal = curvature.diag_ggn(params, xs, ys, net=net)
    assert all(np.all(np.asarray(c) >= 0) for c in jax.tree.leaves(diagonal))
    g = fbp.grad(params, xs, ys, net=net)
    transform = curvature.scale_by_diag_ggn(damping=0.1, decay=0.0)
    updates, _ = transform.update(g, transform.init(params), params, diag_ggn=diagonal)
    assert_tree_close(updates, jax.tree.map(lambda g, c: g / (c + 0.1), g, diagonal), 1e-14)


# float16 and bfloat16: computed in float32, returned in the params' dtype.

HALF = {"float16": (jnp.float16, 2e-3), "bfloat16": (jnp.bfloat16, 1.6e-2)}


def _optimizer_run(make):
    """Two steps of an optimizer given diag_ggn: the second uses the running average."""

    def run(p, x, y):
        g = jax.tree.map(lambda leaf: leaf * 10, curvature.mean_diag_ggn(NET, p, x, y))
        optimizer = make()
        state = optimizer.init(p)
        for _ in range(2):
            diagonal = curvature.mean_diag_ggn(NET, p, x, y)
            updates, state = optimizer.update(g, state, p, diag_ggn=diagonal)
        return updates, state

    return run


def _curvature_transformation(p, x, y):
    chained = optax.chain(curvature.scale_by_diag_ggn(0.1, 0.9), optax.scale(-0.1))
    optimizer = curvature.CurvatureTransformation(*chained)
    new, _ = training.train_step(None, optimizer, p, optimizer.init(p), x, y, net=NET)
    return new


# name in __all__: (call, whether the result is in the params' dtype (else >= float32)).
HALF_RUNS = {
    "diag_ggn": (lambda p, x, y: curvature.diag_ggn(p, x, y, net=NET), True),
    "mean_diag_ggn": (lambda p, x, y: curvature.mean_diag_ggn(NET, p, x, y), True),
    "diag_ggn_mc": (
        lambda p, x, y: curvature.diag_ggn_mc(jax.random.key(1), p, x, y, samples=3, net=NET),
        True,
    ),
    "kfac_factors": (lambda p, x, y: curvature.kfac_factors(p, x, y, net=NET), True),
    "KFACFactors": (lambda p, x, y: curvature.kfac_factors(p, x, y, net=NET)[0], True),
    "scale_by_diag_ggn": (
        lambda p, x, y: _optimizer_run(lambda: curvature.scale_by_diag_ggn(0.1, 0.9))(p, x, y)[0],
        True,
    ),
    "diag_ggn_descent": (
        lambda p, x, y: _optimizer_run(lambda: curvature.diag_ggn_descent(0.1))(p, x, y)[0],
        True,
    ),
    "DiagGGNState": (  # the running average is kept in at least float32
        lambda p, x, y: _optimizer_run(curvature.scale_by_diag_ggn)(p, x, y)[1].curvature,
        False,
    ),
    "CurvatureTransformation": (_curvature_transformation, True),
    "batch_diag_ggn": (lambda p, x, y: curvature.batch_diag_ggn(p, x, y, net=NET), True),
    "batch_diag_ggn_mc": (
        lambda p, x, y: curvature.batch_diag_ggn_mc(jax.random.key(1), p, x, y, samples=3, net=NET),
        True,
    ),
    "kfac_factors_mc": (
        lambda p, x, y: curvature.kfac_factors_mc(jax.random.key(1), p, x, y, samples=3, net=NET),
        True,
    ),
    "ggn_vector_product": (
        lambda p, x, y: curvature.ggn_vector_product(p, p, x, y, net=NET),
        True,
    ),
    "hessian_vector_product": (
        lambda p, x, y: curvature.hessian_vector_product(p, p, x, y, net=NET),
        True,
    ),
    "diag_hessian": (lambda p, x, y: curvature.diag_hessian(p, x, y, net=NET), True),
    "sum_grad_squared": (lambda p, x, y: statistics.sum_grad_squared(p, x, y, net=NET), True),
    "grad_variance": (lambda p, x, y: statistics.grad_variance(p, x, y, net=NET), True),
    "batch_dot": (lambda p, x, y: statistics.batch_dot(p, x, y, net=NET), True),
    "gradient_noise_scale": (  # scalars in at least float32: float16 would overflow
        lambda p, x, y: statistics.gradient_noise_scale(p, x, y, net=NET),
        False,
    ),
    "NoiseScale": (lambda p, x, y: statistics.gradient_noise_scale(p, x, y, net=NET), False),
}


def test_every_public_name_has_a_half_precision_run():
    assert set(HALF_RUNS) == set(curvature.__all__) | set(statistics.__all__)


@pytest.mark.parametrize("half", HALF)
@pytest.mark.parametrize("name", HALF_RUNS)
def test_half_precision_is_computed_in_float32(name, half):
    dtype, rtol = HALF[half]
    run, in_params_dtype = HALF_RUNS[name]
    params, xs, ys = _problem(batch=6, seed=5)
    low = jax.tree.map(lambda a: jnp.asarray(a, dtype), (params, xs, ys))
    # The float32 reference sees the same (rounded) inputs.
    run = jax.jit(run)  # one program, not op by op
    exact = run(*jax.tree.map(lambda a: a.astype(jnp.float32), low))
    result = run(*low)
    expected_dtype = dtype if in_params_dtype else jnp.float32
    assert {leaf.dtype for leaf in jax.tree.leaves(result)} == {jnp.dtype(expected_dtype)}
    assert_tree_close(result, jax.tree.map(lambda a: a.astype(expected_dtype), exact), rtol=rtol)


def test_half_precision_diag_ggn_is_close_to_float64_autodiff():
    """Beyond agreeing with float32: float16 inputs give the float64 jax.hessian GGN to
    the inputs' rounding."""
    params, xs, ys = _problem(batch=6, seed=6)
    net = fbp.Network("tanh", "identity", "quadratic")
    low = jax.tree.map(lambda a: jnp.asarray(a, jnp.float16), (params, xs, ys))
    reference = _reference_diag_ggn(*jax.tree.map(lambda a: a.astype(jnp.float64), low), net)
    result = curvature.diag_ggn(*low, net=net)
    assert_tree_close(jax.tree.map(lambda a: a.astype(jnp.float64), result), reference, rtol=2e-3)


# The gradient noise scale where its ratio has no finite value.


@functools.partial(jax.jit, static_argnames="net")
def _reference_noise(params, xs, ys, net):
    """(trace, |G|^2) from jax.vmap(jax.grad) of each example's cost."""
    per_example = jax.vmap(
        jax.grad(lambda p, x, y: fbp.loss(p, x[None], y[None], net=net)), in_axes=(None, 0, 0)
    )(params, xs, ys)
    flat = jax.vmap(lambda g: ravel_pytree(g)[0])(per_example)
    n, mean = xs.shape[0], jnp.mean(flat, axis=0)
    trace = jnp.sum((flat - mean[None]) ** 2) / (n - 1)
    return trace, jnp.sum(mean**2) - trace / n


def test_noise_scale_with_zero_mean_gradient_is_minus_n():
    """g_1 = -g_2: g_bar = 0 exactly, |G|^2 = -tr(Sigma)/N, B_simple = -N."""
    params = [fbp.Layer(jnp.zeros((1, 1)), jnp.zeros(1))]
    xs, ys = jnp.ones((2, 1)), jnp.array([[1.0], [-1.0]])
    net = fbp.Network("identity", None, "quadratic")
    noise = statistics.gradient_noise_scale(params, xs, ys, net=net)
    trace, grad_norm_sq = _reference_noise(params, xs, ys, net)
    np.testing.assert_allclose([noise.trace, noise.grad_norm_sq], [trace, grad_norm_sq], 1e-14)
    # g_bar = 0 exactly, so |G|^2 = -tr(Sigma)/N; tr(Sigma) = (2 + 2) / (N - 1) = 4.
    assert float(noise.grad_norm_sq) == -float(noise.trace) / 2
    np.testing.assert_allclose([noise.trace, noise.b_simple], [4.0, -2.0], rtol=1e-14)


def test_noise_scale_with_every_gradient_zero_is_nan_with_finite_parts():
    """Outputs equal to the targets: every g_i = 0, the ratio 0/0 is NaN by definition."""
    rng = np.random.default_rng(7)
    params = [
        fbp.Layer(jnp.asarray(rng.normal(size=(4, 3))), jnp.asarray(rng.normal(size=4))),
        fbp.Layer(jnp.zeros((2, 4)), jnp.asarray(rng.normal(size=2))),
    ]
    xs = jnp.asarray(rng.normal(size=(5, 3)))
    ys = jnp.broadcast_to(params[1].b, (5, 2))  # a^L = 0 h + b exactly
    net = fbp.Network("tanh", "identity", "quadratic")
    noise = statistics.gradient_noise_scale(params, xs, ys, net=net)
    assert float(noise.trace) == 0.0 and float(noise.grad_norm_sq) == 0.0
    assert np.isnan(float(noise.b_simple))
    trace, grad_norm_sq = _reference_noise(params, xs, ys, net)
    assert float(trace) == 0.0 and float(grad_norm_sq) == 0.0


def test_noise_scale_of_identical_examples_is_zero():
    """No noise (every g_i the same): trace is exactly 0, not -1e-17, and so B_simple."""
    params, xs, ys = _problem(batch=1, seed=8)
    xs, ys = np.repeat(xs, 4, axis=0), np.repeat(ys, 4, axis=0)
    noise = statistics.gradient_noise_scale(params, xs, ys, net=NET)
    assert float(noise.trace) == 0.0 and float(noise.b_simple) == 0.0
    _, grad_norm_sq = _reference_noise(params, xs, ys, NET)
    np.testing.assert_allclose(noise.grad_norm_sq, grad_norm_sq, rtol=1e-10)


@pytest.mark.parametrize(
    "trace, grad_norm_sq, expected",
    [(3.0, 0.0, np.inf), (0.0, 0.0, np.nan), (3.0, -1.5, -2.0), (3.0, 1.5, 2.0), (0.0, 2.0, 0.0)],
)
def test_noise_ratio_cases(trace, grad_norm_sq, expected):
    ratio = statistics._noise_ratio(jnp.asarray(trace), jnp.asarray(grad_norm_sq))
    np.testing.assert_equal(float(ratio), expected)


def test_noise_ratio_has_a_finite_gradient_where_defined():
    """The jnp.where guard leaves no NaN in the derivative of a finite ratio."""
    d = jax.grad(lambda t, g: statistics._noise_ratio(t, g), argnums=(0, 1))(3.0, 1.5)
    np.testing.assert_allclose(d, (1 / 1.5, -3.0 / 1.5**2))

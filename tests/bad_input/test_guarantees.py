"""No silent wrong answer: a privacy guarantee a mask or a batch bound would break, dropout
off without a word, a posterior used with another network, half precision overflowing
to NaN, a read that blocks forever. Each case is refused before any computation with a
message naming the argument, or gives the correct result."""

import dataclasses
import os
import threading
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import assert_tree_close

import functional_bp as fbp
from functional_bp import curvature, diagnostics, laplace, per_example, privacy, statistics
from functional_bp.io import load_params, save_params
from functional_bp.layers import Conv2D, Dense, Dropout, Flatten, MaxPool2D, init_network
from functional_bp.network import KeyRequiredError
from functional_bp.per_example import ClippedGradient, PrivateGradient

KEY = jax.random.key(0)
PARAMS = fbp.init_mlp(KEY, [3, 4, 2])
XS = jax.random.normal(jax.random.key(1), (6, 3))
YS = jnp.eye(2)[jnp.array([0, 1, 0, 1, 1, 0])]
SGD = optax.sgd(1.0)

# --- a mask cannot weight an example above 1 -------------------------------------------

MASKS = {
    "two": [1.0, 2.0, 0.0, 1.0, 1.0, 1.0],
    "hundred": [100, 1, 1, 1, 0, 0],
    "half": [0.5, 1, 1, 1, 1, 1],
    "negative": [-1.0, 1, 1, 1, 1, 1],
    "nan": [1.0, float("nan"), 1, 1, 1, 1],
    "inf": [1.0, float("inf"), 1, 1, 1, 1],
}


PLAIN = fbp.Network()


def _step(gradient, key=KEY, params=PARAMS, xs=XS, ys=YS, net=PLAIN):
    return fbp.training.train_step(
        key, SGD, params, SGD.init(params), xs, ys, gradient=gradient, net=net
    )[0]


@pytest.mark.parametrize("gradient", [ClippedGradient, PrivateGradient])
@pytest.mark.parametrize("name", MASKS)
def test_a_mask_other_than_zero_and_one_is_refused(gradient, name):
    mask = jnp.asarray(MASKS[name])
    args = (1.0,) if gradient is ClippedGradient else (1.0, 1.1)
    with pytest.raises(ValueError, match=r"mask to hold only 0 and 1 .*mask\[\d\] ="):
        _step(gradient(*args, expected_batch_size=4.0, mask=mask))


@pytest.mark.parametrize("gradient", [ClippedGradient, PrivateGradient])
def test_a_mask_needs_the_expected_batch_size(gradient):
    args = (1.0,) if gradient is ClippedGradient else (1.0, 1.1)
    mask = jnp.array([True, True, True, False, False, False])
    with pytest.raises(ValueError, match="expected_batch_size .* with a mask, got None"):
        _step(gradient(*args, mask=mask))


def test_a_mask_of_the_wrong_length_is_refused():
    with pytest.raises(ValueError, match=r"mask to have shape \(6,\)"):
        _step(ClippedGradient(1.0, expected_batch_size=3.0, mask=jnp.ones(5, bool)))


def test_a_traced_mask_counts_only_entries_equal_to_one():
    """Inside the caller's jit the values cannot be checked: an entry of 2 or NaN then
    weighs nothing, so no mask can move the params by more than the clip norm allows."""

    @jax.jit
    def moved(mask):
        gradient = ClippedGradient(1.0, expected_batch_size=1.0, mask=mask)
        return _step(gradient)

    alone = moved(jnp.array([1.0, 0, 0, 0, 0, 0]))
    for bad in (2.0, 100.0, float("nan")):
        got = moved(jnp.array([1.0, bad, 0, 0, 0, 0]))
        assert_tree_close(got, alone, 1e-15)
    change = np.sqrt(
        sum(
            float(jnp.sum((a - b) ** 2))
            for a, b in zip(jax.tree.leaves(alone), jax.tree.leaves(PARAMS))
        )
    )
    assert change <= 1.0 + 1e-12  # eta 1, clip 1, one example over an expected batch of 1


def test_a_boolean_and_a_zero_one_mask_agree():
    as_bool = jnp.array([True, False, True, True, False, True])
    bool_step = _step(ClippedGradient(1.0, expected_batch_size=4.0, mask=as_bool))
    for mask in (as_bool.astype(jnp.int32), as_bool.astype(jnp.float64)):
        assert_tree_close(
            _step(ClippedGradient(1.0, expected_batch_size=4.0, mask=mask)), bool_step, 1e-15
        )


# --- a padded batch below the expected batch -----------------------------------------

N_POISSON = 200
POISSON_XS = jax.random.normal(jax.random.key(2), (N_POISSON, 3))
POISSON_YS = jnp.eye(2)[jnp.arange(N_POISSON) % 2]


def _poisson(max_batch, rate=0.5):
    gradient = PrivateGradient(1.0, 1.1)
    return privacy.poisson_epoch(
        KEY,
        SGD,
        PARAMS,
        SGD.init(PARAMS),
        POISSON_XS,
        POISSON_YS,
        sample_rate=rate,
        gradient=gradient,
        max_batch=max_batch,
    )


@pytest.mark.parametrize("max_batch", [1, 50, 99])
def test_a_max_batch_below_the_expected_batch_is_refused(max_batch):
    with pytest.raises(
        ValueError, match=rf"max_batch >= the expected batch q N = 100 .*got {max_batch}"
    ):
        _poisson(max_batch)


def test_a_max_batch_that_overflows_often_warns_with_the_figure():
    with pytest.warns(UserWarning, match=r"max_batch=110 .* probability up to 0\.\d+ \(Chernoff"):
        _poisson(110)


def test_the_default_max_batch_and_a_large_one_do_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _poisson(None)
        _poisson(N_POISSON)


def test_overflow_probability_bounds_the_binomial_tail():
    from math import comb

    n, q = 60, 0.25
    for m in (15, 20, 30, 45):
        exact = sum(comb(n, k) * q**k * (1 - q) ** (n - k) for k in range(m + 1, n + 1))
        assert exact <= privacy.overflow_probability(n, q, m) <= 1
    assert privacy.overflow_probability(n, q, n) == 0
    assert (
        privacy.overflow_probability(
            60000, 256 / 60000, privacy.default_max_batch(60000, 256 / 60000)
        )
        <= 1e-9
    )


def test_an_unattainable_target_epsilon_names_it():
    with pytest.raises(
        ValueError, match=r"target_epsilon the 'rdp' accountant can reach, got 1e-09"
    ):
        privacy.noise_multiplier(1e-9, 1.0, 10_000_000, 1e-10)


# --- dropout never silently off --------------------------------------------------------

DROP = fbp.Network("relu", "softmax", "log_likelihood", layers=(Dense(4), Dropout(0.5), Dense(2)))
INPUT_DROP = fbp.Network(
    "relu", "softmax", "log_likelihood", layers=(Dropout(0.5), Dense(4), Dense(2))
)
CONV_DROP = fbp.Network(
    "relu",
    "softmax",
    "log_likelihood",
    layers=(Conv2D(2, 3), MaxPool2D(2), Flatten(), Dropout(0.3), Dense(3)),
)
DROP_PARAMS = init_network(KEY, DROP, (3,))
CONV_PARAMS = init_network(KEY, CONV_DROP, (1, 6, 6))
IMAGES = jax.random.normal(jax.random.key(3), (4, 1, 6, 6))
LABELS = jnp.array([0, 1, 2, 1])

WITHOUT_KEY = {
    "train_step": lambda net, p, x, y: fbp.training.train_step(
        None, SGD, p, SGD.init(p), x, y, net=net
    ),
    "train_step ClippedGradient": lambda net, p, x, y: fbp.training.train_step(
        None, SGD, p, SGD.init(p), x, y, gradient=ClippedGradient(1.0), net=net
    ),
    "grad": lambda net, p, x, y: fbp.grad(p, x, y, net=net),
    "value_and_grad": lambda net, p, x, y: fbp.value_and_grad(p, x, y, net=net),
    "per_example_grads": lambda net, p, x, y: per_example.per_example_grads(p, x, y, net=net),
    "per_example_grad_norms": lambda net, p, x, y: per_example.per_example_grad_norms(
        p, x, y, net=net
    ),
    "clipped_grad": lambda net, p, x, y: per_example.clipped_grad(p, x, y, 1.0, net=net),
    "sum_grad_squared": lambda net, p, x, y: statistics.sum_grad_squared(p, x, y, net=net),
    "gradient_noise_scale": lambda net, p, x, y: statistics.gradient_noise_scale(p, x, y, net=net),
    "diag_ggn": lambda net, p, x, y: curvature.diag_ggn(p, x, y, net=net),
    "feedback_grad": lambda net, p, x, y: fbp.feedback.feedback_grad(
        p, None, x, y, rule="sign", net=net
    ),
    "check_gradients": lambda net, p, x, y: fbp.check_gradients(p, x, y, net=net),
}
PROBLEMS = {
    "dense": (DROP, DROP_PARAMS, XS[:4], LABELS % 2),
    "input dropout": (INPUT_DROP, init_network(KEY, INPUT_DROP, (3,)), XS[:4], LABELS % 2),
    "conv": (CONV_DROP, CONV_PARAMS, IMAGES, LABELS),
}


@pytest.mark.parametrize("problem", PROBLEMS)
@pytest.mark.parametrize("name", WITHOUT_KEY)
def test_a_backward_pass_through_dropout_without_a_key_is_refused(name, problem):
    net, p, x, y = PROBLEMS[problem]
    with pytest.raises(
        KeyRequiredError,
        match=r"needs a key: net.layers\[\d\] is Dropout\(rate=0\.\d+\).*net=net.deterministic\(\)",
    ):
        WITHOUT_KEY[name](net, p, x, y)


def test_the_refusal_names_the_public_function():
    with pytest.raises(KeyRequiredError, match=r"^per_example_grad_norms needs a key"):
        per_example.per_example_grad_norms(DROP_PARAMS, XS[:4], LABELS % 2, net=DROP)


@pytest.mark.parametrize("problem", PROBLEMS)
def test_deterministic_is_the_network_without_dropout(problem):
    net, p, x, y = PROBLEMS[problem]
    off = net.deterministic()
    assert not off.has_dropout and off.deterministic() is off
    without = dataclasses.replace(
        net, layers=tuple(s for s in net.layers if type(s) is not Dropout)
    )
    assert off == without
    assert_tree_close(fbp.grad(p, x, y, net=off), fbp.grad(p, x, y, net=without), 0)
    # Evaluation takes no key: the forward pass and the cost run without dropout.
    assert_tree_close(fbp.loss(p, x, y, net=net), fbp.loss(p, x, y, net=off), 1e-15)
    # With a key the masks are drawn: the gradient differs from the one without dropout.
    with_key = fbp.grad(p, x, y, net=net, key=jax.random.key(7))
    assert not np.allclose(
        jax.tree.leaves(with_key)[0], jax.tree.leaves(fbp.grad(p, x, y, net=off))[0]
    )


def test_training_with_a_key_draws_the_masks():
    step = lambda key: fbp.training.train_step(
        key, SGD, DROP_PARAMS, SGD.init(DROP_PARAMS), XS[:4], LABELS % 2, net=DROP
    )[0]
    assert not np.allclose(step(jax.random.key(1))[0].w, step(jax.random.key(2))[0].w)


# --- a posterior knows its network ------------------------------------------------------

CLASSIFIER = fbp.Network("relu", "softmax", "log_likelihood")
CLASS_LABELS = jnp.array([0, 1, 0, 1, 1, 0])


@pytest.mark.parametrize("structure", laplace.STRUCTURES)
def test_a_posterior_refuses_another_network(structure):
    posterior = laplace.fit(PARAMS, XS, CLASS_LABELS, structure=structure, net=CLASSIFIER)
    assert posterior.net == CLASSIFIER
    other = fbp.Network("tanh", "softmax", "log_likelihood")
    with pytest.raises(
        ValueError,
        match=r"predict: expected the network the posterior was fitted with, .*relu.*net=.*tanh",
    ):
        laplace.predict(posterior, XS, net=other)
    with pytest.raises(ValueError, match=r"logit_distribution: expected the network"):
        laplace.logit_distribution(posterior, XS, net=other)
    # Its own network, by default or given again, predicts the same.
    np.testing.assert_array_equal(
        laplace.predict(posterior, XS), laplace.predict(posterior, XS, net=CLASSIFIER)
    )
    # Refitting the prior precision keeps the network.
    assert laplace.optimize_prior_precision(posterior).net == CLASSIFIER


def test_the_default_predictive_uses_the_fitted_network_not_network_default():
    posterior = laplace.fit(PARAMS, XS, CLASS_LABELS, net=CLASSIFIER)
    mean, _ = laplace.logit_distribution(posterior, XS)
    relu_logits = fbp.core.forward_pass(CLASSIFIER, PARAMS, XS).zs[-1]
    np.testing.assert_allclose(mean, relu_logits, rtol=1e-12)


def test_a_posterior_without_a_network_needs_one():
    posterior = laplace.fit(PARAMS, XS, CLASS_LABELS, net=CLASSIFIER)._replace(net=None)
    with pytest.raises(ValueError, match="records no network .* pass net="):
        laplace.predict(posterior, XS)
    assert laplace.predict(posterior, XS, net=CLASSIFIER).shape == (6, 2)


# --- half precision: no silent NaN --------------------------------------------------------

HALF_NET = fbp.Network("relu", "softmax", "log_likelihood")


def _half_problem(dtype):
    params = fbp.init_mlp(KEY, [64, 8, 3], dtype=dtype)
    xs = (1e4 * jax.random.normal(jax.random.key(3), (5, 64))).astype(dtype)  # finite in float16
    return params, xs, jnp.array([0, 1, 2, 0, 1])


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16], ids=["float16", "bfloat16"])
def test_half_precision_gradients_are_computed_in_float32(dtype):
    params, xs, ys = _half_problem(dtype)
    up = jax.tree.map(lambda a: a.astype(jnp.float32), params)
    expected = fbp.grad(up, xs.astype(jnp.float32), ys, net=HALF_NET)
    got = fbp.grad(params, xs, ys, net=HALF_NET)
    assert [g.w.dtype for g in got] == [dtype, dtype]
    assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(got))
    assert_tree_close(got, jax.tree.map(lambda a: a.astype(dtype), expected), 0)
    for step in (
        fbp.sgd_step(params, xs, ys, 0.1, net=HALF_NET),
        fbp.training.train_step(None, SGD, params, SGD.init(params), xs, ys, net=HALF_NET)[0],
        per_example.per_example_grads(params, xs, ys, net=HALF_NET),
    ):
        assert {leaf.dtype for leaf in jax.tree.leaves(step)} == {np.dtype(dtype)}
        assert not any(bool(jnp.any(jnp.isnan(leaf))) for leaf in jax.tree.leaves(step))


def test_a_half_precision_loss_beyond_its_range_is_inf_not_nan():
    params, xs, ys = _half_problem(jnp.float16)
    up = jax.tree.map(lambda a: a.astype(jnp.float32), params)
    exact = float(fbp.loss(up, xs.astype(jnp.float32), ys, net=HALF_NET))
    got = fbp.loss(params, xs, ys, net=HALF_NET)
    assert got.dtype == jnp.float16 and not jnp.isnan(got)
    assert float(got) == float(jnp.float16(exact))  # rounded from float32: inf above 65504


@pytest.mark.parametrize("structure", laplace.STRUCTURES)
@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16], ids=["float16", "bfloat16"])
def test_laplace_of_half_precision_params_decomposes_in_float32(structure, dtype):
    params = jax.tree.map(lambda a: a.astype(dtype), PARAMS)
    posterior = laplace.fit(
        params, XS.astype(dtype), CLASS_LABELS, structure=structure, net=CLASSIFIER
    )
    leaves = jax.tree.leaves(posterior.curvature)
    assert {leaf.dtype for leaf in leaves} == {np.dtype(jnp.float32)}
    probabilities = laplace.predict(posterior, XS.astype(dtype))
    assert bool(jnp.all(jnp.isfinite(probabilities)))
    np.testing.assert_allclose(jnp.sum(probabilities, axis=-1), 1, rtol=1e-2)


# --- files and reads that cannot block -------------------------------------------------


def _in_thread(fn, timeout=30):
    box = {}

    def run():
        try:
            box["result"] = fn()
        except BaseException as error:  # noqa: BLE001  (handed to the test)
            box["error"] = error

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), "the read blocked"
    return box


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_load_params_refuses_a_fifo_at_once(tmp_path):
    fifo = tmp_path / "params.npz"
    os.mkfifo(fifo)
    box = _in_thread(lambda: load_params(fifo))
    assert isinstance(box.get("error"), ValueError)
    assert str(box["error"]) == (
        f"{fifo}: not a functional_bp params file (it is a FIFO (named pipe), not a regular file)"
    )


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_load_params_through_a_symlink_to_a_fifo_and_read_idx_of_one(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    link = tmp_path / "link.npz"
    link.symlink_to(fifo)
    box = _in_thread(lambda: load_params(link))
    assert isinstance(box.get("error"), ValueError) and "FIFO" in str(box["error"])
    box = _in_thread(lambda: fbp.data.read_idx(fifo))
    assert isinstance(box.get("error"), ValueError)
    assert str(box["error"]).startswith(f"{fifo}: not an IDX file (it is a FIFO")


def test_a_regular_file_and_a_symlink_to_one_still_load(tmp_path):
    path = save_params(tmp_path / "p.npz", PARAMS, cost="quadratic")
    link = tmp_path / "link.npz"
    link.symlink_to(path)
    for where in (path, link):
        params, meta = load_params(where)
        assert meta["cost"] == "quadratic"
        assert_tree_close(params, PARAMS, 0)


# --- the weak ones ------------------------------------------------------------------------


def test_a_convolutional_forward_of_no_examples_is_empty():
    out, cache = fbp.forward(CONV_PARAMS, jnp.zeros((0, 1, 6, 6)), net=CONV_DROP)
    assert out.shape == (0, 3)
    assert fbp.mlp(CONV_PARAMS, jnp.zeros((0, 1, 6, 6)), net=CONV_DROP).shape == (0, 3)


@pytest.mark.parametrize("value", [float("nan"), -1.0, 0, float("inf"), "1e6"], ids=repr)
def test_check_divergence_refuses_a_max_abs_that_switches_it_off(value):
    with pytest.raises((TypeError, ValueError), match="max_abs"):
        diagnostics.check_divergence(PARAMS, 0.5, max_abs=value)


def test_check_divergence_still_takes_none_for_no_limit():
    big = [fbp.Layer(layer.w * 1e9, layer.b) for layer in PARAMS]
    assert diagnostics.check_divergence(big, 0.5, max_abs=None) is None
    with pytest.raises(diagnostics.TrainingDiverged, match="largest"):
        diagnostics.check_divergence(big, 0.5)


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class _ModuleLike:
    """What an equinox module looks like to JAX: arrays and a function as leaves."""

    weight: jax.Array
    bias: jax.Array
    activation: object


@pytest.mark.parametrize(
    "call",
    [
        lambda m: fbp.grad(m, XS, YS),
        lambda m: fbp.loss(m, XS, YS),
        lambda m: per_example.per_example_grad_norms(m, XS, YS),
        lambda m: fbp.training.train_step(None, SGD, m, SGD.init([]), XS, YS),
    ],
    ids=["grad", "loss", "per_example_grad_norms", "train_step"],
)
def test_a_model_of_another_library_gets_the_librarys_message(call):
    module = _ModuleLike(jnp.ones((2, 3)), jnp.zeros(2), jax.nn.relu)
    with pytest.raises(
        TypeError,
        match=r"params of \w+ to be a list of Layer.*_ModuleLike, whose leaf params.activation",
    ):
        call(module)


@pytest.mark.parametrize("where", ["activation", "output_activation"], ids=["hidden", "output"])
def test_an_activation_without_a_derivative_is_refused_when_the_network_is_built(where):
    bare = fbp.Activation(jnp.sin, name="sin")  # neither derivative nor vjp
    with pytest.raises(TypeError, match="Activation 'sin' to have a callable derivative"):
        fbp.Network(**{where: bare})

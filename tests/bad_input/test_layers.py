"""Bad input to the layer types (functional_bp.layers) and to the functions that take a
network with ``layers``: each is refused with the exception type and a message that names
what is wrong (the layer's number and type, the shapes), at trace time."""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import functional_bp as fbp
from functional_bp import _second_order, curvature, diagnostics, feedback, laplace
from functional_bp.layers import (
    AvgPool2D,
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    MaxPool2D,
    init_network,
    shapes,
)

NET = fbp.Network(
    activation="relu",
    output_activation="softmax",
    cost="log_likelihood",
    layers=(Conv2D(2, 3), MaxPool2D(2), Flatten(), Dense(3)),
)


@functools.lru_cache
def _problem():
    params = init_network(jax.random.key(0), NET, (1, 6, 6), dtype=jnp.float64)
    xs = jnp.asarray(np.random.default_rng(0).normal(size=(2, 1, 6, 6)))
    ys = jnp.array([0, 2])
    return params, xs, ys


# --- layer specs and Network(layers=...) ----------------------------------------------


def test_kernel_larger_than_input():
    net = fbp.Network(layers=(Conv2D(2, 5), Flatten(), Dense(2)))
    with pytest.raises(
        ValueError, match=r"layer 1 \(Conv2D.*kernel \(5, 5\) is larger than its input \(4, 4\)"
    ):
        shapes(net, (1, 4, 4))
    with pytest.raises(ValueError, match=r"layer 1 \(Conv2D.*larger than its input"):
        init_network(jax.random.key(0), net, (1, 4, 4))


def test_pool_size_does_not_divide():
    net = fbp.Network(layers=(Conv2D(2, 2), AvgPool2D(2), Flatten(), Dense(2)))
    with pytest.raises(
        ValueError, match=r"layer 2 \(AvgPool2D\(size=2\)\).*does not divide.*\(5, 5\)"
    ):
        shapes(net, (1, 6, 6))
    net = fbp.Network(layers=(MaxPool2D(3), Flatten(), Dense(2)))
    params = init_network(jax.random.key(0), net, (1, 6, 6))
    with pytest.raises(
        ValueError, match=r"layer 1 \(MaxPool2D\(size=3\)\).*does not divide.*\(4, 4\)"
    ):
        fbp.grad(params, jnp.ones((2, 1, 4, 4)), jnp.zeros((2, 2)), net=net)


def test_channels_do_not_match():
    params, _, ys = _problem()
    xs = jnp.ones((2, 3, 6, 6))
    with pytest.raises(
        ValueError, match=r"layer 1 \(Conv2D.*params\[0\]\) w.*\(2, 3, 3, 3\).*\(2, 1, 3, 3\)"
    ):
        fbp.grad(params, xs, ys, net=NET)


def test_dense_after_images_without_flatten():
    net = fbp.Network(layers=(Conv2D(2, 3), Dense(2)))
    with pytest.raises(ValueError, match=r"layer 2 \(Dense\(n=2\)\).*\(2, 4, 4\).*Flatten"):
        shapes(net, (1, 6, 6))


def test_layers_must_end_with_dense():
    with pytest.raises(ValueError, match=r"end with a Dense.*Flatten"):
        fbp.Network(layers=(Conv2D(2, 3), Flatten()))
    with pytest.raises(ValueError, match=r"end with a Dense.*nothing"):
        fbp.Network(layers=())


def test_layers_with_a_non_layer():
    with pytest.raises(TypeError, match=r"layers\[1\].*layer type"):
        fbp.Network(layers=(Conv2D(2, 3), "relu", Flatten(), Dense(2)))
    with pytest.raises(TypeError, match=r"layers.*tuple of layer types.*str"):
        fbp.Network(layers="conv")


@pytest.mark.parametrize(
    "rate, error, match",
    [
        (1.0, ValueError, r"Dropout\(rate\).*\[0, 1\).*1\.0"),
        (-0.1, ValueError, r"Dropout\(rate\).*\[0, 1\).*-0\.1"),
        ("a", TypeError, r"Dropout\(rate\).*number.*str"),
        (True, TypeError, r"Dropout\(rate\).*number.*bool"),
    ],
)
def test_dropout_rate(rate, error, match):
    with pytest.raises(error, match=match):
        Dropout(rate)


def test_conv_options():
    with pytest.raises(ValueError, match=r"Conv2D\(filters\)"):
        Conv2D(0, 3)
    with pytest.raises(ValueError, match=r"Conv2D\(padding\).*'full'"):
        Conv2D(2, 3, padding="full")
    with pytest.raises(ValueError, match=r"Conv2D\(kernel\).*\(3, 3, 3\)"):
        Conv2D(2, (3, 3, 3))
    with pytest.raises(ValueError, match=r"Conv2D\(padding\)"):
        Conv2D(2, 3, padding=-1)
    with pytest.raises(TypeError, match=r"Conv2D\(stride\) to be an int >= 1, got 1.5"):
        Conv2D(2, 3, stride=1.5)
    with pytest.raises(ValueError, match=r"MaxPool2D\(size\) to be an int >= 1, got 0"):
        MaxPool2D(0)


# --- params and data ----------------------------------------------------------------------


def test_wrong_number_of_params():
    params, xs, labels = _problem()
    ys = jax.nn.one_hot(labels, 3, dtype=jnp.float64)
    with pytest.raises(ValueError, match=r"hold 2 Layer\(w, b\).*got 1"):
        fbp.grad(params[:1], xs, ys, net=NET)
    with pytest.raises(ValueError, match=r"hold 2 Layer\(w, b\).*got 3"):
        fbp.loss([*params, params[-1]], xs, ys, net=NET)


def test_wrong_number_of_params_with_integer_labels():
    params, xs, ys = _problem()  # labels 0 and 2; params[:1] ends with a Conv2D of 2 filters
    with pytest.raises(ValueError, match=r"hold 2 Layer\(w, b\).*got 1"):
        fbp.grad(params[:1], xs, ys, net=NET)


def test_w_of_wrong_shape_names_the_layer():
    params, xs, ys = _problem()
    bad = [params[0], fbp.Layer(params[1].w[:, :-1], params[1].b)]
    with pytest.raises(
        ValueError, match=r"layer 4 \(Dense\(n=3\), params\[1\]\) w.*\(3, 8\).*\(3, 7\)"
    ):
        fbp.grad(bad, xs, ys, net=NET)
    bad = [fbp.Layer(params[0].w, params[0].b[:1]), params[1]]
    with pytest.raises(ValueError, match=r"layer 1 \(Conv2D.*params\[0\]\) b.*\(2,\).*\(1,\)"):
        fbp.grad(bad, xs, ys, net=NET)


def test_xs_of_wrong_rank():
    params, xs, ys = _problem()
    with pytest.raises(ValueError, match=r"x to have shape \(batch, C, H, W\).*Conv2D.*\(2, 36\)"):
        fbp.grad(params, xs.reshape(2, 36), ys, net=NET)
    with pytest.raises(ValueError, match=r"x to have shape.*\(1, 6, 6\)"):
        fbp.grad(params, xs[0], ys, net=NET)


def test_ys_of_wrong_shape():
    params, xs, _ = _problem()
    with pytest.raises(ValueError, match=r"y to have shape \(2, 3\).*3 neurons.*got \(2, 4\)"):
        fbp.grad(params, xs, jnp.zeros((2, 4)), net=NET)
    with pytest.raises(ValueError, match=r"labels y to have shape \(2,\).*got \(3,\)"):
        fbp.grad(params, xs, jnp.array([0, 1, 2]), net=NET)
    with pytest.raises(ValueError, match=r"class labels in \[0, 3\).*0 to 5"):
        fbp.grad(params, xs, jnp.array([0, 5]), net=NET)


# --- functions for dense layers only --------------------------------------------------

DENSE_ONLY = r"dense layers only; net.layers has Conv2D\(filters=2.*at layer 1"


def test_dense_only_functions_refuse_conv_nets():
    params, xs, ys = _problem()
    with pytest.raises(ValueError, match=DENSE_ONLY):
        curvature.kfac_factors(params, xs, ys, net=NET)
    with pytest.raises(ValueError, match=DENSE_ONLY):
        diagnostics.layer_gradient_norms(params, xs, ys, net=NET)
    with pytest.raises(ValueError, match=DENSE_ONLY):
        _second_order.hessian_vector_product(params, params, xs, ys, net=NET)
    with pytest.raises(ValueError, match=DENSE_ONLY):
        laplace.fit(params, xs, ys, net=NET)


def test_dense_only_function_names_a_dropout_layer():
    net = fbp.Network(layers=(Dense(4), Dropout(0.5), Dense(2)))
    params = init_network(jax.random.key(0), net, (3,), dtype=jnp.float64)
    with pytest.raises(
        ValueError, match=r"dense layers only; net.layers has Dropout\(rate=0.5\) at layer 2"
    ):
        curvature.kfac_factors(params, jnp.ones((2, 3)), jnp.zeros((2, 2)), net=net)


def test_dfa_refused_with_dropout():
    net = fbp.Network(layers=(Dense(4), Dropout(0.5), Dense(2)))
    params = init_network(jax.random.key(0), net, (3,), dtype=jnp.float64)
    xs, ys = jnp.ones((2, 3)), jnp.zeros((2, 2))
    with pytest.raises(ValueError, match=r"Rule 'dfa' .* past the Dropout"):
        feedback.feedback_grad(params, None, xs, ys, rule="dfa", net=net)
    with pytest.raises(ValueError, match=r"Rule 'dfa' .* past the Dropout"):
        feedback.init_feedback(jax.random.key(0), params, "dfa", net=net)


# --- init_network and keys ----------------------------------------------------------------


def test_init_network_without_layers():
    with pytest.raises(ValueError, match=r"Network with layers=.*init_mlp"):
        init_network(jax.random.key(0), fbp.Network(), (3,))


def test_init_network_input_too_small():
    with pytest.raises(
        ValueError, match=r"layer 1 \(Conv2D.*kernel \(3, 3\) is larger than its input \(2, 2\)"
    ):
        init_network(jax.random.key(0), NET, (1, 2, 2))


def test_grad_key_of_wrong_type():
    params, xs, ys = _problem()
    with pytest.raises(TypeError, match=r"key to be a jax.random key.*int 3"):
        fbp.grad(params, xs, ys, net=NET, key=3)
    with pytest.raises(TypeError, match=r"key to be a jax.random key.*float64 of shape \(3,\)"):
        fbp.grad(params, xs, ys, net=NET, key=jnp.zeros(3))


@pytest.mark.parametrize(
    "name, call",
    [
        ("kfac_factors", lambda p, x, y: curvature.kfac_factors(p, x, y, net=NET)),
        (
            "layer_gradient_norms",
            lambda p, x, y: diagnostics.layer_gradient_norms(p, x, y, net=NET),
        ),
        ("laplace.fit", lambda p, x, y: laplace.fit(p, x, y, net=NET)),
    ],
)
def test_the_refusal_names_the_function(name, call):
    params, xs, ys = _problem()
    with pytest.raises(ValueError, match=rf"^{re.escape(name)} takes dense layers only"):
        call(params, xs, ys)

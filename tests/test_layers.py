"""Layer types (functional_bp.layers: Conv2D, pooling, Flatten, Dropout) against a
reference written here with jax.lax (conv_general_dilated, reduce_window) and jax.grad,
and one convolutional layer's three equations against explicit NumPy loops.

Everything runs under conftest's ``jax_numpy_rank_promotion="raise"``: the batched
forward maps must broadcast their biases explicitly.
"""

import functools
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import assert_tree_close, random_problem
from jax.flatten_util import ravel_pytree

import functional_bp as fbp
from functional_bp import (
    core,
    curvature,
    feedback,
    parallel,
    per_example,
    statistics,
    training,
)
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
from functional_bp.network import KeyRequiredError

RTOL = 1e-10


# --- the reference, written with jax.lax ------------------------------------------

HIDDEN = {"sigmoid": jax.nn.sigmoid, "tanh": jnp.tanh, "relu": jax.nn.relu}


def _act(name):
    return HIDDEN[getattr(name, "name", name)]


def _ref_costs(net, z, ys):
    """Per-example cost from the logits z^L."""
    out = net.output_activation.name
    cost = net.cost.name
    if ys.ndim == 1:  # integer labels
        ys = jax.nn.one_hot(ys, z.shape[-1], dtype=z.dtype)
    if (out, cost) == ("softmax", "log_likelihood"):
        return -jnp.sum(ys * jax.nn.log_softmax(z), axis=-1)
    if (out, cost) == ("sigmoid", "quadratic"):
        return 0.5 * jnp.sum((jax.nn.sigmoid(z) - ys) ** 2, axis=-1)
    if (out, cost) == ("sigmoid", "cross_entropy"):
        return jnp.sum(ys * jax.nn.softplus(-z) + (1 - ys) * jax.nn.softplus(z), axis=-1)
    raise NotImplementedError((out, cost))


def _conv_padding(spec):
    if spec.padding == "valid":
        return "VALID"
    if spec.padding == "same":
        return "SAME"
    return [(spec.padding, spec.padding)] * 2


def ref_logits(net, params, xs, key=None, feedback_matrices=None):
    """z^L of the network ``net.layers`` written with lax ops. With ``key``, dropout
    masks drawn as documented (the key split once per Dropout, a bernoulli per entry).
    With ``feedback_matrices`` (fa), layer l+1's transport uses B^l in place of w^{l+1}:
    z = f(stop_gradient(a), w) + f(a, B) - stop_gradient(f(a, B))."""
    num = len(params)
    drops = sum(type(s) is Dropout for s in net.layers)
    keys = iter(jax.random.split(key, drops)) if key is not None and drops else None
    a = xs
    l = 0
    for spec in net.layers:
        kind = type(spec)
        if kind in (Conv2D, Dense):
            w, b = params[l]
            if kind is Conv2D:

                def f(a, w, spec=spec):
                    return jax.lax.conv_general_dilated(
                        a,
                        w,
                        spec.stride,
                        _conv_padding(spec),
                        dimension_numbers=("NCHW", "OIHW", "NCHW"),
                    )

                bias = b[None, :, None, None]
            else:

                def f(a, w):
                    return a @ w.T

                bias = b[None, :]
            if feedback_matrices is not None and l > 0:
                B = feedback_matrices[l - 1]
                z = f(jax.lax.stop_gradient(a), w) + f(a, B) - jax.lax.stop_gradient(f(a, B))
            else:
                z = f(a, w)
            z = z + bias
            l += 1
            if l == num:
                return z
            a = _act(net.activation)(z)
        elif kind is MaxPool2D:
            s = spec.size
            a = jax.lax.reduce_window(a, -jnp.inf, jax.lax.max, (1, 1, s, s), (1, 1, s, s), "VALID")
        elif kind is AvgPool2D:
            s = spec.size
            a = (
                jax.lax.reduce_window(a, 0.0, jax.lax.add, (1, 1, s, s), (1, 1, s, s), "VALID")
                / s**2
            )
        elif kind is Flatten:
            a = a.reshape(a.shape[0], -1)
        elif kind is Dropout:
            if keys is not None:
                keep = jax.random.bernoulli(next(keys), 1 - spec.rate, a.shape)
                a = a * keep.astype(a.dtype) / (1 - spec.rate)
        else:
            raise NotImplementedError(spec)
    raise AssertionError("no Dense at the end")


def ref_costs(params, xs, ys, net, key=None, feedback_matrices=None):
    return _ref_costs(net, ref_logits(net, params, xs, key, feedback_matrices), ys)


def ref_loss(params, xs, ys, net, key=None, feedback_matrices=None):
    return jnp.mean(ref_costs(params, xs, ys, net, key, feedback_matrices))


@functools.partial(jax.jit, static_argnames="net")
def ref_value_and_grad(params, xs, ys, net, key=None):
    return jax.value_and_grad(ref_loss)(params, xs, ys, net, key)


@functools.partial(jax.jit, static_argnames="net")
def ref_per_example_grads(params, xs, ys, net, key=None):
    """Materialised: the Jacobian of the vector of per-example costs."""
    return jax.jacrev(ref_costs)(params, xs, ys, net, key)


# --- random problems --------------------------------------------------------------

OUTPUTS = [
    ("softmax", "log_likelihood"),
    ("sigmoid", "quadratic"),
    ("sigmoid", "cross_entropy"),
]


def random_conv_net(seed):
    """A random stack: 1-2 Conv2D (kernel 1-4, stride 1-2, padding valid/same/int,
    channels 1-3), each maybe followed by a Max/AvgPool2D of size 2 or 3, Flatten, 1-2
    Dense; resampled until the shapes fit."""
    rng = np.random.default_rng(seed)
    hidden = ["sigmoid", "tanh", "relu"][seed % 3]
    out, cost = OUTPUTS[(seed // 3) % 3]
    for _ in range(10_000):
        c, h, w = (int(n) for n in (rng.integers(1, 4), rng.integers(4, 10), rng.integers(4, 10)))
        layers = []
        for _ in range(int(rng.integers(1, 3))):
            kernel = (
                int(rng.integers(1, 5))
                if rng.random() < 0.5
                else tuple(int(k) for k in rng.integers(1, 5, 2))
            )
            padding = ["valid", "same", int(rng.integers(0, 3))][int(rng.integers(0, 3))]
            layers.append(Conv2D(int(rng.integers(1, 4)), kernel, int(rng.integers(1, 3)), padding))
            if rng.random() < 0.7:
                pool = [MaxPool2D, AvgPool2D][int(rng.integers(0, 2))]
                layers.append(pool(int(rng.integers(2, 4))))
        layers.append(Flatten())
        if rng.random() < 0.5:
            layers.append(Dense(int(rng.integers(2, 5))))
        layers.append(Dense(int(rng.integers(2, 5))))
        net = fbp.Network(activation=hidden, output_activation=out, cost=cost, layers=tuple(layers))
        try:
            shapes(net, (c, h, w))
        except ValueError:
            continue
        return net, (c, h, w), rng
    raise AssertionError("no stack fits")


def problem(net, input_shape, seed, batch=3, labels=False, dtype=jnp.float64):
    rng = np.random.default_rng(seed + 1000)
    params = init_network(jax.random.key(seed), net, input_shape, dtype=dtype)
    xs = rng.normal(size=(batch, *input_shape)).astype(dtype)
    n_out = params[-1].w.shape[0]
    if net.output_activation.name == "softmax":
        labels_ = rng.integers(0, n_out, batch)
        ys = labels_ if labels else np.eye(n_out, dtype=dtype)[labels_]
    else:
        ys = rng.uniform(0.05, 0.95, (batch, n_out)).astype(dtype)
    return params, jnp.asarray(xs), jnp.asarray(ys)


CONV_POOL = fbp.Network(
    activation="tanh",
    output_activation="softmax",
    cost="log_likelihood",
    layers=(
        Conv2D(2, 3, padding="same"),
        MaxPool2D(2),
        Conv2D(3, 3, stride=2, padding=1),
        AvgPool2D(2),
        Flatten(),
        Dense(4),
        Dense(3),
    ),
)
CONV_POOL_SHAPE = (2, 8, 8)


# --- 1. gradients against jax.grad of the lax reference --------------------------


@pytest.mark.parametrize("seed", range(12))
def test_random_stack_matches_lax_reference(seed):
    net, input_shape, _ = random_conv_net(seed)
    params, xs, ys = problem(net, input_shape, seed)
    value, expected = ref_value_and_grad(params, xs, ys, net)
    got_value, got = fbp.value_and_grad(params, xs, ys, net=net)
    assert_tree_close(got, expected, RTOL, atol=1e-14)
    np.testing.assert_allclose(got_value, value, rtol=1e-12)
    if seed < 3:  # loss's own program, for a few stacks (compile time)
        np.testing.assert_allclose(fbp.loss(params, xs, ys, net=net), value, rtol=1e-12)


def test_random_stacks_cover_the_options():
    nets = [random_conv_net(seed)[0] for seed in range(12)]
    specs = [s for net in nets for s in net.layers]
    assert {type(s) for s in specs} >= {Conv2D, MaxPool2D, AvgPool2D, Flatten, Dense}
    convs = [s for s in specs if type(s) is Conv2D]
    paddings = {s.padding if isinstance(s.padding, str) else "int" for s in convs}
    assert paddings == {"valid", "same", "int"}
    assert {s.stride for s in convs} >= {(1, 1), (2, 2)}
    assert any(sum(type(s) is Conv2D for s in net.layers) == 2 for net in nets)


# --- 2. dropout ---------------------------------------------------------------------

DROP_NET = fbp.Network(
    activation="relu",
    output_activation="softmax",
    cost="log_likelihood",
    layers=(Conv2D(2, 3), Dropout(0.4), MaxPool2D(2), Flatten(), Dropout(0.25), Dense(4), Dense(3)),
)
NO_DROP_NET = fbp.Network(
    activation="relu",
    output_activation="softmax",
    cost="log_likelihood",
    layers=(Conv2D(2, 3), MaxPool2D(2), Flatten(), Dense(4), Dense(3)),
)


def test_dropout_with_key_matches_autodiff_of_loss_with_same_key():
    params, xs, ys = problem(DROP_NET, (1, 6, 6), 1, batch=4)
    key = jax.random.key(7)
    got = fbp.grad(params, xs, ys, net=DROP_NET, key=key)
    loss, expected = jax.value_and_grad(lambda p: fbp.loss(p, xs, ys, net=DROP_NET, key=key))(
        params
    )
    assert_tree_close(got, expected, RTOL)
    # and the masks are those documented: the reference draws them the same way
    value, reference = ref_value_and_grad(params, xs, ys, DROP_NET, key)
    assert_tree_close(got, reference, RTOL)
    np.testing.assert_allclose(loss, value, rtol=1e-12)


def test_dropout_off_only_on_purpose_and_keys_differ():
    params, xs, ys = problem(DROP_NET, (1, 6, 6), 2, batch=4)
    with pytest.raises(KeyRequiredError, match=r"grad needs a key: net.layers\[\d\] is Dropout"):
        fbp.grad(params, xs, ys, net=DROP_NET)
    without = fbp.grad(params, xs, ys, net=DROP_NET.deterministic())
    assert_tree_close(without, fbp.grad(params, xs, ys, net=NO_DROP_NET), 1e-13)
    # Evaluation runs without dropout: the forward pass and the cost take no key.
    assert_tree_close(
        fbp.loss(params, xs, ys, net=DROP_NET), fbp.loss(params, xs, ys, net=NO_DROP_NET), 1e-13
    )
    g1 = fbp.grad(params, xs, ys, net=DROP_NET, key=jax.random.key(1))
    g2 = fbp.grad(params, xs, ys, net=DROP_NET, key=jax.random.key(2))
    assert not np.allclose(g1[0].w, g2[0].w)
    assert not np.allclose(g1[0].w, without[0].w)


def test_dropout_mask_statistics():
    mask = Dropout(0.25).mask(jax.random.key(0), (20_000,), jnp.float64)
    values = set(np.unique(np.asarray(mask)).tolist())
    assert values == {0.0, 1 / 0.75}
    assert abs(float(jnp.mean(mask == 0)) - 0.25) < 0.02


# --- 3. one convolutional layer against explicit loops -------------------------------


def _np_conv_layer(w, b, a, stride, pad):
    n, c, h, wd = a.shape
    o, _, kh, kw = w.shape
    ap = np.pad(a, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    oh = (h + 2 * pad - kh) // stride + 1
    ow = (wd + 2 * pad - kw) // stride + 1
    z = np.zeros((n, o, oh, ow))
    for i in range(n):
        for f in range(o):
            for y in range(oh):
                for x in range(ow):
                    total = b[f]
                    for ch in range(c):
                        for p in range(kh):
                            for q in range(kw):
                                total += w[f, ch, p, q] * ap[i, ch, stride * y + p, stride * x + q]
                    z[i, f, y, x] = total
    return z, ap


def _np_conv_backward(w, delta, ap, stride, pad, a_shape):
    n, o, oh, ow = delta.shape
    _, c, kh, kw = w.shape
    da = np.zeros_like(ap)
    dw = np.zeros((n, *w.shape))
    for i in range(n):
        for f in range(o):
            for y in range(oh):
                for x in range(ow):
                    for ch in range(c):
                        for p in range(kh):
                            for q in range(kw):
                                da[i, ch, stride * y + p, stride * x + q] += (
                                    w[f, ch, p, q] * delta[i, f, y, x]
                                )
                                dw[i, f, ch, p, q] += (
                                    delta[i, f, y, x] * ap[i, ch, stride * y + p, stride * x + q]
                                )
    h, wd = a_shape[2:]
    da = da[:, :, pad : pad + h, pad : pad + wd]
    db = delta.sum(axis=(2, 3))
    return da, dw, db


def test_conv_layer_equations_against_loops():
    rng = np.random.default_rng(3)
    spec = Conv2D(2, (3, 2), stride=2, padding=1)
    a = rng.normal(size=(2, 2, 5, 6))
    w = rng.normal(size=(2, 2, 3, 2))
    b = rng.normal(size=(2,))
    z, ap = _np_conv_layer(w, b, a, 2, 1)
    assert z.shape == (2, 2, 3, 4)
    assert spec.out_shape((2, 5, 6), "layer 1") == (2, 3, 4)
    delta = rng.normal(size=z.shape)
    da, dw, db = _np_conv_backward(w, delta, ap, 2, 1, a.shape)
    layer = fbp.Layer(jnp.asarray(w), jnp.asarray(b))
    np.testing.assert_allclose(spec.forward(layer, jnp.asarray(a)), z, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(
        spec.transport(layer.w, jnp.asarray(delta), jnp.asarray(a)), da, rtol=1e-12, atol=1e-12
    )
    summed = spec.gradient(jnp.asarray(delta), jnp.asarray(a))
    np.testing.assert_allclose(summed.w, dw.sum(0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(summed.b, db.sum(0), rtol=1e-12, atol=1e-12)
    each = spec.per_example_gradient(jnp.asarray(delta), jnp.asarray(a))
    assert each.w.shape == (2, 2, 2, 3, 2)
    np.testing.assert_allclose(each.w, dw, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(each.b, db, rtol=1e-12, atol=1e-12)


def test_pooling_and_flatten_steps():
    rng = np.random.default_rng(4)
    a = jnp.asarray(rng.normal(size=(2, 3, 6, 6)))
    g = jnp.asarray(rng.normal(size=(2, 3, 2, 2)))
    for spec in (MaxPool2D(3), AvgPool2D(3)):
        out, vjp = jax.vjp(spec.apply, a)
        np.testing.assert_allclose(spec.route(g, a), vjp(g)[0], rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(
        MaxPool2D(3).apply(a),
        jax.lax.reduce_window(a, -jnp.inf, jax.lax.max, (1, 1, 3, 3), (1, 1, 3, 3), "VALID"),
    )
    flat = Flatten().apply(a)
    np.testing.assert_array_equal(flat, np.asarray(a).reshape(2, -1))
    np.testing.assert_array_equal(Flatten().route(flat, a), a)


# --- 4. per-example gradients and DP -----------------------------------------------


@functools.lru_cache
def _conv_problem(labels=False):
    return problem(CONV_POOL, CONV_POOL_SHAPE, 5, batch=5, labels=labels)


def _ref_norms(per_ex, batch):
    layers = [
        [np.linalg.norm(np.asarray(leaf).reshape(batch, -1), axis=1) for leaf in layer]
        for layer in per_ex
    ]
    total = np.sqrt(sum(n**2 for layer in layers for n in layer))
    return layers, total


def test_per_example_grads_and_norms():
    params, xs, ys = _conv_problem()
    expected = ref_per_example_grads(params, xs, ys, CONV_POOL)
    got = per_example.per_example_grads(params, xs, ys, net=CONV_POOL)
    assert got[0].w.shape == (5, 2, 2, 3, 3)
    assert_tree_close(got, expected, RTOL)
    layers, total = _ref_norms(expected, 5)
    norms = per_example.per_example_grad_norms(params, xs, ys, net=CONV_POOL)
    np.testing.assert_allclose(norms.total, total, rtol=1e-10)
    for layer, (w_norm, b_norm) in zip(norms.layers, layers):
        np.testing.assert_allclose(layer.w, w_norm, rtol=1e-10)
        np.testing.assert_allclose(layer.b, b_norm, rtol=1e-10)


def test_statistics_against_materialised_per_example_gradients():
    """sum_grad_squared, grad_variance, batch_dot (whole and per layer) and the noise
    scale of a conv net, from the per-example gradients of the lax reference."""
    params, xs, ys = _conv_problem()
    expected = ref_per_example_grads(params, xs, ys, CONV_POOL)
    squares = jax.tree.map(lambda g: jnp.sum(g**2, axis=0), expected)
    variance = jax.tree.map(lambda g: jnp.var(g, axis=0), expected)
    assert_tree_close(statistics.sum_grad_squared(params, xs, ys, net=CONV_POOL), squares, RTOL)
    assert_tree_close(statistics.grad_variance(params, xs, ys, net=CONV_POOL), variance, 1e-9)
    per_layer = [
        sum(leaf.reshape(5, -1) @ leaf.reshape(5, -1).T for leaf in layer) for layer in expected
    ]
    got = statistics.batch_dot(params, xs, ys, net=CONV_POOL, per_layer=True)
    np.testing.assert_allclose(got, np.stack(per_layer), rtol=1e-10, atol=1e-14)
    flat = jnp.concatenate([leaf.reshape(5, -1) for leaf in jax.tree.leaves(expected)], axis=1)
    whole = statistics.batch_dot(params, xs, ys, net=CONV_POOL)
    np.testing.assert_allclose(whole, flat @ flat.T, rtol=1e-10, atol=1e-14)
    mean = flat.mean(axis=0)
    trace = float(jnp.sum((flat - mean[None, :]) ** 2) / 4)
    noise = statistics.gradient_noise_scale(params, xs, ys, net=CONV_POOL)
    np.testing.assert_allclose(noise.trace, trace, rtol=1e-10)
    np.testing.assert_allclose(noise.grad_norm_sq, float(mean @ mean) - trace / 5, rtol=1e-9)


def test_clipped_and_private_grad():
    params, xs, ys = _conv_problem()
    expected = ref_per_example_grads(params, xs, ys, CONV_POOL)
    _, total = _ref_norms(expected, 5)
    clip = float(np.median(total))
    assert np.sum(total > clip) >= 1 and np.sum(total < clip) >= 1  # some clipped, some not
    factor = np.minimum(1.0, clip / total)
    reference = jax.tree.map(lambda g: np.tensordot(factor, np.asarray(g), 1) / 5, expected)
    clipped = per_example.clipped_grad(params, xs, ys, clip, net=CONV_POOL)
    assert_tree_close(clipped, reference, RTOL)
    key = jax.random.key(11)
    assert_tree_close(
        per_example.private_grad(key, params, xs, ys, clip, 0.0, net=CONV_POOL), clipped, 1e-13
    )
    noisy = per_example.private_grad(key, params, xs, ys, clip, 1.3, net=CONV_POOL)
    noise = per_example.gaussian_like(key, clipped)
    assert_tree_close(
        noisy, jax.tree.map(lambda g, z: g + 1.3 * clip / 5 * z, clipped, noise), 1e-12
    )


def test_per_example_and_private_grad_with_dropout():
    params, xs, ys = problem(DROP_NET, (1, 6, 6), 6, batch=4)
    key = jax.random.key(3)
    expected = ref_per_example_grads(params, xs, ys, DROP_NET, key)
    got = per_example.per_example_grads(params, xs, ys, net=DROP_NET, key=key)
    assert_tree_close(got, expected, RTOL, atol=1e-14)
    _, total = _ref_norms(expected, 4)
    norms = per_example.per_example_grad_norms(params, xs, ys, net=DROP_NET, key=key)
    np.testing.assert_allclose(norms.total, total, rtol=1e-10)
    clip = float(np.median(total))
    noise_key, drop_key = jax.random.split(key)
    clipped = per_example.clipped_grad(params, xs, ys, clip, net=DROP_NET, key=drop_key)
    noisy = per_example.private_grad(key, params, xs, ys, clip, 0.7, net=DROP_NET)
    noise = per_example.gaussian_like(noise_key, clipped)
    assert_tree_close(
        noisy, jax.tree.map(lambda g, z: g + 0.7 * clip / 4 * z, clipped, noise), 1e-12
    )


# --- 5. learning rules --------------------------------------------------------------

TWO_CONV = fbp.Network(
    activation="sigmoid",
    output_activation="sigmoid",
    cost="cross_entropy",
    layers=(
        Conv2D(2, 3, padding=1),
        AvgPool2D(2),
        Conv2D(3, 2, stride=2, padding="same"),
        MaxPool2D(2),
        Flatten(),
        Dense(4),
        Dense(2),
    ),
)


def test_fa_with_forward_weights_is_grad():
    params, xs, ys = _conv_problem()
    got = feedback.feedback_grad(
        params, [l.w for l in params[1:]], xs, ys, rule="fa", net=CONV_POOL
    )
    assert_tree_close(got, fbp.grad(params, xs, ys, net=CONV_POOL), 1e-12)


def test_fa_with_random_feedback_matches_reference():
    params, xs, ys = problem(TWO_CONV, (1, 8, 8), 8, batch=3)
    B = feedback.init_feedback(jax.random.key(4), params, "fa", net=TWO_CONV)
    assert [b.shape for b in B] == [l.w.shape for l in params[1:]]
    got = feedback.feedback_grad(params, B, xs, ys, rule="fa", net=TWO_CONV)
    expected = jax.jit(jax.grad(ref_loss), static_argnums=3)(params, xs, ys, TWO_CONV, None, B)
    assert_tree_close(got, expected, RTOL)
    assert not np.allclose(got[0].w, fbp.grad(params, xs, ys, net=TWO_CONV)[0].w)


@pytest.mark.parametrize("rule", ["kp", "sign", "usf", "frsf", "brsf", "bp"])
def test_other_rules_run_on_conv_nets(rule):
    params, xs, ys = _conv_problem()
    B = feedback.init_feedback(jax.random.key(4), params, rule, net=CONV_POOL)
    got = feedback.feedback_grad(params, B, xs, ys, rule=rule, net=CONV_POOL, key=jax.random.key(5))
    assert [tuple(l.w.shape) for l in got] == [tuple(l.w.shape) for l in params]
    assert [tuple(l.b.shape) for l in got] == [tuple(l.b.shape) for l in params]
    assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(got))
    if rule == "bp":
        assert_tree_close(got, fbp.grad(params, xs, ys, net=CONV_POOL), 1e-12)


def test_dfa_on_a_conv_net_sends_the_output_error_to_each_output_map():
    """delta^l = (B^l)^T delta^L ⊙ sigma'(z^l) over the C H W neurons of each hidden layer's
    own output (before its pooling); the weights' gradient is the VJP of z^l in w^l
    with that delta (autodiff of the layer's forward map alone)."""
    params, xs, ys = _conv_problem()
    net = CONV_POOL
    b = feedback.init_feedback(
        jax.random.key(2), params, "dfa", net=net, input_shape=CONV_POOL_SHAPE
    )
    cache = core.forward_pass(net, params, xs)
    zs = cache.zs
    n_out = zs[-1].shape[1]
    assert [m.shape for m in b] == [(n_out, z.size // 5) for z in zs[:-1]]
    targets = jax.nn.one_hot(ys, n_out) if ys.ndim == 1 else ys
    error = jax.nn.softmax(zs[-1]) - targets  # delta^L of softmax and log-likelihood
    kinds = [spec for spec in net.layers if spec.has_weights]
    expected = []
    for l, (kind, layer) in enumerate(zip(kinds, params), start=1):
        if l < len(params):
            g = (error @ b[l - 1]).reshape(zs[l - 1].shape)
            delta = g * (1 - jnp.tanh(zs[l - 1]) ** 2)
        else:
            delta = error
        _, vjp = jax.vjp(lambda p, kind=kind, l=l: kind.forward(p, cache.activations[l - 1]), layer)
        expected.append(jax.tree.map(lambda leaf: leaf / xs.shape[0], vjp(delta)[0]))
    got = feedback.feedback_grad(params, b, xs, ys, rule="dfa", net=net)
    assert_tree_close(got, expected, RTOL)
    with pytest.raises(ValueError, match=r"needs input_shape="):
        feedback.init_feedback(jax.random.key(2), params, "dfa", net=net)
    short = [b[0][:, :-1], *b[1:]]
    with pytest.raises(ValueError, match=r"hidden layer 1 to have shape \(3, 128\)"):
        feedback.feedback_grad(params, short, xs, ys, rule="dfa", net=net)


# --- 6. diagonal GGN ---------------------------------------------------------------


def test_diag_ggn_against_jacobians():
    params, xs, ys = _conv_problem()
    logits_net = fbp.Network(
        activation="tanh", output_activation="identity", cost="quadratic", layers=CONV_POOL.layers
    )
    flat, unravel = ravel_pytree(params)

    def logits(theta, x):
        return fbp.forward(unravel(theta), x[None], net=logits_net)[0][0]

    def one(x, y):
        z = logits(flat, x)
        J = jax.jacrev(logits)(flat, x)
        H = jax.hessian(lambda z: -jnp.sum(y * jax.nn.log_softmax(z)))(z)
        return jnp.einsum("kp,kl,lp->p", J, H, J)

    each = jax.jit(jax.vmap(one))(xs, ys)
    # the reference logits also agree with the lax reference
    np.testing.assert_allclose(
        fbp.forward(params, xs, net=logits_net)[0], ref_logits(CONV_POOL, params, xs), rtol=1e-12
    )
    expected = unravel(jnp.mean(each, axis=0))
    assert_tree_close(curvature.diag_ggn(params, xs, ys, net=CONV_POOL), expected, RTOL)
    batch = curvature.batch_diag_ggn(params, xs, ys, net=CONV_POOL)
    assert_tree_close(batch, jax.vmap(unravel)(each), RTOL)


def test_diag_ggn_mc_unbiased():
    params, xs, ys = _conv_problem()
    exact = curvature.diag_ggn(params, xs, ys, net=CONV_POOL)
    mc = curvature.diag_ggn_mc(jax.random.key(0), params, xs, ys, samples=4000, net=CONV_POOL)
    assert [l.w.shape for l in mc] == [l.w.shape for l in exact]
    for got, want in zip(jax.tree.leaves(mc), jax.tree.leaves(exact)):
        scale = float(np.max(np.abs(want)))
        np.testing.assert_allclose(got, want, atol=0.15 * scale)
    batch = curvature.batch_diag_ggn_mc(jax.random.key(0), params, xs, ys, net=CONV_POOL)
    assert [l.w.shape for l in batch] == [(5, *l.w.shape) for l in params]


# --- 7. dense-only through layers= is unchanged -------------------------------------


def test_dense_only_layers_match_default_network():
    params, xs, ys = random_problem(21, batch=4, sizes=[5, 4, 3])
    plain = fbp.Network(activation="tanh", output_activation="softmax", cost="log_likelihood")
    layered = fbp.Network(
        activation="tanh",
        output_activation="softmax",
        cost="log_likelihood",
        layers=(Dense(4), Dense(3)),
    )
    ys = jax.nn.one_hot(jnp.array([0, 2, 1, 2]), 3, dtype=jnp.float64)
    tol = 1e-12
    assert_tree_close(
        fbp.grad(params, xs, ys, net=layered), fbp.grad(params, xs, ys, net=plain), tol
    )
    a = per_example.per_example_grad_norms(params, xs, ys, net=layered)
    b = per_example.per_example_grad_norms(params, xs, ys, net=plain)
    assert_tree_close(a, b, tol)
    assert_tree_close(
        curvature.diag_ggn(params, xs, ys, net=layered),
        curvature.diag_ggn(params, xs, ys, net=plain),
        tol,
    )
    B = [params[1].w * 0.5]
    assert_tree_close(
        feedback.feedback_grad(params, B, xs, ys, rule="fa", net=layered),
        feedback.feedback_grad(params, B, xs, ys, rule="fa", net=plain),
        tol,
    )
    assert_tree_close(
        statistics.batch_dot(params, xs, ys, net=layered),
        statistics.batch_dot(params, xs, ys, net=plain),
        tol,
    )
    assert init_network(jax.random.key(0), layered, (5,))[0].w.shape == (4, 5)


# --- 8. training ---------------------------------------------------------------------

TRAIN_NET = fbp.Network(
    activation="relu",
    output_activation="softmax",
    cost="log_likelihood",
    layers=(Conv2D(3, 3, padding="same"), MaxPool2D(2), Flatten(), Dense(2)),
)


@functools.lru_cache
def _task():
    """Two classes: a bright left half or a bright right half."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 32)
    xs = rng.normal(scale=0.3, size=(32, 1, 4, 4))
    xs[labels == 0, :, :, :2] += 1.0
    xs[labels == 1, :, :, 2:] += 1.0
    return jnp.asarray(xs, jnp.float32), jnp.asarray(labels)


@pytest.mark.parametrize("kind", ["mean", "clipped", "private", "fa"])
def test_training_reduces_loss(kind):
    xs, ys = _task()
    params = init_network(jax.random.key(1), TRAIN_NET, (1, 4, 4))
    gradient = {
        "mean": core.MeanGradient(),
        "clipped": per_example.ClippedGradient(clip_norm=1.0),
        "private": per_example.PrivateGradient(clip_norm=1.0, noise_multiplier=0.1),
        "fa": feedback.RuleGradient("fa"),
    }[kind]
    state = params
    if kind == "fa":
        state = feedback.FeedbackParams(
            params, feedback.init_feedback(jax.random.key(2), params, "fa", net=TRAIN_NET)
        )
    optimizer = optax.sgd(0.3)
    opt_state = optimizer.init(state)
    before = float(fbp.loss(params, xs, ys, net=TRAIN_NET))
    key = jax.random.key(3)
    if kind in ("mean", "private"):  # train_step for two, epoch for the others (compile time)
        for i in range(4):
            state, opt_state = training.train_step(
                jax.random.fold_in(key, i),
                optimizer,
                state,
                opt_state,
                xs,
                ys,
                gradient=gradient,
                net=TRAIN_NET,
            )
    else:
        state, opt_state = training.epoch(
            key, optimizer, state, opt_state, xs, ys, batch_size=8, gradient=gradient, net=TRAIN_NET
        )
    trained = state.params if kind == "fa" else state
    after = float(fbp.loss(trained, xs, ys, net=TRAIN_NET))
    assert after < before


def test_float32_against_float64_reference():
    net, input_shape, _ = random_conv_net(4)
    params64, xs, ys = problem(net, input_shape, 4)
    params32 = jax.tree.map(lambda x: x.astype(jnp.float32), params64)
    got = fbp.grad(params32, xs.astype(jnp.float32), ys.astype(jnp.float32), net=net)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(got))
    _, expected = ref_value_and_grad(params64, xs, ys, net)
    assert_tree_close(jax.tree.map(lambda x: x.astype(np.float64), got), expected, 1e-4, atol=1e-6)


# --- 9. mlp (custom_vjp) ---------------------------------------------------------------


def test_mlp_grad_params_and_input():
    params, xs, ys = _conv_problem()

    def via_mlp(p, x):
        return jnp.mean(-jnp.sum(ys * jnp.log(fbp.mlp(p, x, net=CONV_POOL)), axis=-1))

    got = jax.grad(via_mlp, argnums=(0, 1))(params, xs)
    expected = jax.grad(ref_loss, argnums=(0, 1))(params, xs, ys, CONV_POOL)
    assert_tree_close(got, expected, RTOL)
    # dropout is the identity in mlp
    dparams, dxs, _ = problem(DROP_NET, (1, 6, 6), 9, batch=2)
    np.testing.assert_allclose(
        fbp.mlp(dparams, dxs, net=DROP_NET), fbp.mlp(dparams, dxs, net=NO_DROP_NET), rtol=1e-14
    )


# --- 10. integer labels -------------------------------------------------------------


def test_integer_labels_equal_one_hot():
    params, xs, labels = _conv_problem(labels=True)
    one_hot = jax.nn.one_hot(labels, 3, dtype=jnp.float64)
    assert_tree_close(
        fbp.grad(params, xs, labels, net=CONV_POOL),
        fbp.grad(params, xs, one_hot, net=CONV_POOL),
        1e-14,
    )
    _, expected = ref_value_and_grad(params, xs, labels, CONV_POOL)
    assert_tree_close(fbp.grad(params, xs, labels, net=CONV_POOL), expected, RTOL)
    assert_tree_close(
        per_example.per_example_grads(params, xs, labels, net=CONV_POOL),
        per_example.per_example_grads(params, xs, one_hot, net=CONV_POOL),
        1e-14,
    )


def test_core_check_and_backprop_batch():
    params, xs, ys = _conv_problem()
    sizes = core.check(CONV_POOL, params, xs, ys, layered=True)
    assert sizes == [2 * 8 * 8, 2 * 8 * 8, 3 * 2 * 2, 4, 3]
    record = core.backprop_batch(CONV_POOL, params, xs, ys)
    assert [d.shape for d in record.deltas] == [(5, 2, 8, 8), (5, 3, 2, 2), (5, 4), (5, 3)]
    one = fbp.backprop(params, xs[0], ys[0], net=CONV_POOL)
    expected = jax.tree.map(lambda g: g[0], ref_per_example_grads(params, xs, ys, CONV_POOL))
    assert_tree_close(one, expected, RTOL)


# --- 11. data parallelism ------------------------------------------------------------

SHARDED_SCRIPT = """
import jax, jax.numpy as jnp
jax.config.update("jax_enable_x64", True)
import functional_bp as fbp
from functional_bp.layers import Conv2D, Dense, Flatten, MaxPool2D, init_network
from functional_bp.parallel import ShardedGradient, data_mesh
net = fbp.Network("tanh", "softmax", "log_likelihood",
                  layers=(Conv2D(3, 3), MaxPool2D(2), Flatten(), Dense(4)))
params = init_network(jax.random.key(0), net, (2, 8, 8), dtype=jnp.float64)
xs = jax.random.normal(jax.random.key(1), (8, 2, 8, 8), jnp.float64)
ys = jnp.arange(8) % 4
expected = fbp.grad(params, xs, ys, net=net)
for n in (1, 4):
    got = ShardedGradient(data_mesh(n))(None, net, params, xs, ys)
    error = max(float(jnp.max(jnp.abs(a - b))) for a, b in
                zip(jax.tree.leaves(got), jax.tree.leaves(expected)))
    print(f"devices {n} error {error:.3g}")
"""


@pytest.mark.slow
def test_sharded_gradient_of_a_conv_net_on_4_cpu_devices_equals_grad():
    env = dict(
        os.environ,
        XLA_FLAGS="--xla_force_host_platform_device_count=4",
        JAX_PLATFORMS="cpu",
    )
    out = subprocess.run(
        [sys.executable, "-c", SHARDED_SCRIPT], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    errors = dict(line.split(" error ") for line in out.stdout.splitlines())
    assert set(errors) == {"devices 1", "devices 4"}
    assert all(float(error) < 1e-13 for error in errors.values()), out.stdout


def test_sharded_gradient_with_dropout_draws_from_the_step_key():
    params, xs, ys = _conv_problem()
    net = fbp.Network(
        CONV_POOL.activation,
        CONV_POOL.output_activation,
        CONV_POOL.cost,
        layers=(*CONV_POOL.layers[:-1], Dropout(0.5), CONV_POOL.layers[-1]),
    )
    gradient = parallel.ShardedGradient(parallel.data_mesh(1))
    key = jax.random.key(4)
    # One shard: its masks are those of the key folded with shard index 0.
    expected = fbp.grad(params, xs, ys, net=net, key=jax.random.fold_in(key, 0))
    assert_tree_close(gradient(key, net, params, xs, ys), expected, RTOL)
    with pytest.raises(KeyRequiredError, match=r"net.layers\[\d\] is Dropout\(rate=0.5\)"):
        gradient(None, net, params, xs, ys)
    without = gradient(None, net.deterministic(), params, xs, ys)
    assert_tree_close(without, fbp.grad(params, xs, ys, net=net.deterministic()), RTOL)


# --- 12. saving and loading -----------------------------------------------------------


@pytest.mark.parametrize("dtype", [jnp.float64, jnp.bfloat16])
def test_params_of_layer_types_save_and_load_exactly(tmp_path, dtype):
    params, _, _ = _conv_problem()
    params = jax.tree.map(lambda leaf: leaf.astype(dtype), params)
    path = fbp.io.save_params(tmp_path / "p.npz", params, layers="conv2x3,pool2")
    loaded, meta = fbp.io.load_params(path)
    assert meta["layers"] == "conv2x3,pool2"
    assert meta["shapes"] == [[list(l.w.shape), list(l.b.shape)] for l in params]
    for got, want in zip(jax.tree.leaves(loaded), jax.tree.leaves(params)):
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(np.asarray(got, np.float64), np.asarray(want, np.float64))


def test_a_tampered_file_of_layer_types_is_refused(tmp_path):
    params, _, _ = _conv_problem()
    path = fbp.io.save_params(tmp_path / "p.npz", params)
    with np.load(path) as data:
        entries = dict(data)
    bad = tmp_path / "bad.npz"
    np.savez(bad, **{**entries, "w1": entries["w1"][:, :, :2]})
    with pytest.raises(ValueError, match=r"entry 'w1' has shape \(2, 2, 2, 3\).*\(2, 2, 3, 3\)"):
        fbp.io.load_params(bad)
    np.savez(bad, **{k: v for k, v in entries.items() if k != "b2"})
    with pytest.raises(ValueError, match=r"missing \['b2'\]"):
        fbp.io.load_params(bad)
    header = str(entries["header"]).replace('"shapes": [[[2, 2, 3, 3]', '"shapes": [[[2, 2, 3]')
    np.savez(bad, **{**entries, "header": np.array(header)})
    with pytest.raises(ValueError, match=r"expected shapes to be a list of \[w shape, b shape\]"):
        fbp.io.load_params(bad)
    with pytest.raises(ValueError, match=r"feedback matrices with the params of dense layers"):
        fbp.io.save_params(tmp_path / "f.npz", params, feedback=[params[1].w])
    with pytest.raises(ValueError, match=r"\[.shapes.\] are reserved"):
        fbp.io.save_params(tmp_path / "f.npz", params, shapes=[])

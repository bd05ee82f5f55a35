"""functional_bp.core: the documented way to build your own quantity on the core, and
`core.check`, which every public function runs before any maths."""

import re
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import assert_tree_close, random_problem

import functional_bp as fbp
from functional_bp import core, diagnostics, parallel, per_example, training

# The module docstring's example, run exactly as written.


def _docstring_example():
    """The indented block after the first "::" of core's docstring."""
    doc = core.__doc__
    start = doc.index("::\n") + len("::\n")
    lines = []
    for line in doc[start:].splitlines():
        if line.strip() and not line.startswith("    "):
            break
        lines.append(line)
    return textwrap.dedent("\n".join(lines)).strip() + "\n"


def test_the_documented_example_is_short():
    code = _docstring_example()
    assert "def layer_gram" in code and "core.backprop_batch" in code
    assert len(code.splitlines()) <= 15


@pytest.mark.parametrize(
    "combo", [("sigmoid", None, "quadratic"), ("tanh", "softmax", "log_likelihood")]
)
def test_the_documented_per_layer_gram_matrix_equals_per_example_gradients(combo):
    namespace = {}
    exec(compile(_docstring_example(), "core-docstring", "exec"), namespace)
    layer_gram = namespace["layer_gram"]

    params, xs, ys = random_problem(30, sizes=[5, 4, 6, 3], batch=7)
    net = fbp.Network(*combo)
    grams = layer_gram(params, xs, ys, net=net)

    def one_cost(p, x, y):
        return fbp.loss(p, x[None], y[None], net=net)

    per_example_grads = jax.vmap(jax.grad(one_cost), in_axes=(None, 0, 0))(params, xs, ys)
    assert len(grams) == len(params)
    for gram, g in zip(grams, per_example_grads):
        flat = jnp.concatenate([g.w.reshape(7, -1), g.b], axis=1)  # <g_i^l, g_j^l>, w and b
        assert gram.shape == (7, 7) and gram.dtype == jnp.float64
        np.testing.assert_allclose(gram, flat @ flat.T, rtol=1e-10, atol=1e-14)
    if net == fbp.Network():  # called as the example is written, with the default network
        assert_tree_close(layer_gram(params, xs, ys), grams, 0.0)


# The core's pieces compose into the public functions.


def test_the_record_and_its_reductions():
    params, xs, ys = random_problem(31, sizes=[4, 5, 3], batch=6)
    net = fbp.Network("tanh", "softmax", "log_likelihood")
    record = core.backprop_batch(net, params, xs, ys)
    assert [d.shape for d in record.deltas] == [(6, 5), (6, 3)]
    assert [a.shape for a in record.cache.activations] == [(6, 4), (6, 5), (6, 3)]
    assert [z.shape for z in record.cache.zs] == [(6, 5), (6, 3)]
    per_example_grads = per_example.per_example_grads(params, xs, ys, net=net)
    summed = core.summed_gradients(record.deltas, record.cache)
    assert_tree_close(summed, jax.tree.map(lambda g: g.sum(axis=0), per_example_grads), 1e-12)
    value, mean = core.mean_value_and_grad(net, params, xs, ys)
    assert_tree_close(mean, fbp.grad(params, xs, ys, net=net), 1e-12)
    np.testing.assert_allclose(value, fbp.loss(params, xs, ys, net=net), rtol=1e-12)
    np.testing.assert_allclose(core.mean_cost(net, params, xs, ys), value, rtol=1e-12)
    np.testing.assert_allclose(
        core.example_costs(net, record.cache, record.ys).mean(), value, rtol=1e-12
    )
    # The forward weights as explicit matrices are eq 96 itself.
    again = core.backward_pass(
        net, params, record.cache, record.deltas[-1], matrices=[l.w for l in params[1:]]
    )
    assert_tree_close(again, record.deltas, 0.0)
    # scale multiplies every delta^l (eq 96 is linear in delta).
    scaled = core.backprop_batch(net, params, xs, ys, scale=0.5)
    assert_tree_close(scaled.deltas, jax.tree.map(lambda d: 0.5 * d, record.deltas), 1e-15)


def test_mean_gradient_is_the_default_training_gradient():
    params, xs, ys = random_problem(32, sizes=[4, 3, 2], batch=5)
    net = fbp.Network("relu", "sigmoid", "cross_entropy")
    gradient = core.MeanGradient()
    assert_tree_close(gradient(None, net, params, xs, ys), fbp.grad(params, xs, ys, net=net), 0)
    assert training.MeanGradient is core.MeanGradient
    assert core.MeanGradient() == core.MeanGradient()
    assert jax.tree.leaves(gradient) == []  # a pytree without leaves


# core.check: shapes, dtypes and the network, named, before any maths.


def _chain(*shapes, dtype=jnp.float32):
    return [fbp.Layer(jnp.ones(s, dtype), jnp.ones(s[0], dtype)) for s in shapes]


GOOD = _chain((4, 3), (2, 4))
X, Y = jnp.ones((5, 3)), jnp.ones((5, 2))


def test_check_returns_the_sizes():
    net = fbp.Network()
    assert core.check(net, GOOD, X, Y) == [3, 4, 2]
    assert core.check(net, GOOD, X) == [3, 4, 2]
    assert core.check(net, GOOD, X[0], Y[0], batched=False) == [3, 4, 2]
    assert core.check(net, GOOD, X[0], batched=None) == [3, 4, 2]
    assert core.check(net, GOOD, X, batched=None) == [3, 4, 2]


@pytest.mark.parametrize(
    "args,kwargs,error,match",
    [
        ((GOOD, X[0], Y[0]), {}, ValueError, r"x to have shape \(batch, 3\)"),
        ((GOOD, X, Y), dict(batched=False), ValueError, r"x to have shape \(3,\) for"),
        ((GOOD, X[None]), dict(batched=None), ValueError, r"\(3,\) or \(batch, 3\)"),
        ((GOOD, X[:0], Y[:0]), {}, ValueError, r"xs to hold at least one example"),
        ((GOOD, X, Y[:, :1]), {}, ValueError, r"y to have shape \(5, 2\)"),
        ((GOOD, [[1.0, 2.0, 3.0]]), {}, TypeError, r"x to be an array, got list"),
        ((GOOD, X, [[1.0, 2.0]] * 5), {}, TypeError, r"y to be an array, got list"),
        ((GOOD[0], X, Y), {}, TypeError, r"layer 1 \(params\[0\]\) to be a Layer\(w, b\)"),
        (({"w": 1}, X, Y), {}, TypeError, r"params to be a non-empty list"),
    ],
)
def test_check_errors(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        core.check(fbp.Network(), *args, **kwargs)


def test_check_refuses_what_is_not_a_network():
    with pytest.raises(TypeError, match=r"net to be a functional_bp.Network, got str 'tanh'"):
        core.check("tanh", GOOD, X, Y)


def test_an_empty_batch_without_targets_is_allowed():
    """Forward-only functions run on no examples; a mean over none is refused."""
    assert core.check(fbp.Network(), GOOD, X[:0]) == [3, 4, 2]
    assert fbp.mlp(GOOD, X[:0]).shape == (0, 2)


@pytest.mark.parametrize(
    "params,xs,ys,error,match",
    [
        (
            _chain((4, 3), (2, 5)),
            X,
            Y,
            ValueError,
            r"layer 2 \(params\[1\]\) w has shape \(2, 5\).*layer 1 has 4 neurons",
        ),
        (
            [fbp.Layer(jnp.ones((4, 3)), jnp.ones(3))],
            X,
            jnp.ones((5, 4)),
            ValueError,
            r"layer 1 \(params\[0\]\) b to have shape \(4,\).*got \(3,\)",
        ),
        ([fbp.Layer(jnp.ones(4), jnp.ones(4))], X, Y, ValueError, r"layer 1.*rank 2"),
        (
            GOOD,
            jnp.ones((5, 7)),
            Y,
            ValueError,
            r"x to have shape \(batch, 3\).*sizes \[3, 4, 2\].*\(5, 7\)",
        ),
        (GOOD, X, jnp.ones((5, 3)), ValueError, r"y to have shape \(5, 2\).*got \(5, 3\)"),
        (GOOD, X, jnp.ones((4, 2)), ValueError, r"y to have shape \(5, 2\)"),
        (GOOD, jnp.ones(3), jnp.ones(2), ValueError, r"x to have shape \(batch, 3\)"),
        (
            _chain((4, 3), (2, 4), dtype=jnp.int32),
            X,
            Y,
            TypeError,
            r"layer 1 \(params\[0\]\) w.*int32",
        ),
        (_chain((4, 3), (2, 4), dtype=jnp.complex64), X, Y, TypeError, r"layer 1.*complex64"),
        (GOOD, X.astype(jnp.int32), Y, TypeError, r"x to have a real floating dtype.*int32"),
        (GOOD, X, Y.astype(jnp.complex64), TypeError, r"y to have a real floating dtype"),
        ([], X, Y, TypeError, r"non-empty list of Layer"),
        (
            [GOOD[0], fbp.Layer(jnp.ones((2, 4), jnp.float64), jnp.ones(2, jnp.float64))],
            X,
            Y,
            TypeError,
            r"share one dtype: layer 2",
        ),
    ],
)
def test_bad_input_raises_before_computation(params, xs, ys, error, match, monkeypatch):
    def must_not_run(*args, **kwargs):
        raise AssertionError("computation started before validation")

    monkeypatch.setattr(core, "forward_pass", must_not_run)
    with pytest.raises(error, match=match):
        fbp.grad(params, xs, ys)


# The same checks through the public functions, as a careless user calls them.

PARAMS = fbp.init_mlp(jax.random.key(0), [4, 3, 2], dtype=jnp.float64)
XS = jnp.asarray(np.random.default_rng(0).random((6, 4)))
YS = jnp.asarray(np.eye(2)[[0, 1, 0, 1, 1, 0]])

SHAPE_CASES = [
    ("params dict", lambda: fbp.grad({"w": 1}, XS, YS), TypeError, r"params to be a non-empty"),
    (
        "x wrong width",
        lambda: fbp.grad(PARAMS, XS[:, :3], YS),
        ValueError,
        r"x to have shape \(batch, 4\)",
    ),
    ("y wrong width", lambda: fbp.grad(PARAMS, XS, YS[:, :1]), ValueError, r"y to have shape"),
    ("y fewer rows", lambda: fbp.grad(PARAMS, XS, YS[:5]), ValueError, r"y to have shape \(6, 2\)"),
    (
        "x int",
        lambda: fbp.grad(PARAMS, XS.astype(int), YS),
        TypeError,
        r"x to have a real floating",
    ),
    (
        "layers don't chain",
        lambda: fbp.grad([PARAMS[0], PARAMS[0]], XS, YS),
        ValueError,
        r"Layers don't chain: layer 2",
    ),
    (
        "b wrong shape",
        lambda: fbp.grad([fbp.Layer(PARAMS[0].w, PARAMS[0].b[:2]), PARAMS[1]], XS, YS),
        ValueError,
        r"layer 1 \(params\[0\]\) b to have shape \(3,\)",
    ),
    (
        "mixed dtypes",
        lambda: fbp.grad(
            [PARAMS[0], jax.tree.map(lambda a: a.astype(jnp.float32), PARAMS[1])], XS, YS
        ),
        TypeError,
        r"share one dtype: layer 2",
    ),
]


@pytest.mark.parametrize(
    "call,error,message", [c[1:] for c in SHAPE_CASES], ids=[c[0] for c in SHAPE_CASES]
)
def test_public_functions_check_shapes(call, error, message):
    with pytest.raises(error, match=message):
        call()


# Empty batches: a mean over no examples is undefined, never zeros or NaN.

KEY = jax.random.key(0)
NO_XS, NO_YS = XS[:0], YS[:0]
LABELS = np.array([0, 1, 0, 1, 1, 0])
ADAM = optax.adam(1e-3)
STATE = ADAM.init(PARAMS)
EMPTY_CASES = {
    "grad": lambda: fbp.grad(PARAMS, NO_XS, NO_YS),
    "loss": lambda: fbp.loss(PARAMS, NO_XS, NO_YS),
    "value_and_grad": lambda: fbp.value_and_grad(PARAMS, NO_XS, NO_YS),
    "per_example_grads": lambda: per_example.per_example_grads(PARAMS, NO_XS, NO_YS),
    "norms": lambda: per_example.per_example_grad_norms(PARAMS, NO_XS, NO_YS),
    "clipped_grad": lambda: per_example.clipped_grad(PARAMS, NO_XS, NO_YS, 1.0),
    "sgd_step": lambda: fbp.sgd_step(PARAMS, NO_XS, NO_YS, 1.0),
    "train_epoch": lambda: fbp.train_epoch(KEY, PARAMS, NO_XS, NO_YS, 1.0, batch_size=2),
    "train_step": lambda: training.train_step(None, ADAM, PARAMS, STATE, NO_XS, NO_YS),
    "total_cost": lambda: diagnostics.total_cost(PARAMS, NO_XS, NO_YS),
    "accuracy": lambda: diagnostics.accuracy(PARAMS, NO_XS, LABELS[:0]),
    "layer norms": lambda: diagnostics.layer_gradient_norms(PARAMS, NO_XS, NO_YS),
    "check_gradients": lambda: fbp.check_gradients(PARAMS, NO_XS, NO_YS),
    "data parallel": lambda: parallel.data_parallel_grad(
        parallel.data_mesh(1), PARAMS, NO_XS, NO_YS
    ),
}


@pytest.mark.parametrize("call", EMPTY_CASES.values(), ids=EMPTY_CASES.keys())
def test_an_empty_batch_is_refused(call):
    with pytest.raises(ValueError, match=r"xs to hold at least one example, got shape \(0, 4\)"):
        call()


def test_a_shape_error_says_what_it_compared():
    with pytest.raises(ValueError) as info:
        core.check(fbp.Network(), GOOD, X, Y[:, :1])
    assert re.search(r"\(x is \(5, 3\), the output layer has 2 neurons\)", str(info.value))

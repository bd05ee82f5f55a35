"""Training as gradient x update x loop (functional_bp.training): network.py's sgd_step
and train_epoch, train_step and epoch with any optax optimizer and gradient, scan_epoch,
network2.py's L2. Many runs at once: test_training_many.py. Against NumPy's
update_mini_batch: tests/equivalence/test_vs_numpy.py."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import assert_tree_close, random_problem

import functional_bp as fbp
from functional_bp import curvature, feedback, training
from functional_bp.training import sgd_step, train_epoch


def test_sgd_step_does_not_mutate():
    params, xs, ys = random_problem(1, sizes=[3, 2], batch=4)
    before = jax.tree.map(np.array, params)
    sgd_step(params, xs, ys, 1.0)
    sgd_step(params, xs, ys, 1.0, weight_decay=0.1)
    assert_tree_close(params, jax.tree.map(jnp.asarray, before), 0.0)


def test_weight_decay_is_network2s_rule_on_the_weights_only():
    """w <- (1 - eta wd) w - eta g, b <- b - eta g: sgd_step and training.sgd."""
    params, xs, ys = random_problem(8, sizes=[5, 4, 3], batch=6)
    net = fbp.Network("tanh", cost="squared_error")
    grads = fbp.grad(params, xs, ys, net=net)
    lmbda, n, eta = 5.0, 60, 0.4
    expected = [
        fbp.Layer((1 - eta * lmbda / n) * l.w - eta * g.w, l.b - eta * g.b)
        for l, g in zip(params, grads)
    ]
    got = sgd_step(params, xs, ys, eta, weight_decay=lmbda / n, net=net)
    assert_tree_close(got, expected, 1e-12)
    optimizer = training.sgd(eta, weight_decay=lmbda / n)
    stepped, _ = training.train_step(
        None, optimizer, params, optimizer.init(params), xs, ys, net=net
    )
    assert_tree_close(stepped, expected, 1e-12)
    # Without weight decay: network.py's rule, optax.sgd itself.
    plain = sgd_step(params, xs, ys, eta, net=net)
    assert_tree_close(plain, jax.tree.map(lambda p, g: p - eta * g, params, grads), 1e-12)
    assert_tree_close(sgd_step(params, xs, ys, eta, weight_decay=0.0, net=net), plain, 1e-15)


def test_weights_only_marks_the_weights_of_every_layer():
    params, _, _ = random_problem(9, sizes=[4, 3, 2], batch=1)
    assert training.weights_only(params) == [fbp.Layer(True, False), fbp.Layer(True, False)]
    state = feedback.FeedbackParams(params, [jnp.ones((2, 3))])
    mask = training.weights_only(state)
    assert mask == feedback.FeedbackParams([fbp.Layer(True, False)] * 2, [False])
    assert jax.tree.structure(mask) == jax.tree.structure(state)


def test_train_step_with_optax_sgd_equals_sgd_step():
    params, xs, ys = random_problem(2, sizes=[6, 5, 3], batch=8)
    net = fbp.Network("tanh")
    optimizer = optax.sgd(0.7)
    opt_state = optimizer.init(params)
    reference = params
    for _ in range(3):
        params, opt_state = training.train_step(None, optimizer, params, opt_state, xs, ys, net=net)
        reference = sgd_step(reference, xs, ys, 0.7, net=net)
    assert_tree_close(params, reference, 1e-12)


def test_train_epoch_is_the_loop_it_documents_partial_batch_included():
    """23 examples, batch 5: four full mini-batches in the scan, then one of 3."""
    params, xs, ys = random_problem(3, sizes=[4, 6, 2], batch=23)
    key = jax.random.key(7)
    net = fbp.Network(cost="cross_entropy")
    wd = 0.3 / 23  # network2.py's lmbda / n
    got = train_epoch(key, params, xs, ys, 0.9, batch_size=5, weight_decay=wd, net=net)

    order = np.asarray(jax.random.permutation(key, 23))
    expected = params
    for start in range(0, 23, 5):
        batch = order[start : start + 5]
        expected = sgd_step(expected, xs[batch], ys[batch], 0.9, weight_decay=wd, net=net)
    assert_tree_close(got, expected, 1e-10)
    # Without the partial batch the result differs: the test can tell.
    dropped = params
    for start in range(0, 20, 5):
        batch = order[start : start + 5]
        dropped = sgd_step(dropped, xs[batch], ys[batch], 0.9, weight_decay=wd, net=net)
    assert not np.allclose(got[0].w, dropped[0].w)


def test_train_epoch_shuffle_depends_on_key_only():
    params, xs, ys = random_problem(4, sizes=[4, 3], batch=20)
    a = train_epoch(jax.random.key(1), params, xs, ys, 1.0, batch_size=4)
    b = train_epoch(jax.random.key(1), params, xs, ys, 1.0, batch_size=4)
    c = train_epoch(jax.random.key(2), params, xs, ys, 1.0, batch_size=4)
    assert_tree_close(a, b, 0.0)
    assert not np.allclose(a[0].w, c[0].w)


def test_epoch_equals_loop_of_train_steps():
    params, xs, ys = random_problem(5, sizes=[5, 4, 3], batch=12)
    optimizer = optax.adam(1e-2)
    key = jax.random.key(3)
    got, _ = training.epoch(key, optimizer, params, optimizer.init(params), xs, ys, batch_size=4)
    order = np.asarray(jax.random.permutation(key, 12))
    expected, state = params, optimizer.init(params)
    for start in range(0, 12, 4):
        batch = order[start : start + 4]
        expected, state = training.train_step(
            None, optimizer, expected, state, xs[batch], ys[batch]
        )
    assert_tree_close(got, expected, 1e-10)


def test_epoch_rejects_bad_batch_size():
    params, xs, ys = random_problem(6, sizes=[3, 2], batch=4)
    with pytest.raises(ValueError, match="batch_size to be an int >= 1, got 0"):
        train_epoch(jax.random.key(0), params, xs, ys, 1.0, batch_size=0)
    with pytest.raises(ValueError, match=r"y to have shape \(4, 2\)"):
        train_epoch(jax.random.key(0), params, xs, ys[:, :1], 1.0, batch_size=2)


def test_scan_epoch_gives_every_step_its_own_key():
    xs = jnp.arange(14.0)[:, None]
    key = jax.random.key(11)

    def step(step_key, carry, xb, yb):
        seen, i = carry
        return seen.at[i].set(jax.random.key_data(step_key)), i + 1

    seen = jnp.zeros((4, *jax.random.key_data(key).shape), jnp.uint32)
    seen, count = training.scan_epoch(key, (seen, 0), xs, xs, step, batch_size=4)
    assert int(count) == 4  # three of 4, then the last of 2
    expected = [jax.random.key_data(jax.random.fold_in(key, i)) for i in range(1, 5)]
    np.testing.assert_array_equal(seen, np.stack(expected))
    assert len({tuple(np.asarray(k).ravel()) for k in seen}) == 4
    assert not any(np.array_equal(k, jax.random.key_data(key)) for k in seen)


def test_scan_epoch_visits_every_example_once():
    xs = jnp.arange(11.0)[:, None]

    def step(step_key, total, xb, yb):
        return total + jnp.sum(xb) + 100 * xb.shape[0]

    total = training.scan_epoch(jax.random.key(0), 0.0, xs, xs, step, batch_size=3)
    assert float(total) == 55 + 100 * 11


# Optimizers that need more than the gradient declare it (extra_inputs).


@pytest.mark.slow
def test_an_epoch_with_diag_ggn_descent_passes_each_mini_batch_its_diag_ggn():
    params, xs, ys = random_problem(12, sizes=[4, 3, 2], batch=8)
    net = fbp.Network("tanh", "softmax", "log_likelihood")
    optimizer = curvature.diag_ggn_descent(0.5, damping=0.1, decay=0.0)
    key = jax.random.key(2)
    got, _ = training.epoch(
        key, optimizer, params, optimizer.init(params), xs, ys, batch_size=3, net=net
    )
    order = np.asarray(jax.random.permutation(key, 8))
    expected = params
    for start in range(0, 8, 3):  # by hand: theta - eta g / (diag GGN + damping)
        xb, yb = xs[order[start : start + 3]], ys[order[start : start + 3]]
        grads = fbp.grad(expected, xb, yb, net=net)
        diagonal = curvature.diag_ggn(expected, xb, yb, net=net)
        expected = jax.tree.map(lambda p, g, c: p - 0.5 * g / (c + 0.1), expected, grads, diagonal)
    assert_tree_close(got, expected, 1e-12)


def test_a_declared_extra_input_reaches_the_update():
    """Any transformation can declare what it needs: here the mini-batch's mean cost."""
    params, xs, ys = random_problem(13, sizes=[3, 2], batch=4)

    def update(updates, state, params=None, *, batch_cost=None, **extra):
        return jax.tree.map(lambda g: -batch_cost * jnp.ones_like(g), updates), state

    class ByCost(optax.GradientTransformationExtraArgs):
        extra_inputs = (("batch_cost", lambda net, p, x, y: fbp.loss(p, x, y, net=net)),)

    optimizer = ByCost(optax.identity().init, update)
    new, _ = training.train_step(None, optimizer, params, optimizer.init(params), xs, ys)
    cost = float(fbp.loss(params, xs, ys))
    assert_tree_close(new, jax.tree.map(lambda p: p - cost, params), 1e-15)


def test_a_diag_ggn_optimizer_refuses_a_learning_rules_state():
    params, xs, ys = random_problem(14, sizes=[4, 3, 2], batch=4)
    state = feedback.FeedbackParams(params, feedback.init_feedback(jax.random.key(0), params, "fa"))
    optimizer = curvature.diag_ggn_descent(0.1)
    gradient = feedback.RuleGradient("fa")
    message = r"needs \['diag_ggn'\] of the network's own params.*cannot train a learning rule"
    with pytest.raises(ValueError, match=message):
        training.train_step(
            None, optimizer, state, optimizer.init(state), xs, ys, gradient=gradient
        )
    with pytest.raises(ValueError, match=message):
        training.epoch(
            jax.random.key(0),
            optimizer,
            state,
            optimizer.init(state),
            xs,
            ys,
            batch_size=2,
            gradient=gradient,
        )


def test_a_gradient_that_is_not_a_gradient_is_refused():
    params, xs, ys = random_problem(15, sizes=[3, 2], batch=2)
    optimizer = optax.sgd(0.1)
    with pytest.raises(TypeError, match=r"gradient to be a functional_bp.core.Gradient"):
        training.train_step(
            None, optimizer, params, optimizer.init(params), xs, ys, gradient=fbp.grad
        )


# Compilation: numbers are traced, so new values do not compile again.


def test_new_learning_rate_or_weight_decay_does_not_compile_again():
    params, xs, ys = random_problem(2, sizes=[4, 3, 2], batch=6)
    fbp.sgd_step(params, xs, ys, 0.5, weight_decay=1.0 / 100)
    compiled = fbp.sgd_step._cache_size()
    for eta, lmbda, n in [(0.1, 2.0, 50), (3.0, 0.5, 60_000)]:
        fbp.sgd_step(params, xs, ys, eta, weight_decay=lmbda / n)
    assert fbp.sgd_step._cache_size() == compiled
    key = jax.random.key(0)
    fbp.train_epoch(key, params, xs, ys, 0.5, batch_size=2, weight_decay=1.0 / 2000)
    compiled = fbp.train_epoch._cache_size()
    fbp.train_epoch(key, params, xs, ys, 0.7, batch_size=2, weight_decay=3.0 / 1000)
    assert fbp.train_epoch._cache_size() == compiled


# Bad input: numbers checked before the trace, each named.

KEY = jax.random.key(0)
PARAMS = fbp.init_mlp(KEY, [4, 3, 2], dtype=jnp.float64)
XS = jnp.asarray(np.random.default_rng(0).random((6, 4)))
YS = jnp.asarray(np.eye(2)[[0, 1, 0, 1, 1, 0]])
ADAM = optax.adam(1e-3)
STATE = ADAM.init(PARAMS)


def sgd(**kw):
    return lambda: fbp.sgd_step(PARAMS, XS, YS, kw.pop("learning_rate", 1.0), **kw)


def epoch(key=KEY, learning_rate=1.0, **kw):
    kw.setdefault("batch_size", 2)
    return lambda: fbp.train_epoch(key, PARAMS, XS, YS, learning_rate, **kw)


def keep(step_key, carry, xb, yb):
    return carry


BAD_CASES = [
    # The learning rate and the weight decay.
    (
        "sgd lr nan",
        sgd(learning_rate=float("nan")),
        ValueError,
        r"learning_rate to be a finite number > 0, got nan",
    ),
    ("sgd lr inf", sgd(learning_rate=float("inf")), ValueError, r"learning_rate .* got inf"),
    (
        "sgd lr 0",
        sgd(learning_rate=0.0),
        ValueError,
        r"learning_rate to be a finite number > 0, got 0",
    ),
    ("sgd lr -1", sgd(learning_rate=-1), ValueError, r"learning_rate .*> 0, got -1"),
    (
        "sgd lr str",
        sgd(learning_rate="0.1"),
        TypeError,
        r"learning_rate to be a number > 0, got str",
    ),
    ("sgd lr bool", sgd(learning_rate=True), TypeError, r"learning_rate .* got bool"),
    (
        "sgd lr vector",
        sgd(learning_rate=jnp.ones(2)),
        TypeError,
        r"learning_rate to be a real scalar",
    ),
    ("sgd wd -1", sgd(weight_decay=-1.0), ValueError, r"weight_decay .*>= 0, got -1"),
    ("sgd wd nan", sgd(weight_decay=float("nan")), ValueError, r"weight_decay .* got nan"),
    ("sgd wd inf", sgd(weight_decay=float("inf")), ValueError, r"weight_decay .* got inf"),
    ("sgd wd str", sgd(weight_decay="0.1"), TypeError, r"weight_decay to be a number >= 0"),
    ("sgd wd bool", sgd(weight_decay=True), TypeError, r"weight_decay .* got bool"),
    ("epoch lr -1", epoch(learning_rate=-1.0), ValueError, r"learning_rate .*> 0, got -1"),
    ("epoch lr nan np", epoch(learning_rate=np.float32("nan")), ValueError, r"learning_rate .*nan"),
    ("epoch wd -1", epoch(weight_decay=-1.0), ValueError, r"weight_decay .*>= 0"),
    ("epoch wd nan", epoch(weight_decay=float("nan")), ValueError, r"\bweight_decay to be .*>= 0"),
    # Mini-batches and keys.
    ("epoch batch 0", epoch(batch_size=0), ValueError, r"batch_size to be an int >= 1, got 0"),
    ("epoch batch -2", epoch(batch_size=-2), ValueError, r"batch_size .* got -2"),
    ("epoch batch 2.5", epoch(batch_size=2.5), TypeError, r"batch_size to be an int"),
    ("epoch batch str", epoch(batch_size="10"), TypeError, r"batch_size to be an int"),
    ("epoch batch bool", epoch(batch_size=True), TypeError, r"batch_size to be an int"),
    ("epoch key int", epoch(key=0), TypeError, r"key to be a jax.random key"),
    ("epoch key None", epoch(key=None), TypeError, r"key to be a jax.random key"),
    ("epoch key floats", epoch(key=jnp.zeros(2)), TypeError, r"key to be a jax.random key"),
    ("epoch key (3,)", epoch(key=jnp.zeros(3, jnp.uint32)), TypeError, r"key .*shape \(3,\)"),
    ("epoch keys (2,)", epoch(key=jax.random.split(KEY)), TypeError, r"key .*shape \(2,\)"),
    (
        "training.epoch batch 0",
        lambda: training.epoch(KEY, ADAM, PARAMS, STATE, XS, YS, batch_size=0),
        ValueError,
        r"batch_size to be an int >= 1",
    ),
    (
        "training.epoch key int",
        lambda: training.epoch(7, ADAM, PARAMS, STATE, XS, YS, batch_size=2),
        TypeError,
        r"key to be a jax.random key",
    ),
    (
        "train_step key int",
        lambda: training.train_step(7, ADAM, PARAMS, STATE, XS, YS),
        TypeError,
        r"key to be a jax.random key",
    ),
    (
        "scan epoch key",
        lambda: training.scan_epoch(1, 0, XS, YS, keep, batch_size=2),
        TypeError,
        r"key to be a jax.random key",
    ),
    (
        "scan epoch batch",
        lambda: training.scan_epoch(KEY, 0, XS, YS, keep, batch_size=0),
        ValueError,
        r"batch_size to be an int >= 1",
    ),
    # training.sgd, the update every SGD path builds.
    ("sgd() lr 0", lambda: training.sgd(0.0), ValueError, r"learning_rate .*> 0, got 0"),
    ("sgd() lr str", lambda: training.sgd("1"), TypeError, r"learning_rate to be a number"),
    ("sgd() wd -1", lambda: training.sgd(0.1, -1.0), ValueError, r"weight_decay .*>= 0"),
]


@pytest.mark.parametrize(
    "call,error,message", [c[1:] for c in BAD_CASES], ids=[c[0] for c in BAD_CASES]
)
def test_bad_input(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_bad_input_is_refused_before_any_computation(monkeypatch):
    """The value checks run before the core: a core that fails would show otherwise."""

    def fail(*args, **kwargs):
        raise AssertionError("computed")

    monkeypatch.setattr(training, "_step", fail)
    with pytest.raises(ValueError, match="learning_rate"):
        fbp.sgd_step(PARAMS, XS, YS, -1.0)
    with pytest.raises(ValueError, match="learning_rate"):
        fbp.train_epoch(KEY, PARAMS, XS, YS, float("nan"), batch_size=2)
    with pytest.raises(ValueError, match="weight_decay"):
        fbp.train_epoch(KEY, PARAMS, XS, YS, 0.1, batch_size=3, weight_decay=-1.0)


def test_numpy_numbers_are_numbers():
    params = fbp.init_mlp(KEY, np.array([4, 3, 2]))
    same = fbp.train_epoch(
        KEY,
        params,
        XS.astype(jnp.float32),
        YS.astype(jnp.float32),
        np.float64(1.0),
        batch_size=np.int64(2),
        weight_decay=np.float32(0.1) / np.int32(6),
    )
    assert fbp.params.layer_sizes(same) == [4, 3, 2]
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(same))


def test_traced_numbers_are_left_to_the_caller():
    """Under the caller's jit a number is a tracer: no value check can run, none fails."""
    step = jax.jit(lambda eta: fbp.sgd_step(PARAMS, XS, YS, eta))
    assert jnp.all(jnp.isfinite(step(0.5)[0].w))
    etas = jnp.array([0.1, 0.2])
    assert jax.vmap(step)(etas)[0].w.shape == (2, 3, 4)

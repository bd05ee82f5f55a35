"""Values: every numeric hyperparameter is checked where its value can be seen (Python and
NumPy numbers, concrete JAX arrays, each run's value of a many-runs call); options are
keywords, static options hashable, `Network` fields named; integer class labels stand
for one-hot targets and are checked against the output layer."""

import importlib
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import assert_tree_close as _assert_tree_close

import functional_bp as fbp
from functional_bp import per_example, training

PARAMS = fbp.init_mlp(jax.random.key(0), [3, 4, 2])
XS = jax.random.normal(jax.random.key(1), (6, 3))
LABELS = jnp.array([0, 1, 1, 0, 1, 0])
ONE_HOT = jax.nn.one_hot(LABELS, 2)
SOFTMAX = fbp.Network(activation="tanh", output_activation="softmax", cost="log_likelihood")
KEY = jax.random.key(2)


def assert_tree_close(actual, expected, rtol=1e-6, atol=0.0):
    _assert_tree_close(actual, expected, rtol, atol)


BAD_NUMBERS = [
    pytest.param(jnp.array(-1.0), "finite number", id="negative-array"),
    pytest.param(jnp.array(jnp.nan), "finite number", id="nan-array"),
    pytest.param(jnp.array(jnp.inf), "finite number", id="inf-array"),
    pytest.param(np.float32(-0.5), "finite number", id="negative-numpy"),
    pytest.param(np.array(-2.0), "finite number", id="negative-numpy-0d"),
    pytest.param(jnp.array([0.1, 0.2]), "real scalar", id="vector"),
    pytest.param(jnp.array(True), "real scalar", id="bool-array"),
    pytest.param(jnp.array(1 + 1j), "real scalar", id="complex-array"),
]


@pytest.mark.parametrize("value,match", BAD_NUMBERS)
def test_learning_rate_of_sgd_step(value, match):
    with pytest.raises((ValueError, TypeError), match=f"learning_rate.*{match}"):
        fbp.sgd_step(PARAMS, XS, ONE_HOT, value)


@pytest.mark.parametrize("value,match", BAD_NUMBERS)
def test_learning_rate_of_train_epoch(value, match):
    with pytest.raises((ValueError, TypeError), match=f"learning_rate.*{match}"):
        fbp.train_epoch(KEY, PARAMS, XS, ONE_HOT, value, batch_size=2)


@pytest.mark.parametrize("value,match", BAD_NUMBERS)
def test_weight_decay(value, match):
    with pytest.raises((ValueError, TypeError), match=f"weight_decay.*{match}"):
        fbp.sgd_step(PARAMS, XS, ONE_HOT, 0.1, weight_decay=value)


@pytest.mark.parametrize("value,match", BAD_NUMBERS)
def test_sgd_transformation(value, match):
    with pytest.raises((ValueError, TypeError), match=f"learning_rate.*{match}"):
        training.sgd(value)


@pytest.mark.parametrize("value,match", BAD_NUMBERS[:5])
def test_clip_norm_of_a_private_gradient(value, match):
    gradient = per_example.PrivateGradient(clip_norm=value, noise_multiplier=1.0)
    optimizer = training.sgd(0.1)
    with pytest.raises(ValueError, match=f"clip_norm.*{match}"):
        training.train_step(
            KEY, optimizer, PARAMS, optimizer.init(PARAMS), XS, ONE_HOT, gradient=gradient
        )


def test_a_concrete_value_that_is_fine_passes_and_equals_the_python_number():
    got = fbp.sgd_step(PARAMS, XS, ONE_HOT, jnp.array(0.5), weight_decay=np.float64(0.01))
    assert_tree_close(got, fbp.sgd_step(PARAMS, XS, ONE_HOT, 0.5, weight_decay=0.01))


def test_a_traced_value_is_left_to_the_caller():
    """Under the caller's own jit the value cannot be seen: only shape and dtype are."""
    step = jax.jit(lambda lr: fbp.sgd_step(PARAMS, XS, ONE_HOT, lr))
    assert np.isfinite(np.asarray(step(-1.0)[0].w)).all()


# Many runs: each run's value is checked, named by its run.

RUNS = 3
KEYS = jax.random.split(KEY, RUNS)
MANY_PARAMS = training.many(fbp.init_mlp, per_run=["key"])(KEYS, [3, 4, 2])
EPOCHS = training.many(fbp.train_epoch, per_run=["key", "params", "learning_rate"])


@pytest.mark.parametrize(
    "rates,match",
    [
        ([1.0, -1.0, 0.5], r"learning_rate\[1\].*> 0, got -1.0"),
        ([1.0, 0.5, jnp.nan], r"learning_rate\[2\].*got nan"),
        ([0.0, 0.5, 0.5], r"learning_rate\[0\].*got 0.0"),
        ([1.0, jnp.inf, 0.5], r"learning_rate\[1\].*got inf"),
    ],
)
def test_per_run_learning_rates(rates, match):
    with pytest.raises(ValueError, match=match):
        EPOCHS(KEYS, MANY_PARAMS, XS, ONE_HOT, jnp.array(rates), batch_size=2)


def test_per_run_weight_decay():
    epochs = training.many(
        fbp.train_epoch, per_run=["key", "params", "learning_rate", "weight_decay"]
    )
    with pytest.raises(ValueError, match=r"weight_decay\[2\].*>= 0, got -0.1"):
        epochs(
            KEYS,
            MANY_PARAMS,
            XS,
            ONE_HOT,
            jnp.ones(RUNS),
            batch_size=2,
            weight_decay=jnp.array([0.0, 0.1, -0.1]),
        )


@pytest.mark.parametrize(
    "field,values,match",
    [
        ("clip_norm", [1.0, -1.0, 2.0], r"gradient\[1\].*clip_norm.*got -1.0"),
        ("noise_multiplier", [1.0, 1.0, jnp.nan], r"gradient\[2\].*noise_multiplier.*nan"),
    ],
)
def test_per_run_gradient_hyperparameters(field, values, match):
    settings = {"clip_norm": jnp.ones(RUNS), "noise_multiplier": jnp.ones(RUNS)}
    settings[field] = jnp.array(values)
    gradient = per_example.PrivateGradient(**settings)
    optimizer = training.sgd(0.1)
    states = training.many(optimizer.init, per_run=["params"])(MANY_PARAMS)
    epochs = training.many(training.epoch, per_run=["key", "params", "opt_state", "gradient"])
    with pytest.raises(ValueError, match=match):
        epochs(KEYS, optimizer, MANY_PARAMS, states, XS, ONE_HOT, batch_size=2, gradient=gradient)


def test_per_run_values_that_are_fine_train_every_run():
    """An optimizer state without leaves (optax.sgd's) is a per-run argument too."""
    optimizer = optax.sgd(0.1)
    states = training.many(optimizer.init, per_run=["params"])(MANY_PARAMS)
    epochs = training.many(training.epoch, per_run=["key", "params", "opt_state"])
    params, _ = epochs(KEYS, optimizer, MANY_PARAMS, states, XS, ONE_HOT, batch_size=2)
    one, _ = training.epoch(
        KEYS[1],
        optimizer,
        jax.tree.map(lambda leaf: leaf[1], MANY_PARAMS),
        optimizer.init(PARAMS),
        XS,
        ONE_HOT,
        batch_size=2,
    )
    assert_tree_close(jax.tree.map(lambda leaf: leaf[1], params), one)


def test_per_run_arguments_without_any_array():
    optimizer = optax.sgd(0.1)
    with pytest.raises(ValueError, match="a per-run argument with array leaves"):
        training.many(training.epoch, per_run=["opt_state"])(
            KEY, optimizer, PARAMS, optimizer.init(PARAMS), XS, ONE_HOT, batch_size=2
        )


# Options by keyword, static options hashable, `net` a Network: every jitted public
# function, found by walking the namespaces.

NAMESPACES = [
    "functional_bp",
    "functional_bp.core",
    "functional_bp.curvature",
    "functional_bp.diagnostics",
    "functional_bp.feedback",
    "functional_bp.gradcheck",
    "functional_bp.parallel",
    "functional_bp.per_example",
    "functional_bp.statistics",
    "functional_bp.training",
]


def _jitted_with_net():
    found = {}
    for name in NAMESPACES:
        module = importlib.import_module(name)
        for attribute in module.__all__:
            fn = getattr(module, attribute)
            if not (callable(fn) and hasattr(fn, "lower")):
                continue
            if "net" in inspect.signature(fn).parameters:
                found[getattr(fn, "__name__", attribute)] = fn
    return sorted(found.items())


JITTED = _jitted_with_net()


def _positional(fn):
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return [p for p in inspect.signature(fn).parameters.values() if p.kind in kinds]


def test_the_walk_finds_the_jitted_functions():
    names = {name for name, _ in JITTED}
    assert {"grad", "loss", "backprop", "sgd_step", "train_epoch", "epoch"} <= names
    assert len(names) >= 20


@pytest.mark.parametrize("name,fn", JITTED, ids=[name for name, _ in JITTED])
def test_an_option_passed_positionally_is_named(name, fn):
    args = [None] * (len(_positional(fn)) + 1)
    args[-1] = "relu"
    with pytest.raises(TypeError, match=rf"{name} takes \d+ positional .*by keyword.*'relu'"):
        fn(*args)


@pytest.mark.parametrize("name,fn", JITTED, ids=[name for name, _ in JITTED])
def test_net_that_is_not_a_network_is_named(name, fn):
    with pytest.raises(TypeError, match=r"Expected net to be a functional_bp.Network.*dict"):
        fn(*[None] * len(_positional(fn)), net={"activation": "relu"})


def test_an_unhashable_static_option_is_named():
    with pytest.raises(TypeError, match=r"Expected batch_size to be hashable .*list \[2\]"):
        fbp.train_epoch(KEY, PARAMS, XS, ONE_HOT, 0.1, batch_size=[2])
    optimizer = training.sgd(0.1)
    with pytest.raises(TypeError, match="Expected batch_size to be hashable"):
        training.epoch(
            KEY, optimizer, PARAMS, optimizer.init(PARAMS), XS, ONE_HOT, batch_size={"n": 2}
        )


# Integer class labels: one-hot targets, checked against the output layer.

LABEL_FUNCTIONS = [
    pytest.param(fbp.grad, id="grad"),
    pytest.param(fbp.loss, id="loss"),
    pytest.param(fbp.value_and_grad, id="value_and_grad"),
    pytest.param(per_example.per_example_grads, id="per_example_grads"),
    pytest.param(per_example.per_example_grad_norms, id="per_example_grad_norms"),
]


@pytest.mark.parametrize("fn", LABEL_FUNCTIONS)
def test_integer_labels_equal_one_hot_targets(fn):
    assert_tree_close(fn(PARAMS, XS, LABELS, net=SOFTMAX), fn(PARAMS, XS, ONE_HOT, net=SOFTMAX))


@pytest.mark.parametrize(
    "net",
    [
        fbp.Network(activation="relu", output_activation="sigmoid", cost="cross_entropy"),
        fbp.Network(),
    ],
    ids=["cross_entropy", "quadratic"],
)
def test_integer_labels_with_every_cost(net):
    assert_tree_close(fbp.grad(PARAMS, XS, LABELS, net=net), fbp.grad(PARAMS, XS, ONE_HOT, net=net))


def test_integer_labels_in_training_and_one_example():
    got = fbp.train_epoch(KEY, PARAMS, XS, LABELS, 0.5, batch_size=4, net=SOFTMAX)
    want = fbp.train_epoch(KEY, PARAMS, XS, ONE_HOT, 0.5, batch_size=4, net=SOFTMAX)
    assert_tree_close(got, want)
    one = fbp.backprop(PARAMS, XS[0], LABELS[0], net=SOFTMAX)
    assert_tree_close(one, fbp.backprop(PARAMS, XS[0], ONE_HOT[0], net=SOFTMAX))


def test_integer_labels_match_jax_grad_in_float64():
    """grad with labels against jax.grad of the mean negative log-softmax of the label."""
    params = jax.tree.map(lambda leaf: leaf.astype(jnp.float64), PARAMS)
    xs = XS.astype(jnp.float64)
    logits_net = fbp.Network(activation="tanh", output_activation="identity")

    def cost(p):
        log_probs = jax.nn.log_softmax(fbp.forward(p, xs, net=logits_net)[0])
        return -jnp.mean(log_probs[jnp.arange(len(LABELS)), LABELS])

    got = fbp.grad(params, xs, LABELS, net=SOFTMAX)
    assert_tree_close(got, jax.grad(cost)(params), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize(
    "labels,error,match",
    [
        (jnp.array([0, 1, 2, 0, 1, 0]), ValueError, r"ys to be class labels.*from 0 to 2"),
        (jnp.array([0, 1, -1, 0, 1, 0]), ValueError, r"ys to be class labels.*from -1 to 1"),
        (jnp.array([[0], [1], [1], [0], [1], [0]]), ValueError, r"labels y .*shape \(6,\)"),
        (jnp.array([0, 1, 1]), ValueError, r"labels y to have shape \(6,\)"),
        (jnp.ones((6, 2), bool), TypeError, r"y to have a real floating dtype"),
        (jnp.zeros((6, 2), jnp.int32), ValueError, r"labels y to have shape \(6,\)"),
    ],
    ids=["above", "negative", "column", "too-few", "bool", "int-one-hot"],
)
def test_bad_labels(labels, error, match):
    with pytest.raises(error, match=match):
        fbp.grad(PARAMS, XS, labels, net=SOFTMAX)


def test_bad_label_of_one_example():
    with pytest.raises(ValueError, match=r"y to be class labels in \[0, 2\).*from 5 to 5"):
        fbp.backprop(PARAMS, XS[0], jnp.array(5), net=SOFTMAX)


def test_bad_labels_in_training():
    with pytest.raises(ValueError, match=r"ys to be class labels in \[0, 2\)"):
        fbp.train_epoch(KEY, PARAMS, XS, LABELS + 1, 0.1, batch_size=2, net=SOFTMAX)


# Network fields and user costs.


def test_softmax_with_cross_entropy_points_at_log_likelihood():
    with pytest.raises(ValueError, match="cost='log_likelihood'"):
        fbp.Network(output_activation="softmax", cost="cross_entropy")


@pytest.mark.parametrize(
    "sample,error,match",
    [
        (lambda key, a: jax.random.bernoulli(key, 0.5, a.shape), TypeError, "returned bool"),
        (lambda key, a: a[:1], ValueError, r"returned shape \(1,\)"),
        (lambda key, a: jnp.sum(a), ValueError, r"returned shape \(\)"),
        (lambda key, a: jnp.round(a).astype(jnp.int32), TypeError, "returned int32"),
        (lambda key, a: undefined_name, ValueError, "sample.*failed on one example"),  # noqa: F821
    ],
    ids=["bool", "short", "scalar", "int", "raises"],
)
def test_a_user_cost_sample_keeps_its_contract(sample, error, match):
    cost = fbp.Cost(
        lambda a, y: jnp.sum((a - y) ** 2), lambda a, y: 2 * (a - y), "mine", sample=sample
    )
    with pytest.raises(error, match=f"Cost 'mine'.*{match}"):
        fbp.grad(PARAMS, XS, ONE_HOT, net=fbp.Network(cost=cost))


def test_value_checks_inside_the_callers_jit_with_closed_over_data():
    """Concrete data closed over by the caller's jit is checked, not traced into an error."""
    ys = ONE_HOT
    got = jax.jit(lambda p: fbp.curvature.diag_ggn(p, XS, ys))(PARAMS)
    assert_tree_close(got, fbp.curvature.diag_ggn(PARAMS, XS, ys))
    bad = XS.at[0, 0].set(jnp.nan)
    with pytest.raises(ValueError, match="Expected xs to be finite"):
        jax.jit(lambda p: fbp.curvature.diag_ggn(p, bad, ys))(PARAMS)

"""training.many: R runs in one program (vmap over named arguments); run r equals the
separate run with run r's arguments, for epochs, learning rules, DP, metrics and
initialisers: exactly where nothing is summed (initialisers), else to float64 rounding
(a vmapped matrix product may sum in another order: 1e-15 apart)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import assert_tree_close, random_problem

import functional_bp as fbp
from functional_bp import feedback, per_example, training
from functional_bp.training import many

RUNS = 3


def _run(tree, r):
    return jax.tree.map(lambda a: a[r], tree)


def _init_many(keys, sizes):
    return many(fbp.init_mlp, per_run=["key"])(keys, sizes, dtype=jnp.float64)


def test_initialisers_equal_separate_runs():
    keys = jax.random.split(jax.random.key(0), RUNS)
    params = _init_many(keys, [5, 4, 3])
    assert [leaf.shape[0] for leaf in jax.tree.leaves(params)] == [RUNS] * 4
    for r in range(RUNS):
        single = fbp.init_mlp(keys[r], [5, 4, 3], dtype=jnp.float64)
        assert_tree_close(_run(params, r), single, rtol=0)


@pytest.mark.parametrize("shared_shuffle", [False, True], ids=["own shuffles", "shared shuffle"])
def test_train_epochs_equal_separate_runs(shared_shuffle):
    """Per-run keys, params and learning rates; or one key for all (one shuffle)."""
    _, xs, ys = random_problem(800, batch=23, sizes=[5, 4, 3])
    params = _init_many(jax.random.split(jax.random.key(0), RUNS), [5, 4, 3])
    keys = jax.random.split(jax.random.key(1), RUNS)
    etas = jnp.array([0.3, 1.0, 3.0])
    net = fbp.Network("tanh")
    if shared_shuffle:
        epochs = many(fbp.train_epoch, per_run=["params", "learning_rate"])
        key_of = lambda r: keys[0]
        epoch_keys = keys[0]
    else:
        epochs = many(fbp.train_epoch, per_run=["key", "params", "learning_rate"])
        key_of = lambda r: keys[r]
        epoch_keys = keys
    trained = params
    for _ in range(2):
        trained = epochs(
            epoch_keys, trained, xs, ys, etas, batch_size=5, weight_decay=0.1 / 100, net=net
        )
    for r in range(RUNS):
        single = _run(params, r)
        for _ in range(2):
            single = fbp.train_epoch(
                key_of(r),
                single,
                xs,
                ys,
                float(etas[r]),
                batch_size=5,
                weight_decay=0.1 / 100,
                net=net,
            )
        assert_tree_close(_run(trained, r), single, rtol=1e-12)


@pytest.mark.slow
def test_optax_epochs_with_a_learning_rate_per_run():
    """optax's inject_hyperparams keeps the learning rate in the state, so it vmaps."""
    _, xs, ys = random_problem(801, batch=20, sizes=[4, 6, 2])
    keys = jax.random.split(jax.random.key(2), RUNS)
    params = _init_many(keys, [4, 6, 2])
    optimizer = optax.inject_hyperparams(optax.adam)(learning_rate=1e-2)
    etas = jnp.array([1e-3, 1e-2, 1e-1])

    def init(p, eta):
        state = optimizer.init(p)
        state.hyperparams["learning_rate"] = eta
        return state

    states = jax.vmap(init)(params, etas)
    epochs = many(training.epoch, per_run=["key", "params", "opt_state"])
    trained, _ = epochs(keys, optimizer, params, states, xs, ys, batch_size=6)
    for r in range(RUNS):
        single, _ = training.epoch(
            keys[r],
            optimizer,
            _run(params, r),
            init(_run(params, r), etas[r]),
            xs,
            ys,
            batch_size=6,
        )
        assert_tree_close(_run(trained, r), single, rtol=1e-12)


@pytest.mark.slow
def test_learning_rule_epochs_vmap_their_feedback_state():
    _, xs, ys = random_problem(802, batch=12, sizes=[4, 5, 3])
    keys = jax.random.split(jax.random.key(3), RUNS)
    params = _init_many(keys, [4, 5, 3])
    matrices = jax.vmap(lambda k, p: feedback.init_feedback(k, p, "kp"))(keys, params)
    states = feedback.FeedbackParams(params, matrices)
    optimizer = training.sgd(0.5, 1e-2)
    gradient = feedback.RuleGradient("kp", 1e-2)
    # SGD's state has no leaves: nothing to give per run (many refuses a per-run
    # argument without leaves, whose R it cannot tell), so it is shared.
    opt_state = optimizer.init(_run(states, 0))
    assert jax.tree.leaves(opt_state) == []
    epochs = many(training.epoch, per_run=["key", "params"])
    trained, _ = epochs(keys, optimizer, states, opt_state, xs, ys, batch_size=4, gradient=gradient)
    assert isinstance(trained, feedback.FeedbackParams)
    for r in range(RUNS):
        state = _run(states, r)
        single, _ = training.epoch(
            keys[r],
            optimizer,
            state,
            optimizer.init(state),
            xs,
            ys,
            batch_size=4,
            gradient=gradient,
        )
        assert_tree_close(_run(trained, r), single, rtol=1e-12)
    assert not np.allclose(trained.feedback[0][0], trained.feedback[0][1])


@pytest.mark.slow
def test_private_epochs_with_a_clip_norm_per_run():
    """A gradient's hyperparameters are leaves: a pytree of per-run values vmaps."""
    _, xs, ys = random_problem(803, batch=10, sizes=[4, 3, 2])
    keys = jax.random.split(jax.random.key(4), RUNS)
    params = _init_many(keys, [4, 3, 2])
    clip_norms = jnp.array([0.01, 0.1, 10.0])
    gradients = per_example.PrivateGradient(clip_norms, jnp.full(RUNS, 0.5))
    optimizer = optax.sgd(0.5)
    opt_state = optimizer.init(_run(params, 0))  # no leaves: shared
    epochs = many(training.epoch, per_run=["key", "params", "gradient"])
    trained, _ = epochs(
        keys, optimizer, params, opt_state, xs, ys, batch_size=5, gradient=gradients
    )
    for r in range(RUNS):
        p = _run(params, r)
        single, _ = training.epoch(
            keys[r],
            optimizer,
            p,
            optimizer.init(p),
            xs,
            ys,
            batch_size=5,
            gradient=per_example.PrivateGradient(float(clip_norms[r]), 0.5),
        )
        assert_tree_close(_run(trained, r), single, rtol=1e-12)


def test_metrics_per_run():
    _, xs, ys = random_problem(804, batch=9, sizes=[4, 3, 2])
    params = _init_many(jax.random.split(jax.random.key(5), RUNS), [4, 3, 2])
    net = fbp.Network("relu", "softmax", "log_likelihood")
    costs = many(fbp.loss, per_run=["params"])(params, xs, ys, net=net)
    assert costs.shape == (RUNS,)
    for r in range(RUNS):
        np.testing.assert_allclose(costs[r], fbp.loss(_run(params, r), xs, ys, net=net), rtol=1e-12)
    # Per-run data too: each run's own batch.
    batches = jnp.stack([xs[:3], xs[3:6], xs[6:]]), jnp.stack([ys[:3], ys[3:6], ys[6:]])
    per_batch = many(fbp.loss, per_run=["params", "xs", "ys"])(params, *batches, net=net)
    for r in range(RUNS):
        expected = fbp.loss(_run(params, r), batches[0][r], batches[1][r], net=net)
        np.testing.assert_allclose(per_batch[r], expected, rtol=1e-12)


# Errors: raised before any work, naming the argument.


def _spy():
    calls = []

    def fn(key, params, xs, learning_rate=0.1, weight_decay=None):
        calls.append(1)
        return params

    return fn, calls


def test_an_unknown_name_is_refused_when_wrapping():
    fn, calls = _spy()
    with pytest.raises(ValueError, match=r"per_run to name parameters of fn, got \['eta'\]"):
        many(fn, per_run=["params", "eta"])
    with pytest.raises(ValueError, match=r"takes \['key', 'params', 'xs', 'learning_rate'"):
        many(fn, per_run=["eta"])
    with pytest.raises(ValueError, match=r"per_run to name parameters of fn, got \[\]"):
        many(fn, per_run=[])
    with pytest.raises(ValueError, match=r"got \['lmbda'\]"):
        many(fbp.train_epoch, per_run=["lmbda"])
    assert calls == []


def test_mismatched_run_counts_are_refused_with_each_r():
    fn, calls = _spy()
    keys = jax.random.split(jax.random.key(0), 3)
    params = [fbp.Layer(jnp.ones((2, 4, 3)), jnp.ones((2, 4)))]
    with pytest.raises(ValueError, match=r"one length R, got \{'key': 3, 'params': 2\}"):
        many(fn, per_run=["key", "params"])(keys, params, jnp.ones((5, 3)))
    with pytest.raises(ValueError, match=r"\{'params': 2, 'learning_rate': 3\}"):
        many(fn, per_run=["params", "learning_rate"])(
            None, params, jnp.ones((5, 3)), learning_rate=jnp.ones(3)
        )
    assert calls == []


def test_a_missing_leading_axis_is_refused_naming_the_argument():
    fn, calls = _spy()
    params = [fbp.Layer(jnp.ones((2, 4, 3)), jnp.ones((2, 4)))]
    with pytest.raises(ValueError, match=r"per-run argument key to have a leading run axis"):
        many(fn, per_run=["key", "params"])(jax.random.key(0), params, jnp.ones((5, 3)))
    with pytest.raises(ValueError, match=r"per-run argument learning_rate to have a leading"):
        many(fn, per_run=["params", "learning_rate"])(None, params, None, 0.5)
    # Leaves of different run counts within one argument.
    ragged = [fbp.Layer(jnp.ones((2, 4, 3)), jnp.ones((3, 4)))]
    with pytest.raises(ValueError, match=r"per-run argument params to have a leading run axis"):
        many(fn, per_run=["params"])(None, ragged, None)
    assert calls == []


def test_a_per_run_argument_that_is_not_given_is_named():
    fn, calls = _spy()
    params = [fbp.Layer(jnp.ones((2, 4, 3)), jnp.ones((2, 4)))]
    with pytest.raises(ValueError, match=r"per-run arguments \['weight_decay'\] to be given"):
        many(fn, per_run=["params", "weight_decay"])(None, params, None)
    assert calls == []


def test_many_keeps_the_name_and_checks_inside_each_run():
    epochs = many(fbp.train_epoch, per_run=["key", "params", "learning_rate"])
    assert epochs.__name__ == "train_epoch"
    params = _init_many(jax.random.split(jax.random.key(0), 2), [3, 2])
    keys = jax.random.split(jax.random.key(1), 2)
    xs, ys = jnp.ones((4, 3)), jnp.ones((4, 2))
    with pytest.raises(ValueError, match="batch_size to be an int >= 1"):
        epochs(keys, params, xs, ys, jnp.ones(2), batch_size=0)

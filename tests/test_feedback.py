"""Learning rules (functional_bp.feedback): feedback alignment, direct feedback alignment,
sign symmetry, Kolen-Pollack, the sign-concordant usf, brsf and frsf, and bp, as
directions and trained with `training` on `FeedbackParams`. Against NumPy and jax.grad
references on random architectures: tests/equivalence/. Bad input:
tests/bad_input/test_feedback.py."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import COMBOS, assert_tree_close, combo_params, network, random_problem
from references import numpy_rule_grad

import functional_bp as fbp
from functional_bp import feedback, training
from functional_bp.feedback import FeedbackParams, RuleGradient

DEPTHS = {2: [6, 5, 3], 3: [5, 7, 4, 3], 4: [4, 6, 5, 4, 2]}


@functools.lru_cache
def sgd(learning_rate, weight_decay):
    """One optimizer per setting: an optimizer is static, hashed by identity, so a new
    one would compile the step again."""
    return training.sgd(learning_rate, weight_decay or None)


def rule_step(params, matrices, xs, ys, learning_rate, *, rule, weight_decay=0.0):
    """One SGD step of a rule, network2.py's L2 on the weights (and kp's B): the old
    feedback_step."""
    state = FeedbackParams(params, matrices)
    optimizer = sgd(learning_rate, weight_decay)
    gradient = RuleGradient(rule, weight_decay)
    return training.train_step(
        None, optimizer, state, optimizer.init(state), xs, ys, gradient=gradient
    )[0]


def rule_epoch(key, params, matrices, xs, ys, learning_rate, *, rule, batch_size, weight_decay):
    """One epoch of `rule_step`s: the old feedback_epoch."""
    state = FeedbackParams(params, matrices)
    optimizer = sgd(learning_rate, weight_decay)
    gradient = RuleGradient(rule, weight_decay)
    return training.epoch(
        key,
        optimizer,
        state,
        optimizer.init(state),
        xs,
        ys,
        batch_size=batch_size,
        gradient=gradient,
    )[0]


def test_kp_step_updates_b_like_w():
    params, xs, ys = random_problem(910, batch=5, sizes=DEPTHS[3])
    matrices = feedback.init_feedback(jax.random.key(0), params, "kp")
    new, new_feedback = rule_step(params, matrices, xs, ys, 0.3, rule="kp", weight_decay=0.1)
    direction = numpy_rule_grad(params, matrices, xs, ys, "fa")
    decay = 1 - 0.3 * 0.1  # network2.py's (1 - eta lmbda / n)
    assert_tree_close(
        new,
        [fbp.Layer(decay * l.w - 0.3 * g.w, l.b - 0.3 * g.b) for l, g in zip(params, direction)],
        rtol=1e-10,
    )
    assert_tree_close(
        new_feedback, [decay * b - 0.3 * g.w for b, g in zip(matrices, direction[1:])], rtol=1e-10
    )


@pytest.mark.parametrize("rule", ["fa", "dfa", "sign"])
def test_a_rule_step_moves_the_params_along_its_direction_and_keeps_b(rule):
    params, xs, ys = random_problem(911, batch=5, sizes=DEPTHS[3])
    matrices = feedback.init_feedback(jax.random.key(1), params, rule)
    new, new_feedback = rule_step(params, matrices, xs, ys, 0.3, rule=rule)
    direction = feedback.feedback_grad(params, matrices, xs, ys, rule=rule)
    assert_tree_close(new, jax.tree.map(lambda p, g: p - 0.3 * g, params, direction), 1e-12)
    if rule == "sign":
        assert new_feedback is None
    else:
        assert_tree_close(new_feedback, matrices, rtol=0)


@pytest.mark.parametrize("combo", combo_params(COMBOS[::4], quick=COMBOS[:1]))
def test_forward_weights_as_feedback_give_the_gradient(combo):
    net = network(combo)
    params, xs, ys = random_problem(940, batch=6, sizes=DEPTHS[3])
    true = fbp.grad(params, xs, ys, net=net)
    for rule in ("fa", "kp"):
        got = feedback.feedback_grad(params, [l.w for l in params[1:]], xs, ys, rule=rule, net=net)
        assert_tree_close(got, true, rtol=1e-12)
    one_hidden, xs1, ys1 = random_problem(941, batch=6, sizes=[5, 4, 3])
    got = feedback.feedback_grad(one_hidden, [one_hidden[1].w], xs1, ys1, rule="dfa", net=net)
    assert_tree_close(got, fbp.grad(one_hidden, xs1, ys1, net=net), rtol=1e-12)
    angles = feedback.alignment_angles(
        params, [l.w for l in params[1:]], xs, ys, rule="fa", net=net
    )
    np.testing.assert_allclose(angles.update, 0, atol=1e-5)
    np.testing.assert_allclose(angles.feedback, 0, atol=1e-5)


def test_sign_is_fa_with_sign_of_w():
    params, xs, ys = random_problem(950, batch=5, sizes=DEPTHS[4])
    signs = [jnp.sign(l.w) for l in params[1:]]
    assert_tree_close(
        feedback.feedback_grad(params, None, xs, ys, rule="sign"),
        feedback.feedback_grad(params, signs, xs, ys, rule="fa"),
        rtol=1e-12,
    )


def test_feedback_scale():
    params = fbp.init_mlp(jax.random.key(0), [50, 400, 10])
    default = feedback.init_feedback(jax.random.key(1), params, "fa")[0]
    scaled = feedback.init_feedback(jax.random.key(1), params, "fa", scale=0.3)[0]
    assert abs(float(jnp.std(default)) * np.sqrt(400) - 1) < 0.05  # N(0, 1/n_l)
    np.testing.assert_allclose(scaled, default * 0.3 * np.sqrt(400), rtol=1e-5)
    with pytest.raises(ValueError, match="scale to be a finite number > 0"):
        feedback.init_feedback(jax.random.key(1), params, "fa", scale=0.0)
    assert feedback.init_feedback(jax.random.key(1), params, "sign") is None


def test_kp_feedback_converges_to_the_weights():
    params, xs, ys = random_problem(960, batch=40, sizes=[6, 8, 3])
    matrices = feedback.init_feedback(jax.random.key(0), params, "kp")
    start = feedback.alignment_angles(params, matrices, xs, ys, rule="kp").feedback
    for epoch in range(40):
        params, matrices = rule_epoch(
            jax.random.key(epoch),
            params,
            matrices,
            xs,
            ys,
            0.5,
            rule="kp",
            batch_size=8,
            weight_decay=0.5,
        )
    end = feedback.alignment_angles(params, matrices, xs, ys, rule="kp").feedback
    assert float(start[0]) > 45 and float(end[0]) < 1
    # fa, without the shared update, keeps its B: the angle stays where it was.
    fixed = feedback.init_feedback(jax.random.key(0), params, "fa")
    _, after = rule_step(params, fixed, xs, ys, 0.5, rule="fa")
    assert_tree_close(after, fixed, rtol=0)


def test_a_rule_epoch_is_the_loop_of_its_steps():
    params, xs, ys = random_problem(961, batch=12, sizes=[4, 5, 3])
    matrices = feedback.init_feedback(jax.random.key(0), params, "kp")
    key = jax.random.key(4)
    got = rule_epoch(key, params, matrices, xs, ys, 0.5, rule="kp", batch_size=5, weight_decay=0.1)
    order = np.asarray(jax.random.permutation(key, 12))
    expected = (params, matrices)
    for start in range(0, 12, 5):  # two of 5, then the last of 2
        batch = order[start : start + 5]
        expected = rule_step(*expected, xs[batch], ys[batch], 0.5, rule="kp", weight_decay=0.1)
    assert_tree_close(got, FeedbackParams(*expected), rtol=1e-12)


def test_jit_vmap_and_float32():
    params, xs, ys = random_problem(970, batch=6, sizes=DEPTHS[2])
    matrices = feedback.init_feedback(jax.random.key(1), params, "fa")
    direct = feedback.feedback_grad(params, matrices, xs, ys, rule="fa")
    jitted = jax.jit(lambda p, f: feedback.feedback_grad(p, f, xs, ys, rule="fa"))(params, matrices)
    assert_tree_close(jitted, direct, rtol=1e-12)
    per_example = jax.vmap(
        lambda x, y: feedback.feedback_grad(params, matrices, x[None], y[None], rule="fa")
    )(xs, ys)
    assert_tree_close(jax.tree.map(lambda g: g.mean(axis=0), per_example), direct, rtol=1e-12)
    low = jax.tree.map(lambda a: a.astype(jnp.float32), (params, matrices, xs, ys))
    fast = feedback.feedback_grad(*low, rule="fa")
    assert_tree_close(fast, jax.tree.map(lambda a: a.astype(jnp.float32), direct), rtol=1e-4)


SGD = optax.sgd(0.1)


def _train(p, f, x, y, *, gradient, optimizer=SGD, state=None):
    state = FeedbackParams(p, f) if state is None else state
    return training.train_step(
        None, optimizer, state, optimizer.init(state), x, y, gradient=gradient
    )


@pytest.mark.parametrize(
    "call,error,message",
    [
        (
            lambda p, f, x, y: feedback.feedback_grad(p, f[:1], x, y, rule="fa"),
            ValueError,
            r"Expected 2 feedback matrices for rule 'fa' \(one per hidden layer\), got 1",
        ),
        (
            lambda p, f, x, y: feedback.feedback_grad(p, [f[0].T, f[1]], x, y, rule="fa"),
            ValueError,
            r"hidden layer 1 to have shape \(4, 7\) \(w\^2's for rule 'fa'\), got \(7, 4\)",
        ),
        (
            lambda p, f, x, y: feedback.feedback_grad(p, f, x, y, rule="dfa"),
            ValueError,
            r"hidden layer 1 to have shape \(3, 7\) \(\(n_L, n_l\) for rule 'dfa'\)",
        ),
        (
            lambda p, f, x, y: feedback.feedback_grad(p, None, x, y, rule="kp"),
            ValueError,
            r"Expected 2 feedback matrices for rule 'kp'.*got NoneType",
        ),
        (
            lambda p, f, x, y: feedback.feedback_grad(p, f, x, y, rule="backprop"),
            ValueError,
            r"Unknown rule 'backprop'; expected one of \['fa', 'dfa', 'sign', 'kp', 'usf', "
            r"'brsf', 'frsf', 'bp'\]",
        ),
        (
            lambda p, f, x, y: feedback.init_feedback(0, p, "fa"),
            TypeError,
            r"key to be a jax.random key",
        ),
        (
            lambda p, f, x, y: _train(
                p, f, x, y, gradient=RuleGradient("fa"), optimizer=training.sgd(-1.0)
            ),
            ValueError,
            r"learning_rate to be a finite number > 0",
        ),
        (
            lambda p, f, x, y: _train(p, f, x, y, gradient=RuleGradient("kp", -1)),
            ValueError,
            r"weight_decay to be a finite number >= 0",
        ),
        # The training gradient: its rule, its state, its matrices.
        (
            lambda p, f, x, y: _train(p, f, x, y, gradient=RuleGradient("backprop")),
            ValueError,
            r"Unknown rule 'backprop'",
        ),
        (
            lambda p, f, x, y: _train(p, f, x, y, gradient=RuleGradient("fa"), state=p),
            TypeError,
            r"params to be a feedback.FeedbackParams\(params, feedback\) for "
            r"RuleGradient\('fa'\), got list",
        ),
        (
            lambda p, f, x, y: _train(p, f[:1], x, y, gradient=RuleGradient("kp")),
            ValueError,
            r"Expected 2 feedback matrices for rule 'kp'",
        ),
    ],
)
def test_bad_feedback_input(call, error, message):
    params, xs, ys = random_problem(980, batch=3, sizes=DEPTHS[3])
    matrices = feedback.init_feedback(jax.random.key(0), params, "fa")
    with pytest.raises(error, match=message):
        call(params, matrices, xs, ys)


# The sign-concordant rules (biotorch's usf, brsf, frsf), bp, and one network vs many runs.


def _xavier(w):
    """The std of a Xavier draw for w: biotorch's scaling factor sqrt(2/(fan_in+fan_out))."""
    return np.sqrt(2.0 / (w.shape[0] + w.shape[1]))


def test_usf_and_sign_are_the_scaled_signs_of_the_weights():
    params, _, _ = random_problem(990, batch=3, sizes=DEPTHS[3])
    weights = [l.w for l in params[1:]]
    usf = feedback.feedback_matrices(params, None, rule="usf")
    assert_tree_close(usf, [_xavier(w) * jnp.sign(w) for w in weights], rtol=1e-15)
    sign = feedback.feedback_matrices(params, None, rule="sign")
    assert_tree_close(sign, [jnp.sign(w) for w in weights], rtol=0)  # unscaled by default
    scaled = feedback.feedback_matrices(params, None, rule="sign", scale=0.25)
    assert_tree_close(scaled, [0.25 * jnp.sign(w) for w in weights], rtol=1e-15)
    assert_tree_close(feedback.feedback_matrices(params, None, rule="bp"), weights, rtol=0)


def test_brsf_draws_a_fresh_magnitude_from_the_key_with_the_signs_of_the_weights():
    params, xs, ys = random_problem(991, batch=5, sizes=DEPTHS[3])
    key, other = jax.random.key(3), jax.random.key(4)
    first = feedback.feedback_matrices(params, None, rule="brsf", key=key)
    again = feedback.feedback_matrices(params, None, rule="brsf", key=key)
    assert_tree_close(again, first, rtol=0)  # the same key: the same B
    different = feedback.feedback_matrices(params, None, rule="brsf", key=other)
    for b, c, layer in zip(first, different, params[1:]):
        assert not np.allclose(b, c)
        w = np.asarray(layer.w)
        np.testing.assert_array_equal(np.sign(b), np.sign(w))  # sign-concordant
        bound = np.sqrt(3) * _xavier(w)  # biotorch's xavier_uniform bound sqrt(6/(fan_in+fan_out))
        assert np.all(np.abs(b) <= bound) and np.all(np.abs(b) > 0)
    direction = feedback.feedback_grad(params, None, xs, ys, rule="brsf", key=key)
    same = feedback.feedback_grad(params, None, xs, ys, rule="brsf", key=key)
    assert_tree_close(same, direction, rtol=0)
    # It is fa's pass with the drawn matrices: B^l = |R^l| sign(w^{l+1}).
    as_fa = feedback.feedback_grad(params, first, xs, ys, rule="fa")
    assert_tree_close(direction, as_fa, rtol=1e-12)
    moved = feedback.feedback_grad(params, None, xs, ys, rule="brsf", key=other)
    assert not np.allclose(moved[0].w, direction[0].w)
    assert_tree_close(moved[-1], direction[-1], rtol=1e-12)  # delta^L is every rule's


def test_brsf_magnitudes_are_uniform_with_the_scale_as_their_std():
    params = fbp.init_mlp(jax.random.key(0), [5, 300, 200, 2])
    (b, _) = feedback.feedback_matrices(params, None, rule="brsf", key=jax.random.key(1))
    magnitude = np.abs(np.asarray(b))
    bound = np.sqrt(6 / 500)  # |U(-a, a)| is U(0, a): mean a/2, max close to a
    assert abs(magnitude.mean() / (bound / 2) - 1) < 0.02 and magnitude.max() > 0.99 * bound
    (scaled, _) = feedback.feedback_matrices(
        params, None, rule="brsf", key=jax.random.key(1), scale=0.1
    )
    np.testing.assert_allclose(scaled, b * 0.1 / _xavier(b), rtol=1e-5)


def test_frsf_keeps_its_magnitudes_and_follows_the_signs_of_the_weights():
    params, xs, ys = random_problem(992, batch=5, sizes=DEPTHS[3])
    magnitudes = feedback.init_feedback(jax.random.key(2), params, "frsf")
    for r, layer in zip(magnitudes, params[1:]):
        assert r.shape == layer.w.shape and r.dtype == layer.w.dtype
        assert np.all(np.asarray(r) >= 0) and np.all(np.asarray(r) <= np.sqrt(3) * _xavier(r))
    matrices = feedback.feedback_matrices(params, magnitudes, rule="frsf")
    assert_tree_close(matrices, [r * jnp.sign(l.w) for r, l in zip(magnitudes, params[1:])], rtol=0)
    new, kept = rule_step(params, magnitudes, xs, ys, 5.0, rule="frsf")
    assert_tree_close(kept, magnitudes, rtol=0)  # R is fixed
    after = feedback.feedback_matrices(new, kept, rule="frsf")
    for b, layer in zip(after, new[1:]):  # B^l tracks sign(w^{l+1}) as w moves
        np.testing.assert_array_equal(np.sign(b), np.sign(layer.w))
    big = fbp.init_mlp(jax.random.key(0), [5, 300, 200, 2])
    (r, _) = feedback.init_feedback(jax.random.key(3), big, "frsf")
    assert abs(float(jnp.mean(r)) / (np.sqrt(6 / 500) / 2) - 1) < 0.02  # xavier uniform
    (s, _) = feedback.init_feedback(jax.random.key(3), big, "frsf", scale=0.1)
    np.testing.assert_allclose(s, r * 0.1 / _xavier(r), rtol=1e-5)


def test_bp_is_backprop_in_every_api():
    params, xs, ys = random_problem(993, batch=6, sizes=DEPTHS[4])
    true = fbp.grad(params, xs, ys)
    assert feedback.init_feedback(jax.random.key(0), params, "bp") is None
    assert_tree_close(feedback.feedback_grad(params, None, xs, ys, rule="bp"), true, rtol=1e-13)
    angles = feedback.alignment_angles(params, None, xs, ys, rule="bp")
    np.testing.assert_allclose(angles.update, 0, atol=1e-5)
    np.testing.assert_allclose(angles.feedback, 0, atol=1e-5)
    new, none = rule_step(params, None, xs, ys, 0.3, rule="bp")
    assert none is None
    assert_tree_close(new, fbp.sgd_step(params, xs, ys, 0.3), rtol=1e-12)


@pytest.mark.parametrize("rule", feedback.RULES)
def test_every_rule_trains_an_epoch_on_feedback_params(rule):
    """A loop over RULES needs no special case: brsf takes each step's key."""
    params, xs, ys = random_problem(994, batch=12, sizes=[4, 5, 3, 2])
    matrices = feedback.init_feedback(jax.random.key(0), params, rule)
    key = jax.random.key(5)
    new, new_matrices = rule_epoch(
        key, params, matrices, xs, ys, 0.5, rule=rule, batch_size=5, weight_decay=0.1
    )
    assert (new_matrices is None) == (matrices is None)
    assert all(np.isfinite(l.w).all() for l in new)
    assert not np.allclose(new[0].w, params[0].w)
    if rule == "brsf":  # another key, other draws, another result
        other = rule_epoch(
            jax.random.key(6), params, None, xs, ys, 0.5, rule=rule, batch_size=5, weight_decay=0
        )[0]
        assert not np.allclose(other[0].w, new[0].w)


@pytest.mark.parametrize("rule", feedback.RULES)
def test_init_feedback_maps_over_runs_with_vmap(rule):
    """The form init_feedback's run-axis error points at."""
    keys = jax.random.split(jax.random.key(0), 3)
    params = training.many(fbp.init_mlp, per_run=["key"])(keys, DEPTHS[3])
    feedback_keys = jax.random.split(jax.random.key(1), 3)
    every = jax.vmap(lambda k, p: feedback.init_feedback(k, p, rule))(feedback_keys, params)
    for r in range(3):
        one = jax.tree.map(lambda a: a[r], params)
        expected = feedback.init_feedback(feedback_keys[r], one, rule)
        got = None if every is None else [b[r] for b in every]
        assert (got is None) == (expected is None)
        if expected is not None:
            assert_tree_close(got, expected, rtol=1e-12)
    with pytest.raises(ValueError, match=r"jax\.vmap\(lambda k, p: init_feedback"):
        feedback.init_feedback(jax.random.key(0), params, rule)


def test_feedback_grad_maps_over_runs_with_many():
    """The form feedback_grad's run-axis error points at."""
    keys = jax.random.split(jax.random.key(0), 2)
    params = training.many(fbp.init_mlp, per_run=["key"])(keys, DEPTHS[2], dtype=jnp.float64)
    matrices = jax.vmap(lambda k, p: feedback.init_feedback(k, p, "fa"))(keys, params)
    _, xs, ys = random_problem(995, batch=4, sizes=DEPTHS[2])
    many = training.many(feedback.feedback_grad, per_run=["params", "feedback"])
    got = many(params, matrices, xs, ys, rule="fa")
    one = jax.tree.map(lambda a: a[1], (params, matrices))
    assert_tree_close(
        jax.tree.map(lambda a: a[1], got), feedback.feedback_grad(*one, xs, ys, rule="fa"), 1e-12
    )
    with pytest.raises(ValueError, match=r"training\.many\(feedback\.feedback_grad"):
        feedback.feedback_grad(params, matrices, xs, ys, rule="fa")


@pytest.mark.parametrize("rule", ["sign", "usf", "brsf", "frsf", "bp"])
def test_new_rules_in_float32_under_jit(rule):
    params, xs, ys = random_problem(996, batch=6, sizes=DEPTHS[3])
    matrices = feedback.init_feedback(jax.random.key(1), params, rule)
    key = jax.random.key(2)
    direct = feedback.feedback_grad(params, matrices, xs, ys, rule=rule, key=key)
    low = jax.tree.map(lambda a: a.astype(jnp.float32), (params, matrices, xs, ys))
    fast = jax.jit(lambda *a: feedback.feedback_grad(*a, rule=rule, key=key))(*low)
    assert jax.tree.leaves(fast)[0].dtype == jnp.float32
    if rule == "brsf":  # a float32 draw is not a float64 one rounded: compare with fa's pass
        drawn = feedback.feedback_matrices(low[0], None, rule=rule, key=key)
        assert drawn[0].dtype == jnp.float32
        direct = feedback.feedback_grad(
            params, [b.astype(jnp.float64) for b in drawn], xs, ys, rule="fa"
        )
    assert_tree_close(fast, jax.tree.map(lambda a: a.astype(jnp.float32), direct), rtol=1e-4)


def test_the_scale_of_a_gradient_is_a_leaf():
    """RuleGradient's scale is traced: two scales, one compilation, and sign's update is
    linear in it for the hidden layers."""
    params, xs, ys = random_problem(997, batch=5, sizes=DEPTHS[2])
    state = FeedbackParams(params, None)
    steps = [RuleGradient("sign", scale=s)(None, fbp.Network(), state, xs, ys) for s in (1.0, 2.0)]
    assert_tree_close(steps[1].params[0].w, 2 * steps[0].params[0].w, rtol=1e-12)
    assert_tree_close(steps[1].params[1], steps[0].params[1], rtol=1e-12)
    assert jax.tree.leaves(RuleGradient("usf", 0.0, 0.5)) == [0.0, 0.5]

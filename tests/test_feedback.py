"""Feedback alignment, direct feedback alignment, sign symmetry and Kolen-Pollack against
references written here: plain NumPy for the classic networks, and for every activation
and cost a `jax.grad` of a network whose layers send the error back through B
(`jax.custom_vjp`), in float64 to 1e-10."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import COMBOS, assert_tree_close, combo_id, options, random_problem

import functional_bp as fbp
from functional_bp._options import resolve
from functional_bp.cli import main

DEPTHS = {2: [6, 5, 3], 3: [5, 7, 4, 3], 4: [4, 6, 5, 4, 2], 5: [3, 4, 5, 4, 3, 2]}


# NumPy: sigmoid hidden and output layers, quadratic cost (network.py's network).


def _sigmoid(z):
    return 1 / (1 + np.exp(-z))


def numpy_rule_grad(params, feedback, xs, ys, rule):
    ws = [np.asarray(l.w) for l in params]
    bs = [np.asarray(l.b) for l in params]
    activations, a = [np.asarray(xs)], np.asarray(xs)
    for w, b in zip(ws, bs):
        a = _sigmoid(a @ w.T + b)
        activations.append(a)
    a_L = activations[-1]
    delta_L = (a_L - np.asarray(ys)) * a_L * (1 - a_L)
    deltas = [delta_L]
    for l in range(len(ws) - 1, 0, -1):  # hidden layer l, 1-based
        a_l = activations[l]
        if rule == "dfa":
            back = delta_L @ np.asarray(feedback[l - 1])
        else:
            matrix = np.sign(ws[l]) if rule == "sign" else np.asarray(feedback[l - 1])
            back = deltas[0] @ matrix
        deltas.insert(0, back * a_l * (1 - a_l))
    n = xs.shape[0]
    return [fbp.Layer(d.T @ a / n, d.sum(axis=0) / n) for d, a in zip(deltas, activations[:-1])]


def random_architecture(seed):
    """Depth 2 to 5 (layers), widths 1 to 12."""
    rng = np.random.default_rng(seed)
    return [int(n) for n in rng.integers(1, 13, size=2 + seed % 4 + 1)]


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("rule", ["fa", "dfa", "sign", "kp"])
def test_each_rule_equals_numpy(rule, seed):
    params, xs, ys = random_problem(900 + seed, batch=7, sizes=random_architecture(seed))
    feedback = fbp.init_feedback(jax.random.key(seed), params, rule)
    got = fbp.feedback_grad(params, feedback, xs, ys, rule=rule)
    assert_tree_close(got, numpy_rule_grad(params, feedback, xs, ys, rule), rtol=1e-10)


def test_kp_step_updates_b_like_w():
    params, xs, ys = random_problem(910, batch=5, sizes=DEPTHS[3])
    feedback = fbp.init_feedback(jax.random.key(0), params, "kp")
    new, new_feedback = fbp.feedback_step(
        params, feedback, xs, ys, 0.3, rule="kp", weight_decay=0.1
    )
    direction = numpy_rule_grad(params, feedback, xs, ys, "fa")
    decay = 1 - 0.3 * 0.1
    assert_tree_close(
        new,
        [fbp.Layer(decay * l.w - 0.3 * g.w, l.b - 0.3 * g.b) for l, g in zip(params, direction)],
        rtol=1e-10,
    )
    assert_tree_close(
        new_feedback, [decay * b - 0.3 * g.w for b, g in zip(feedback, direction[1:])], rtol=1e-10
    )


# Every activation and cost: references from jax.grad with the error sent back through B.


def _reference(params, matrices, xs, ys, combo, rule):
    """The rule's update from jax.grad: each hidden layer's input takes its gradient
    through B (fa, sign) with a custom VJP; dfa injects (B^l)^T delta^L at z^l."""
    opts = resolve(*combo)
    form = opts.cost.closed_form(opts.output_activation)
    num_layers = len(params)

    def cost(z_L, a_L, y):
        return form.fn(z_L, y) if form is not None else opts.cost.fn(a_L, y)

    def act(l):
        return opts.output_activation if l == num_layers else opts.activation

    if rule != "dfa":

        @jax.custom_vjp
        def linear(a, w, b, matrix):
            return w @ a + b

        def linear_fwd(a, w, b, matrix):
            return w @ a + b, (a, matrix)

        def linear_bwd(saved, g):
            a, matrix = saved
            return matrix.T @ g, jnp.outer(g, a), g, jnp.zeros_like(matrix)

        linear.defvjp(linear_fwd, linear_bwd)

        def one(params, x, y):
            a = x
            for l, layer in enumerate(params, start=1):
                # Layer l's input a^{l-1} sends its error back through B^{l-1} (l > 1).
                matrix = layer.w if l == 1 else matrices[l - 2]
                z = linear(a, layer.w, layer.b, matrix)
                a = act(l).fn(z)
            return cost(z, a, y)

        per_example = jax.vmap(jax.grad(one), in_axes=(None, 0, 0))(params, xs, ys)
        return jax.tree.map(lambda g: jnp.mean(g, axis=0), per_example)

    def one_dfa(x, y):
        zs, acts = [], [x]
        for l, layer in enumerate(params, start=1):
            zs.append(layer.w @ acts[-1] + layer.b)
            acts.append(act(l).fn(zs[-1]))
        delta_L = jax.grad(lambda z: cost(z, act(num_layers).fn(z), y))(zs[-1])
        deltas = [
            jax.vjp(act(l).fn, zs[l - 1])[1](delta_L @ matrices[l - 1])[0]
            for l in range(1, num_layers)
        ] + [delta_L]
        return [fbp.Layer(jnp.outer(d, a), d) for d, a in zip(deltas, acts[:-1])]

    per_example = jax.vmap(one_dfa)(xs, ys)
    return jax.tree.map(lambda g: jnp.mean(g, axis=0), per_example)


@functools.partial(jax.jit, static_argnames=("combo", "rule"))
def library_and_reference(params, feedback, xs, ys, combo, rule):
    matrices = [jnp.sign(l.w) for l in params[1:]] if rule == "sign" else feedback
    got = fbp.feedback_grad(params, feedback, xs, ys, rule=rule, **options(combo))
    return got, _reference(params, matrices, xs, ys, combo, rule)


@pytest.mark.parametrize("combo", COMBOS, ids=[combo_id(c) for c in COMBOS])
def test_every_activation_and_cost(combo):
    seed = COMBOS.index(combo)
    params, xs, ys = random_problem(920 + seed, batch=4, sizes=DEPTHS[2 + seed % 3])
    for rule in ("fa", "dfa", "sign"):
        feedback = fbp.init_feedback(jax.random.key(seed), params, rule)
        got, want = library_and_reference(params, feedback, xs, ys, combo, rule)
        assert_tree_close(got, want, rtol=1e-10, atol=1e-15)


@pytest.mark.parametrize("combo", COMBOS[::4], ids=[combo_id(c) for c in COMBOS[::4]])
def test_forward_weights_as_feedback_give_the_gradient(combo):
    params, xs, ys = random_problem(940, batch=6, sizes=DEPTHS[3])
    true = fbp.grad(params, xs, ys, **options(combo))
    for rule in ("fa", "kp"):
        got = fbp.feedback_grad(
            params, [l.w for l in params[1:]], xs, ys, rule=rule, **options(combo)
        )
        assert_tree_close(got, true, rtol=1e-12)
    one_hidden, xs1, ys1 = random_problem(941, batch=6, sizes=[5, 4, 3])
    got = fbp.feedback_grad(one_hidden, [one_hidden[1].w], xs1, ys1, rule="dfa", **options(combo))
    assert_tree_close(got, fbp.grad(one_hidden, xs1, ys1, **options(combo)), rtol=1e-12)
    angles = fbp.alignment_angles(
        params, [l.w for l in params[1:]], xs, ys, rule="fa", **options(combo)
    )
    np.testing.assert_allclose(angles.update, 0, atol=1e-5)
    np.testing.assert_allclose(angles.feedback, 0, atol=1e-5)


def test_sign_is_fa_with_sign_of_w():
    params, xs, ys = random_problem(950, batch=5, sizes=DEPTHS[4])
    signs = [jnp.sign(l.w) for l in params[1:]]
    assert_tree_close(
        fbp.feedback_grad(params, None, xs, ys, rule="sign"),
        fbp.feedback_grad(params, signs, xs, ys, rule="fa"),
        rtol=1e-12,
    )


def test_feedback_scale():
    params = fbp.init_mlp(jax.random.key(0), [50, 400, 10])
    default = fbp.init_feedback(jax.random.key(1), params, "fa")[0]
    scaled = fbp.init_feedback(jax.random.key(1), params, "fa", scale=0.3)[0]
    assert abs(float(jnp.std(default)) * np.sqrt(400) - 1) < 0.05  # N(0, 1/n_l)
    np.testing.assert_allclose(scaled, default * 0.3 * np.sqrt(400), rtol=1e-5)
    with pytest.raises(ValueError, match="scale to be a finite number > 0"):
        fbp.init_feedback(jax.random.key(1), params, "fa", scale=0.0)


def test_kp_feedback_converges_to_the_weights():
    params, xs, ys = random_problem(960, batch=40, sizes=[6, 8, 3])
    feedback = fbp.init_feedback(jax.random.key(0), params, "kp")
    start = fbp.alignment_angles(params, feedback, xs, ys, rule="kp").feedback
    for epoch in range(40):
        params, feedback = fbp.feedback_epoch(
            jax.random.key(epoch),
            params,
            feedback,
            xs,
            ys,
            0.5,
            rule="kp",
            batch_size=8,
            weight_decay=0.5,
        )
    end = fbp.alignment_angles(params, feedback, xs, ys, rule="kp").feedback
    assert float(start[0]) > 45 and float(end[0]) < 1
    # fa, without the shared update, keeps its B: the angle stays where it was.
    fixed = fbp.init_feedback(jax.random.key(0), params, "fa")
    _, after = fbp.feedback_step(params, fixed, xs, ys, 0.5, rule="fa")
    assert_tree_close(after, fixed, rtol=0)


def test_jit_vmap_and_float32():
    params, xs, ys = random_problem(970, batch=6, sizes=DEPTHS[2])
    feedback = fbp.init_feedback(jax.random.key(1), params, "fa")
    direct = fbp.feedback_grad(params, feedback, xs, ys, rule="fa")
    jitted = jax.jit(lambda p, f: fbp.feedback_grad(p, f, xs, ys, rule="fa"))(params, feedback)
    assert_tree_close(jitted, direct, rtol=1e-12)
    per_example = jax.vmap(
        lambda x, y: fbp.feedback_grad(params, feedback, x[None], y[None], rule="fa")
    )(xs, ys)
    assert_tree_close(jax.tree.map(lambda g: g.mean(axis=0), per_example), direct, rtol=1e-12)
    low = jax.tree.map(lambda a: a.astype(jnp.float32), (params, feedback, xs, ys))
    fast = fbp.feedback_grad(*low, rule="fa")
    assert_tree_close(fast, jax.tree.map(lambda a: a.astype(jnp.float32), direct), rtol=1e-4)


@pytest.mark.parametrize(
    "call,error,message",
    [
        (
            lambda p, f, x, y: fbp.feedback_grad(p, f[:1], x, y, rule="fa"),
            ValueError,
            r"Expected 2 feedback matrices for rule 'fa' \(one per hidden layer\), got 1",
        ),
        (
            lambda p, f, x, y: fbp.feedback_grad(p, [f[0].T, f[1]], x, y, rule="fa"),
            ValueError,
            r"hidden layer 1 to have shape \(4, 7\) \(w\^2's for rule 'fa'\), got \(7, 4\)",
        ),
        (
            lambda p, f, x, y: fbp.feedback_grad(p, f, x, y, rule="dfa"),
            ValueError,
            r"hidden layer 1 to have shape \(3, 7\) \(\(n_L, n_l\) for rule 'dfa'\)",
        ),
        (
            lambda p, f, x, y: fbp.feedback_grad(p, None, x, y, rule="kp"),
            ValueError,
            r"Expected 2 feedback matrices for rule 'kp'.*got NoneType",
        ),
        (
            lambda p, f, x, y: fbp.feedback_grad(p, f, x, y, rule="backprop"),
            ValueError,
            r"Unknown rule 'backprop'; expected one of \['fa', 'dfa', 'sign', 'kp'\]",
        ),
        (
            lambda p, f, x, y: fbp.init_feedback(0, p, "fa"),
            TypeError,
            r"key to be a jax.random key",
        ),
        (
            lambda p, f, x, y: fbp.feedback_step(p, f, x, y, -1.0, rule="fa"),
            ValueError,
            r"eta to be a finite number > 0",
        ),
        (
            lambda p, f, x, y: fbp.feedback_step(p, f, x, y, 0.1, rule="kp", weight_decay=-1),
            ValueError,
            r"weight_decay to be a finite number >= 0",
        ),
    ],
)
def test_bad_feedback_input(call, error, message):
    params, xs, ys = random_problem(980, batch=3, sizes=DEPTHS[3])
    feedback = fbp.init_feedback(jax.random.key(0), params, "fa")
    with pytest.raises(error, match=message):
        call(params, feedback, xs, ys)


def test_cli_trains_a_rule_and_saves_its_feedback(tmp_path, capsys):
    save, history = tmp_path / "p.npz", tmp_path / "h.json"
    argv = ["train", "--rule", "kp", "--weight-decay", "1e-3", "--epochs", "2", "--eta", "0.5"]
    argv += ["--feedback-scale", "0.3"]
    argv += [
        "--init",
        "scaled_normal",
        "--no-progress",
        "--save",
        str(save),
        "--json",
        str(history),
    ]
    assert main(argv) == 0
    feedback = fbp.load_feedback(save)
    params, meta = fbp.load_params(save)
    assert meta["rule"] == "kp" and [b.shape for b in feedback] == [params[1].w.shape]
    rows = __import__("json").loads(history.read_text())["history"]
    assert len(rows[0]["update_angles"]) == 2 and len(rows[0]["feedback_angles"]) == 1
    assert rows[-1]["feedback_angles"][0] < rows[0]["feedback_angles"][0]  # B turns towards w
    assert main(["train", "--rule", "fa", "--optimizer", "adam"]) == 2
    assert "--rule fa trains with plain SGD" in capsys.readouterr().err


def test_diagnose_alignment_plots_the_angles(tmp_path, capsys):
    plot = tmp_path / "alignment.svg"
    argv = ["diagnose", "--alignment", "--hidden", "20", "--epochs", "2", "--eta", "0.5"]
    assert main(argv + ["--probe", "200", "--no-progress", "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    assert "fa [64, 20, 10] epoch   2: update vs gradient" in out and "kp [64, 20, 10]" in out
    assert plot.read_bytes().startswith(b"<?xml")

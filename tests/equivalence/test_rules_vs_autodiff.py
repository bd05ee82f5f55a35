"""Every learning rule (fa, dfa, sign, kp, usf, brsf, frsf, bp) for every activation
and cost, against `jax.grad` of a network whose layers send the error back through B
(`jax.custom_vjp`), in float64 to 1e-10."""

import functools

import jax
import jax.numpy as jnp
import pytest
from conftest import COMBOS, assert_tree_close, combo_params, network, random_problem

import functional_bp as fbp
from functional_bp import feedback

DEPTHS = {2: [6, 5, 3], 3: [5, 7, 4, 3], 4: [4, 6, 5, 4, 2]}


def _reference(params, matrices, xs, ys, net, rule):
    """The rule's update from jax.grad: each hidden layer's input takes its gradient
    through B (fa, sign) with a custom VJP; dfa injects (B^l)^T delta^L at z^l."""
    form = net.cost.closed_form(net.output_activation)
    num_layers = len(params)

    def cost(z_L, a_L, y):
        return form.fn(z_L, y) if form is not None else net.cost.fn(a_L, y)

    def act(l):
        return net.output_activation if l == num_layers else net.activation

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


# Every rule, and sign with another scale: (rule, the gradient's scale).
CASES = (
    ("fa", None),
    ("dfa", None),
    ("sign", None),
    ("sign", 0.3),
    ("kp", None),
    ("usf", None),
    ("usf", 0.7),
    ("brsf", None),
    ("frsf", None),
    ("bp", None),
)


def _reference_matrices(params, feedback_matrices, rule, scale, key):
    """B^l of each rule, built here from its definition (brsf's draw is the library's,
    its magnitudes and signs are checked in tests/test_feedback.py)."""
    weights = [l.w for l in params[1:]]
    xavier = [jnp.sqrt(2.0 / (w.shape[0] + w.shape[1])) for w in weights]
    if rule in ("fa", "dfa", "kp"):
        return feedback_matrices
    if rule == "bp":
        return weights
    if rule == "sign":
        return [(1.0 if scale is None else scale) * jnp.sign(w) for w in weights]
    if rule == "usf":
        return [(s if scale is None else scale) * jnp.sign(w) for s, w in zip(xavier, weights)]
    if rule == "frsf":
        return [jnp.abs(r) * jnp.sign(w) for r, w in zip(feedback_matrices, weights)]
    return feedback.feedback_matrices(params, None, rule="brsf", key=key)


@functools.partial(jax.jit, static_argnames="net")
def library_and_reference(params, feedbacks, xs, ys, key, net):
    """Every rule's update, from the library and the reference, in one program."""
    results = []
    for (rule, scale), matrices in zip(CASES, feedbacks):
        options = dict(scale=scale, key=key if rule == "brsf" else None)
        reference_matrices = _reference_matrices(params, matrices, rule, scale, key)
        got = feedback.feedback_grad(params, matrices, xs, ys, rule=rule, net=net, **options)
        results.append((got, _reference(params, reference_matrices, xs, ys, net, rule)))
    results.append(
        (
            feedback.feedback_grad(params, None, xs, ys, rule="bp", net=net),
            fbp.grad(params, xs, ys, net=net),
        )
    )
    return results


@pytest.mark.parametrize("combo", combo_params(COMBOS))
def test_every_activation_and_cost(combo):
    seed = COMBOS.index(combo)
    params, xs, ys = random_problem(920 + seed, batch=4, sizes=DEPTHS[2 + seed % 3])
    feedbacks = [feedback.init_feedback(jax.random.key(seed), params, rule) for rule, _ in CASES]
    key = jax.random.key(1000 + seed)
    results = library_and_reference(params, feedbacks, xs, ys, key, network(combo))
    assert len(results) == len(CASES) + 1
    for got, want in results:
        assert_tree_close(got, want, rtol=1e-10, atol=1e-15)
    # bp is backprop: `grad` to float64 rounding.
    assert_tree_close(results[-1][0], results[-1][1], rtol=1e-13, atol=1e-15)

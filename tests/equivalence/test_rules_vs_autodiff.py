"""Feedback alignment, direct feedback alignment and sign symmetry for every activation
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


RULES = ("fa", "dfa", "sign")


@functools.partial(jax.jit, static_argnames="net")
def library_and_reference(params, feedbacks, xs, ys, net):
    """Every rule's update, from the library and the reference, in one program."""
    results = []
    for rule, matrices in zip(RULES, feedbacks):
        reference_matrices = [jnp.sign(l.w) for l in params[1:]] if rule == "sign" else matrices
        got = feedback.feedback_grad(params, matrices, xs, ys, rule=rule, net=net)
        results.append((got, _reference(params, reference_matrices, xs, ys, net, rule)))
    return results


@pytest.mark.parametrize("combo", combo_params(COMBOS))
def test_every_activation_and_cost(combo):
    seed = COMBOS.index(combo)
    params, xs, ys = random_problem(920 + seed, batch=4, sizes=DEPTHS[2 + seed % 3])
    feedbacks = [feedback.init_feedback(jax.random.key(seed), params, rule) for rule in RULES]
    results = library_and_reference(params, feedbacks, xs, ys, network(combo))
    assert len(results) == len(RULES)
    for got, want in results:
        assert_tree_close(got, want, rtol=1e-10, atol=1e-15)

"""`Network`: one frozen, hashable value for the activations and the cost; names resolved
and checked once, at construction; the user's objects checked against their contract
(by `core.check`, at trace time, before any maths)."""

import dataclasses

import jax
import jax.numpy as jnp
import optax
import pytest
from conftest import random_problem

import functional_bp as fbp
from functional_bp import (
    activations,
    core,
    costs,
    curvature,
    diagnostics,
    feedback,
    per_example,
    statistics,
    training,
)

# The value.


def test_names_resolve_to_the_objects_at_construction():
    net = fbp.Network("relu", "softmax", "log_likelihood")
    assert net.activation is activations.RELU
    assert net.output_activation is activations.SOFTMAX
    assert net.cost is costs.LOG_LIKELIHOOD
    default = fbp.Network()
    assert (default.activation, default.output_activation) == (activations.SIGMOID,) * 2
    assert default.cost is costs.QUADRATIC
    # output_activation None means the hidden activation.
    assert fbp.Network("tanh").output_activation is activations.TANH


def test_equal_and_hashed_by_the_resolved_objects():
    by_name = fbp.Network("sigmoid")
    by_object = fbp.Network(activations.SIGMOID)
    spelled_out = fbp.Network("sigmoid", "sigmoid", "quadratic")
    assert by_name == by_object == spelled_out
    assert hash(by_name) == hash(by_object) == hash(spelled_out)
    assert len({by_name, by_object, spelled_out}) == 1
    assert by_name != fbp.Network("sigmoid", cost="squared_error")
    assert by_name != fbp.Network("tanh")
    assert by_name != fbp.Network("sigmoid", "softmax")
    assert by_name != "sigmoid"
    # The user's objects: equal when they are the same object.
    softplus = fbp.Activation(jax.nn.softplus, jax.nn.sigmoid, name="softplus")
    assert fbp.Network(softplus) == fbp.Network(softplus)
    assert fbp.Network(softplus) != fbp.Network(softplus._replace(name="other"))


def test_frozen():
    net = fbp.Network()
    with pytest.raises(dataclasses.FrozenInstanceError):
        net.cost = "cross_entropy"
    with pytest.raises(dataclasses.FrozenInstanceError):
        net.activation = activations.TANH
    assert net == fbp.Network()


def test_dataclasses_replace_builds_a_checked_network():
    net = fbp.Network("sigmoid")
    other = dataclasses.replace(net, cost="cross_entropy")
    assert other == fbp.Network("sigmoid", "sigmoid", "cross_entropy")
    assert other.cost is costs.CROSS_ENTROPY and net.cost is costs.QUADRATIC
    # A replaced field is resolved and checked like a constructed one.
    assert dataclasses.replace(net, output_activation="softmax").output_activation is (
        activations.SOFTMAX
    )
    with pytest.raises(ValueError, match=r"needs outputs in \(0, 1\).*'identity'"):
        dataclasses.replace(other, output_activation="identity")
    with pytest.raises(ValueError, match="Unknown activation 'gelu'"):
        dataclasses.replace(net, activation="gelu")


def test_repr_names_the_resolved_objects():
    assert repr(fbp.Network()) == (
        "Network(activation='sigmoid', output_activation='sigmoid', cost='quadratic')"
    )
    net = fbp.Network("relu", "softmax", "log_likelihood")
    assert repr(net) == (
        "Network(activation='relu', output_activation='softmax', cost='log_likelihood')"
    )
    assert eval(repr(net), {"Network": fbp.Network}) == net


def test_an_equal_network_does_not_compile_again():
    params, xs, ys = random_problem(10, sizes=[4, 3, 2], batch=3)
    fbp.grad(params, xs, ys, net=fbp.Network("tanh", cost="squared_error"))
    compiled = fbp.grad._cache_size()
    equal = fbp.Network(activations.TANH, activations.TANH, costs.SQUARED_ERROR)
    fbp.grad(params, xs, ys, net=equal)
    fbp.grad(params, xs, ys, net=dataclasses.replace(equal, cost="squared_error"))
    assert fbp.grad._cache_size() == compiled
    # Another network is another program, which shows the count can move.
    fbp.grad(params, xs, ys, net=fbp.Network("relu", cost="squared_error"))
    assert fbp.grad._cache_size() == compiled + 1


# Bad construction: unknown names, wrong types, a cost the output activation leaves.


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (dict(activation="swish"), ValueError, r"Unknown activation 'swish'.*softmax"),
        (dict(activation="gelu"), ValueError, r"gelu"),
        (dict(output_activation="gelu"), ValueError, r"Unknown output_activation 'gelu'"),
        (dict(cost="hinge"), ValueError, r"Unknown cost 'hinge'.*cross_entropy"),
        (dict(activation="relu", cost="cross_entropy"), ValueError, r"output_activation"),
        (
            dict(activation="relu", cost="cross_entropy"),
            ValueError,
            r"cross_entropy.*\(0, 1\).*'relu'",
        ),
        (
            dict(activation="tanh", cost="log_likelihood"),
            ValueError,
            r"'log_likelihood' needs outputs in \(0, 1\).*'softmax'",
        ),
        (
            dict(output_activation="identity", cost="cross_entropy"),
            ValueError,
            r"'cross_entropy' needs outputs in \(0, 1\).*'identity'.*'sigmoid'",
        ),
        (
            dict(output_activation="softmax", cost="cross_entropy"),
            ValueError,
            r"'cross_entropy' after a softmax.*cost='log_likelihood'",
        ),
        (dict(activation=3), TypeError, r"Expected activation to be an activation name.*int 3"),
        (dict(activation=["relu"]), TypeError, r"Expected activation to be .*list \['relu'\]"),
        (dict(output_activation={}), TypeError, r"Expected output_activation to be .*dict"),
        (dict(activation=jnp.tanh), TypeError, r"activation to be .*Activation\(fn"),
        (dict(cost=None), TypeError, r"Expected cost to be a cost name.*NoneType None"),
        (dict(cost=["quadratic"]), TypeError, r"Expected cost to be .*list"),
        (dict(cost=lambda a, y: a), TypeError, r"Expected cost .*Cost\(fn, derivative\)"),
        (
            dict(activation=fbp.Activation(jnp.tanh)),
            TypeError,
            r"Activation 'custom' to have a callable derivative.*or vjp",
        ),
        (
            dict(activation=fbp.Activation("tanh", jnp.ones_like)),
            TypeError,
            r"Activation 'custom' fn to be callable",
        ),
        (
            dict(cost=fbp.Cost(lambda a, y: a, None, "half")),
            TypeError,
            r"Cost 'half' fn and derivative to be callable",
        ),
    ],
)
def test_bad_construction(kwargs, error, match):
    with pytest.raises(error, match=match):
        fbp.Network(**kwargs)


KEY = jax.random.key(0)
PARAMS, XS, YS = random_problem(11, sizes=[4, 3, 2], batch=4)
SGD = optax.sgd(0.1)
# Hashable values: an unhashable one (a dict) is refused by jax.jit itself, as a
# non-hashable static argument, before the library sees it.
NOT_NETWORKS = {
    "str": "tanh",
    "tuple": ("tanh", None, "quadratic"),
    "Activation": activations.TANH,
    "None": None,
}
CALLS = {
    "grad": lambda net: fbp.grad(PARAMS, XS, YS, net=net),
    "loss": lambda net: fbp.loss(PARAMS, XS, YS, net=net),
    "forward": lambda net: fbp.forward(PARAMS, XS, net=net),
    "mlp": lambda net: fbp.mlp(PARAMS, XS, net=net),
    "backprop": lambda net: fbp.backprop(PARAMS, XS[0], YS[0], net=net),
    "sgd_step": lambda net: fbp.sgd_step(PARAMS, XS, YS, 0.1, net=net),
    "train_epoch": lambda net: fbp.train_epoch(KEY, PARAMS, XS, YS, 0.1, batch_size=2, net=net),
    "train_step": lambda net: training.train_step(
        None, SGD, PARAMS, SGD.init(PARAMS), XS, YS, net=net
    ),
    "per_example_grads": lambda net: per_example.per_example_grads(PARAMS, XS, YS, net=net),
    "batch_dot": lambda net: statistics.batch_dot(PARAMS, XS, YS, net=net),
    "diag_ggn": lambda net: curvature.diag_ggn(PARAMS, XS, YS, net=net),
    "feedback_grad": lambda net: feedback.feedback_grad(PARAMS, None, XS, YS, rule="sign", net=net),
    "total_cost": lambda net: diagnostics.total_cost(PARAMS, XS, YS, net=net),
    "check_gradients": lambda net: fbp.check_gradients(PARAMS, XS, YS, net=net),
    "core.check": lambda net: core.check(net, PARAMS, XS, YS),
}


@pytest.mark.parametrize("call", CALLS.values(), ids=CALLS.keys())
def test_a_net_that_is_not_a_network_is_refused(call):
    for value in NOT_NETWORKS.values():
        with pytest.raises(TypeError, match=r"Expected net to be a functional_bp.Network, got"):
            call(value)


# The user's objects against their contract: one example in, the right shapes out.

GOOD = [fbp.Layer(jnp.ones(s, jnp.float32), jnp.ones(s[0], jnp.float32)) for s in [(4, 3), (2, 4)]]
X, Y = jnp.ones((5, 3)), jnp.ones((5, 2))
SCALAR_DERIVATIVE = fbp.Activation(jnp.tanh, lambda z: jnp.sum(1 - jnp.tanh(z) ** 2), name="bad")


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (
            dict(activation=SCALAR_DERIVATIVE),
            r"Activation 'bad' of layer 1: derivative returned shape \(\) for one example "
            r"\(shapes \(4,\)\); expected \(4,\)",
        ),
        (
            dict(activation=fbp.Activation(lambda z: jnp.concatenate([z, z]), jnp.ones_like)),
            r"Activation 'custom' of layer 1: fn returned shape \(8,\).*expected \(4,\)",
        ),
        (
            dict(output_activation=fbp.Activation(jnp.tanh, vjp=lambda z, a, g: jnp.dot(g, a))),
            r"Activation 'custom' of layer 2: vjp\(z, a, g\) returned shape \(\).*expected \(2,\)",
        ),
        (
            dict(cost=fbp.Cost(lambda a, y: (a - y) ** 2, lambda a, y: 2 * (a - y), "sq")),
            r"Cost 'sq': fn returned shape \(2,\) for one example \(shapes \(2,\), \(2,\)\); "
            r"expected \(\)",
        ),
        (
            dict(cost=fbp.Cost(lambda a, y: jnp.sum(a - y), lambda a, y: jnp.sum(a - y), "s")),
            r"Cost 's': derivative returned shape \(\).*expected \(2,\)",
        ),
        (
            dict(cost=fbp.Cost(lambda a, y: jnp.sum(a @ jnp.ones((3, 3))), lambda a, y: a, "m")),
            r"Cost 'm': fn failed on one example \(shapes \(2,\), \(2,\)\)",
        ),
        (
            dict(activation=fbp.Activation(lambda z: z.sum(), lambda z: z, name="summing")),
            r"Activation 'summing' of layer 1: fn returned shape \(\)",
        ),
        (
            dict(cost=fbp.Cost(lambda a, y: a - y, lambda a, y: a - y, name="vector_cost")),
            r"Cost 'vector_cost': fn returned shape \(2,\)",
        ),
    ],
)
def test_user_objects_are_checked_against_their_contract(kwargs, match, monkeypatch):
    def must_not_run(*args, **kwargs):
        raise AssertionError("computation started before validation")

    monkeypatch.setattr(core, "forward_pass", must_not_run)
    net = fbp.Network(**kwargs)  # the contract is checked where the shapes are known
    with pytest.raises(ValueError, match=match):
        fbp.grad(GOOD, X, Y, net=net)
    with pytest.raises(ValueError, match=match):
        core.check(net, GOOD, X, Y)

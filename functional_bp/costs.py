"""Cost functions C(a, y) of one example and their gradients dC/da, by name or your own.

The backward pass starts from dC/da^L (001 notes eq 4; the chapter's dC/dy in eq 84) and
turns it into the output error delta^L = dC/da^L * sigma'(z^L) (eqs 90-91).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

Array = jax.Array


class Cost(NamedTuple):
    """A per-example cost C(a, y) and its gradient with respect to the output a.

    Pass one anywhere a ``cost=`` name is accepted to use your own::

        huber = Cost(lambda a, y: jnp.sum(optax.huber_loss(a, y)),
                     lambda a, y: jnp.clip(a - y, -1.0, 1.0))

    Attributes:
      fn: C(a, y), a scalar for one example (summed over output neurons j).
      derivative: dC/da, elementwise, same shape as a.
      sigmoid_fn: optional C written in terms of z for a sigmoid output layer,
        where a = sigma(z); used instead of ``fn`` for stability when present.
      sigmoid_delta: optional closed form of delta^L = dC/dz^L for a sigmoid
        output layer, called as ``sigmoid_delta(z, a, y)``.
      name: shown in messages and tables.
    """

    fn: Callable[[Array, Array], Array]
    derivative: Callable[[Array, Array], Array]
    sigmoid_fn: Optional[Callable[[Array, Array], Array]] = None
    sigmoid_delta: Optional[Callable[[Array, Array, Array], Array]] = None
    name: str = "custom"


# network.py's QuadraticCost: C = 1/2 ||a - y||^2, dC/da = a - y.
QUADRATIC = Cost(
    lambda a, y: 0.5 * jnp.sum((a - y) ** 2),
    lambda a, y: a - y,
    name="quadratic",
)

# The 001 notes: C_0 = sum_j (a_j - y_j)^2, dC/da = 2 (a - y) (eq 4).
SQUARED_ERROR = Cost(
    lambda a, y: jnp.sum((a - y) ** 2),
    lambda a, y: 2 * (a - y),
    name="squared_error",
)


def _cross_entropy(a: Array, y: Array) -> Array:
    return -jnp.sum(y * jnp.log(a) + (1 - y) * jnp.log1p(-a))


def _cross_entropy_sigmoid(z: Array, y: Array) -> Array:
    # -[y ln sigma(z) + (1 - y) ln(1 - sigma(z))] = y softplus(-z) + (1 - y) softplus(z):
    # finite for z = +-1000, where ln(a) of the rounded a would be -inf.
    return jnp.sum(y * jax.nn.softplus(-z) + (1 - y) * jax.nn.softplus(z))


# network2.py's CrossEntropyCost. With a sigmoid output layer sigma'(z) cancels the
# 1/(a (1 - a)) of dC/da, so delta^L = a - y (network2.py's CrossEntropyCost.delta).
CROSS_ENTROPY = Cost(
    _cross_entropy,
    lambda a, y: (a - y) / (a * (1 - a)),
    sigmoid_fn=_cross_entropy_sigmoid,
    sigmoid_delta=lambda z, a, y: a - y,
    name="cross_entropy",
)

COSTS: dict[str, Cost] = {c.name: c for c in (QUADRATIC, SQUARED_ERROR, CROSS_ENTROPY)}

# Costs defined only for outputs in (0, 1), and the built-in activations that leave it.
_NEEDS_UNIT_INTERVAL = {"cross_entropy"}
_LEAVE_UNIT_INTERVAL = {"tanh", "relu", "identity"}


def get_cost(cost: str | Cost) -> Cost:
    """Looks a cost up by name, or returns the given `Cost`."""
    if isinstance(cost, Cost):
        if not (callable(cost.fn) and callable(cost.derivative)):
            raise TypeError("Expected Cost.fn and Cost.derivative to be callable")
        return cost
    if isinstance(cost, str) and cost in COSTS:
        return COSTS[cost]
    raise ValueError(
        f"Unknown cost {cost!r}; expected one of {sorted(COSTS)} or a Cost(fn, derivative)"
    )


def check_compatible(cost: Cost, output_activation_name: str) -> None:
    """Rejects a built-in output activation whose range the cost is not defined on."""
    if cost.name in _NEEDS_UNIT_INTERVAL and output_activation_name in _LEAVE_UNIT_INTERVAL:
        raise ValueError(
            f"cost {cost.name!r} needs outputs in (0, 1), but the output layer's "
            f"activation is {output_activation_name!r}; pass output_activation='sigmoid'"
        )

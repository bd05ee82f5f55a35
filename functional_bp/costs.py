"""Cost functions C(a, y) of one example and their gradients dC/da, by name or your own.

The backward pass starts from dC/da^L (001 notes eq 4; the chapter's dC/dy in eq 84) and
turns it into the output error delta^L = dC/da^L ⊙ sigma'(z^L) (eqs 90-91).

Every function of a `Cost` is called on exactly one example: a and y of shape (n_out,).
The library adds the batch with `jax.vmap`, so a cost may reduce over the output
neurons (a norm, a log-sum-exp) and still get its exact gradient.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from functional_bp.activations import SIGMOID, SOFTMAX, Activation

Array = jax.Array

__all__ = [
    "COSTS",
    "CROSS_ENTROPY",
    "LOG_LIKELIHOOD",
    "QUADRATIC",
    "SQUARED_ERROR",
    "ClosedForm",
    "Cost",
    "get_cost",
]


class ClosedForm(NamedTuple):
    """C and delta^L written in z^L for one output activation.

    Where sigma'(z) cancels against dC/da (cross-entropy after a sigmoid: delta^L =
    a - y), the closed form gives the same values without the 0/0 of dC/da ⊙ sigma'(z)
    when sigma(z) rounds to 0 or 1, and C from z without ln(0).

    Attributes:
      activation: the output `Activation` it applies to (compared with ``==``).
      fn: C as a function of (z, y), a scalar for one example.
      delta: delta^L = dC/dz^L as a function of (z, a, y), shape (n_out,).
      sample: optional; ``sample(key, z)`` draws a target y from the distribution whose
        negative log-likelihood C is (for `diag_ggn_mc`).

    Examples:
      >>> form = fbp.costs.CROSS_ENTROPY.closed_form(fbp.activations.SIGMOID)
      >>> z, y = jnp.zeros(2), jnp.array([0.0, 1.0])
      >>> form.activation.name, form.delta(z, jax.nn.sigmoid(z), y).shape
      ('sigmoid', (2,))
    """

    activation: Activation
    fn: Callable[[Array, Array], Array]
    delta: Callable[[Array, Array, Array], Array]
    sample: Optional[Callable[[Array, Array], Array]] = None


class Cost(NamedTuple):
    """A per-example cost C(a, y) and its gradient with respect to the output a.

    Pass one anywhere a ``cost=`` name is accepted to use your own::

        huber = Cost(lambda a, y: jnp.sum(optax.huber_loss(a, y)),
                     lambda a, y: jnp.clip(a - y, -1.0, 1.0))

    Attributes:
      fn: C(a, y) for one example: a and y of shape (n_out,), a scalar result.
      derivative: dC/da for one example, shape (n_out,). It may reduce over the
        output neurons (``(a - y) / jnp.linalg.norm(a - y)``).
      name: shown in messages and tables.
      closed_forms: `ClosedForm`s for particular output activations, used instead of
        ``fn`` and ``derivative`` when the output layer's activation is one of them.
      sample: optional; ``sample(key, a)`` draws a target y from the distribution whose
        negative log-likelihood C is, up to a constant (for `diag_ggn_mc`): then
        E[dC/da dC/da^T] is the Hessian of C in a.

    Examples:
      >>> l1 = Cost(lambda a, y: jnp.sum(jnp.abs(a - y)), lambda a, y: jnp.sign(a - y), "l1")
      >>> l1.derivative(jnp.array([2.0, -1.0]), jnp.zeros(2)).shape
      (2,)
    """

    fn: Callable[[Array, Array], Array]
    derivative: Callable[[Array, Array], Array]
    name: str = "custom"
    closed_forms: tuple[ClosedForm, ...] = ()
    sample: Optional[Callable[[Array, Array], Array]] = None

    def closed_form(self, output_activation: Activation) -> Optional[ClosedForm]:
        """The `ClosedForm` for this output activation, if the cost has one.

        Examples:
          >>> fbp.costs.QUADRATIC.closed_form(fbp.activations.SIGMOID) is None
          True
        """
        return next((f for f in self.closed_forms if f.activation == output_activation), None)


# network.py's QuadraticCost: C = 1/2 ||a - y||^2, dC/da = a - y; the negative
# log-likelihood of y ~ N(a, I).
QUADRATIC = Cost(
    lambda a, y: 0.5 * jnp.sum((a - y) ** 2),
    lambda a, y: a - y,
    "quadratic",
    sample=lambda key, a: a + jax.random.normal(key, a.shape, a.dtype),
)
r"""network.py's C = 1/2 ||a - y||^2, dC/da = a - y:

\[ C = \tfrac{1}{2} \lVert a - y \rVert^2, \qquad \frac{\partial C}{\partial a} = a - y \]
"""

# The 001 notes: C_0 = sum_j (a_j - y_j)^2, dC/da = 2 (a - y) (eq 4); y ~ N(a, I/2).
SQUARED_ERROR = Cost(
    lambda a, y: jnp.sum((a - y) ** 2),
    lambda a, y: 2 * (a - y),
    "squared_error",
    sample=lambda key, a: a + jax.random.normal(key, a.shape, a.dtype) / jnp.sqrt(2),
)
r"""The 001 notes' C = sum_j (a_j - y_j)^2, dC/da = 2 (a - y) (eq 4):

\[ C = \sum_j (a_j - y_j)^2, \qquad \frac{\partial C}{\partial a} = 2\,(a - y) \]
"""


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
    "cross_entropy",
    (
        ClosedForm(
            SIGMOID,
            _cross_entropy_sigmoid,
            lambda z, a, y: a - y,
            sample=lambda key, z: jax.random.bernoulli(key, jax.nn.sigmoid(z)).astype(z.dtype),
        ),
    ),
)
r"""network2.py's C = -sum_j [y_j ln a_j + (1 - y_j) ln(1 - a_j)], dC/da = (a - y) /
(a (1 - a)); after a sigmoid, delta^L = a - y:

\[ C = -\sum_j \left[ y_j \ln a_j + (1 - y_j) \ln(1 - a_j) \right], \qquad
    \frac{\partial C}{\partial a} = \frac{a - y}{a\,(1 - a)} \]

and after a sigmoid output layer \( \delta^L = a - y \).
"""

# network3.py's log-likelihood: C = -sum_j y_j ln a_j, dC/da = -y / a.
# After a softmax, delta^L = a sum_j y_j - y (a - y for a one-hot y), and C from the
# log-softmax of z; after a sigmoid, sigma' = a (1 - a) gives delta^L = y (a - 1) and
# C = sum_j y_j softplus(-z_j). Both are finite at |z| = 1000 in float32.
LOG_LIKELIHOOD = Cost(
    lambda a, y: -jnp.sum(y * jnp.log(a)),
    lambda a, y: -y / a,
    "log_likelihood",
    (
        ClosedForm(
            SOFTMAX,
            lambda z, y: -jnp.sum(y * jax.nn.log_softmax(z)),
            lambda z, a, y: a * jnp.sum(y) - y,
            sample=lambda key, z: jax.nn.one_hot(
                jax.random.categorical(key, z), z.shape[-1], dtype=z.dtype
            ),
        ),
        ClosedForm(
            SIGMOID,
            lambda z, y: jnp.sum(y * jax.nn.softplus(-z)),
            lambda z, a, y: y * (a - 1),
        ),
    ),
)
r"""network3.py's C = -sum_j y_j ln a_j, dC/da = -y / a; after a softmax, delta^L = a - y
for one-hot y:

\[ C = -\sum_j y_j \ln a_j, \qquad \frac{\partial C}{\partial a} = -\frac{y}{a} \]

and after a softmax output layer \( \delta^L = a - y \) for a one-hot \( y \).
"""

COSTS: dict[str, Cost] = {
    c.name: c for c in (QUADRATIC, SQUARED_ERROR, CROSS_ENTROPY, LOG_LIKELIHOOD)
}
"""The built-in costs by name."""

# Costs defined only for outputs in (0, 1), and the built-in activations that leave it.
_NEEDS_UNIT_INTERVAL = {"cross_entropy", "log_likelihood"}
_LEAVE_UNIT_INTERVAL = {"tanh", "relu", "identity"}


def get_cost(cost: str | Cost, name: str = "cost") -> Cost:
    """Looks a cost up by name, or returns the given `Cost`.

    Examples:
      >>> fbp.costs.get_cost("quadratic") is fbp.costs.QUADRATIC
      True
      >>> fbp.costs.get_cost(Cost(lambda a, y: jnp.sum(a - y), lambda a, y: a)).name
      'custom'
    """
    if isinstance(cost, Cost):
        if not (callable(cost.fn) and callable(cost.derivative)):
            raise TypeError(f"Expected Cost {cost.name!r} fn and derivative to be callable")
        return cost
    if isinstance(cost, str) and cost in COSTS:
        return COSTS[cost]
    if not isinstance(cost, str):
        raise TypeError(
            f"Expected {name} to be a cost name {sorted(COSTS)} or a Cost(fn, derivative), "
            f"got {type(cost).__name__} {cost!r} instead"
        )
    raise ValueError(
        f"Unknown {name} {cost!r}; expected one of {sorted(COSTS)} or a Cost(fn, derivative)"
    )


def check_compatible(cost: Cost, output_activation_name: str) -> None:
    """Rejects a built-in output activation whose range the cost is not defined on, and
    softmax with cross-entropy.

    Cross-entropy treats each output neuron as its own Bernoulli (network2.py, after a
    sigmoid); after a softmax the outputs are one distribution, whose cost is the
    log-likelihood (network3.py), and dC/da = (a - y) / (a (1 - a)) meets sigma' at 0/0 as
    soon as one output saturates: NaN in float32 at moderate weights.
    """
    if cost is CROSS_ENTROPY and output_activation_name == "softmax":
        raise ValueError(
            "cost 'cross_entropy' after a softmax output layer is not supported (it is NaN "
            "once an output saturates); a softmax's cost is cost='log_likelihood' "
            "(network3.py), or use output_activation='sigmoid' with cross-entropy"
        )
    if cost.name in _NEEDS_UNIT_INTERVAL and output_activation_name in _LEAVE_UNIT_INTERVAL:
        raise ValueError(
            f"cost {cost.name!r} needs outputs in (0, 1), but the output layer's "
            f"activation is {output_activation_name!r}; pass output_activation='sigmoid'"
            + (" or 'softmax'" if cost.name == "log_likelihood" else "")
        )

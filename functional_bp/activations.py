"""Activation functions sigma and their derivatives sigma', by name or your own.

Each layer computes a^l = sigma(z^l) (001 notes eq 1; the chapter's a = sigma(h), eq 75)
and the backward pass multiplies by sigma'(z^l) (eqs 5, 90-91, 96). An `Activation`
carries both, so the equation code never differentiates anything itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array


class Activation(NamedTuple):
    """An activation sigma and its derivative sigma'.

    Pass one anywhere an ``activation=`` name is accepted to use your own::

        softplus = Activation(jax.nn.softplus, jax.nn.sigmoid)

    Attributes:
      fn: sigma, applied elementwise to the weighted input z.
      derivative: sigma', elementwise. It receives z, or a = sigma(z) when
        ``derivative_of_output`` is true.
      derivative_of_output: whether ``derivative`` is written in terms of the
        output a instead of z. network.py's sigmoid_prime recomputes sigma(z);
        sigma'(z) = a (1 - a) reuses the stored activation and saves that work.
      name: shown in messages and tables.
    """

    fn: Callable[[Array], Array]
    derivative: Callable[[Array], Array]
    derivative_of_output: bool = False
    name: str = "custom"

    def prime(self, z: Array, a: Array) -> Array:
        """sigma'(z), from z or from the stored a = sigma(z)."""
        return self.derivative(a if self.derivative_of_output else z)


def _sigmoid(z: Array) -> Array:
    # jax.nn.sigmoid is the stable logistic: finite for z = +-1000 in float32.
    return jax.nn.sigmoid(z)


SIGMOID = Activation(_sigmoid, lambda a: a * (1 - a), True, "sigmoid")
TANH = Activation(jnp.tanh, lambda a: 1 - a * a, True, "tanh")
# sigma'(0) is taken as 0 for relu, as jax.grad does.
RELU = Activation(jax.nn.relu, lambda a: (a > 0).astype(a.dtype), True, "relu")
IDENTITY = Activation(lambda z: z, jnp.ones_like, False, "identity")

ACTIVATIONS: dict[str, Activation] = {act.name: act for act in (SIGMOID, TANH, RELU, IDENTITY)}


def get_activation(activation: str | Activation) -> Activation:
    """Looks an activation up by name, or returns the given `Activation`."""
    if isinstance(activation, Activation):
        if not (callable(activation.fn) and callable(activation.derivative)):
            raise TypeError("Expected Activation.fn and Activation.derivative to be callable")
        return activation
    if isinstance(activation, str) and activation in ACTIVATIONS:
        return ACTIVATIONS[activation]
    raise ValueError(
        f"Unknown activation {activation!r}; expected one of {sorted(ACTIVATIONS)} "
        "or an Activation(fn, derivative)"
    )

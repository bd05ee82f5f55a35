"""Activation functions sigma and their derivatives sigma', by name or your own.

Each layer computes a^l = sigma(z^l) (001 notes eq 1; the chapter's a = sigma(h), eq 75)
and the backward pass multiplies by sigma'(z^l) (eqs 5, 90-91, 96). An `Activation`
carries both, so the equation code never differentiates anything itself.

Every function of an `Activation` is called on exactly one example: z and a of shape
(n,). The library adds the batch with `jax.vmap`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

Array = jax.Array

__all__ = [
    "ACTIVATIONS",
    "IDENTITY",
    "RELU",
    "SIGMOID",
    "SOFTMAX",
    "TANH",
    "Activation",
    "get_activation",
]


class Activation(NamedTuple):
    """An activation sigma and its derivative, for one example.

    Pass one anywhere an ``activation=`` name is accepted to use your own::

        softplus = Activation(jax.nn.softplus, jax.nn.sigmoid)

    An elementwise sigma gives ``derivative``, sigma'(z) of shape (n,); the backward pass
    multiplies by it (the ⊙ of eqs 91 and 96). A sigma that mixes neurons, such as
    softmax, has a full Jacobian d a_j / d z_k instead; give ``vjp(z, a, g)``, which
    returns the vector-Jacobian product sum_j g_j d a_j / d z_k, of shape (n,), in place
    of that product. Both receive one example; never form the Jacobian.

    Attributes:
      fn: sigma, from z of shape (n,) to a of shape (n,).
      derivative: sigma'(z), elementwise, shape (n,). It receives z, or a = sigma(z)
        when ``derivative_of_output`` is true. None when ``vjp`` is given.
      derivative_of_output: whether ``derivative`` is written in terms of the output a
        instead of z. network.py's sigmoid_prime recomputes sigma(z); sigma'(z) =
        a (1 - a) reuses the stored activation and saves that work.
      name: shown in messages and tables.
      vjp: optional ``vjp(z, a, g)``: (J_sigma(z))^T g for a non-elementwise sigma.
        Used instead of ``derivative`` when given.
      second_derivative: optional sigma''(z), elementwise, of z, shape (n,): used by
        `functional_bp.curvature.diag_hessian`; without it JAX differentiates
        ``derivative``.

    Examples:
      >>> softplus = Activation(jax.nn.softplus, jax.nn.sigmoid, name="softplus")
      >>> z = jnp.zeros(3)
      >>> softplus.backward(z, softplus.fn(z), jnp.ones(3)).shape
      (3,)
    """

    fn: Callable[[Array], Array]
    derivative: Optional[Callable[[Array], Array]] = None
    derivative_of_output: bool = False
    name: str = "custom"
    vjp: Optional[Callable[[Array, Array, Array], Array]] = None
    second_derivative: Optional[Callable[[Array], Array]] = None

    def prime(self, z: Array, a: Array) -> Array:
        """sigma'(z), from z or from the stored a = sigma(z) (elementwise sigma only).

        Examples:
          >>> z = jnp.zeros(2)
          >>> bool(jnp.all(fbp.activations.SIGMOID.prime(z, jax.nn.sigmoid(z)) == 0.25))
          True
        """
        return self.derivative(a if self.derivative_of_output else z)

    def backward(self, z: Array, a: Array, g: Array) -> Array:
        """dC/dz from g = dC/da: the "⊙ sigma'(z)" of eqs 91 and 96, or the VJP.

        Examples:
          >>> z = jnp.zeros(4)
          >>> a = jax.nn.softmax(z)
          >>> fbp.activations.SOFTMAX.backward(z, a, jnp.ones(4)).shape
          (4,)
        """
        if self.vjp is not None:
            return self.vjp(z, a, g)
        return g * self.prime(z, a)


def _softmax_vjp(z: Array, a: Array, g: Array) -> Array:
    # d a_j / d z_k = a_j (1[j = k] - a_k), so sum_j g_j d a_j / d z_k = a_k (g_k - g . a).
    return a * (g - jnp.dot(g, a))


# jax.nn.sigmoid is the stable logistic: finite for z = +-1000 in float32.
SIGMOID = Activation(jax.nn.sigmoid, lambda a: a * (1 - a), True, "sigmoid")
r"""The logistic sigma(z) = 1 / (1 + e^{-z}) (network.py), sigma' = a (1 - a):

\[ \sigma(z) = \frac{1}{1 + e^{-z}}, \qquad \sigma'(z) = a\,(1 - a) \]
"""
TANH = Activation(jnp.tanh, lambda a: 1 - a * a, True, "tanh")
r"""tanh, sigma' = 1 - a^2:

\[ \sigma(z) = \tanh z, \qquad \sigma'(z) = 1 - a^2 \]
"""
# sigma'(0) is taken as 0 for relu, as jax.grad does.
RELU = Activation(jax.nn.relu, lambda a: (a > 0).astype(a.dtype), True, "relu")
r"""max(0, z), sigma' = 1[z > 0] (0 at z = 0, as jax.grad takes it):

\[ \sigma(z) = \max(0, z), \qquad \sigma'(z) = \mathbb{1}[z > 0] \]
"""
IDENTITY = Activation(lambda z: z, jnp.ones_like, False, "identity")
r"""The identity, sigma' = 1: a linear layer.

\[ \sigma(z) = z, \qquad \sigma'(z) = 1 \]
"""
# The book's chapter 3 (network3.py's SoftmaxLayer): a_j = e^{z_j} / sum_k e^{z_k}.
SOFTMAX = Activation(jax.nn.softmax, name="softmax", vjp=_softmax_vjp)
r"""a_j = e^{z_j} / sum_k e^{z_k} (network3.py's output layer), by its VJP: the Jacobian
d a_j / d z_k = a_j (1[j = k] - a_k) is never formed.

\[ a_j = \frac{e^{z_j}}{\sum_k e^{z_k}}, \qquad
    \frac{\partial a_j}{\partial z_k} = a_j \left( \mathbb{1}[j = k] - a_k \right) \]
"""

ACTIVATIONS: dict[str, Activation] = {
    act.name: act for act in (SIGMOID, TANH, RELU, IDENTITY, SOFTMAX)
}
"""The built-in activations by name."""


def get_activation(activation: str | Activation, name: str = "activation") -> Activation:
    """Looks an activation up by name, or returns the given `Activation`.

    Examples:
      >>> fbp.activations.get_activation("tanh") is fbp.activations.TANH
      True
      >>> fbp.activations.get_activation(Activation(jnp.sin, jnp.cos)).name
      'custom'
    """
    if isinstance(activation, Activation):
        if not callable(activation.fn):
            raise TypeError(f"Expected Activation {activation.name!r} fn to be callable")
        if not (callable(activation.derivative) or callable(activation.vjp)):
            raise TypeError(
                f"Expected Activation {activation.name!r} to have a callable derivative "
                "(elementwise sigma) or vjp (any sigma)"
            )
        return activation
    if isinstance(activation, str) and activation in ACTIVATIONS:
        return ACTIVATIONS[activation]
    if not isinstance(activation, str):
        raise TypeError(
            f"Expected {name} to be an activation name {sorted(ACTIVATIONS)} or an "
            f"Activation(fn, derivative), got {type(activation).__name__} {activation!r} instead"
        )
    raise ValueError(
        f"Unknown {name} {activation!r}; expected one of {sorted(ACTIVATIONS)} "
        "or an Activation(fn, derivative)"
    )

"""The documents' backward equations, each written once, for one example.

Chapter 10 (000) eqs 88-99 and the 001 notes eqs 3-8, in the w_jk convention of the 001
notes: ``w[j, k]`` connects neuron k of layer l-1 to neuron j of layer l. The core
(`functional_bp.core`) adds the batch with `jax.vmap` and matrix products; every gradient
the library returns goes through these functions.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from functional_bp.network import Network
from functional_bp.params import Layer

Array = jax.Array


def output_error(z_L: Array, a_L: Array, y: Array, *, net: Network = Network()) -> Array:
    r"""delta^L = dC/da^L ⊙ sigma'(z^L): chapter 10 eqs 90-91 (001 notes eqs 4-5).

    \[ \delta^L = \nabla_a C \odot \sigma'(z^L) \]

    For one example: z_L, a_L = sigma(z_L) and y of shape (n_L,); sigma is
    ``net.output_activation`` and C is ``net.cost``. A non-elementwise sigma (softmax)
    replaces "⊙ sigma'(z^L)" by its vector-Jacobian product. Where the cost has a closed
    form for the output activation (cross-entropy after a sigmoid: delta^L = a - y;
    log-likelihood after a softmax), that form is used: the same value without the 0/0
    of dC/da ⊙ sigma'(z) when sigma(z) rounds to 0 or 1.

    Examples:
      >>> z, y = jnp.zeros(2), jnp.ones(2)
      >>> delta_L = output_error(z, jax.nn.sigmoid(z), y)  # (a - y) sigma'(z)
      >>> bool(jnp.allclose(delta_L, (0.5 - 1.0) * 0.25))
      True
    """
    form = net.cost.closed_form(net.output_activation)
    if form is not None:
        return form.delta(z_L, a_L, y)
    return net.output_activation.backward(z_L, a_L, net.cost.derivative(a_L, y))


def weighted_error(w_next: Array, delta_next: Array) -> Array:
    r"""dC/da^l = (w^{l+1})^T delta^{l+1}: eq 8 of the 001 notes, dC/da_k = sum_j w_jk delta_j.

    \[ \frac{\partial C}{\partial a^l_k} = \sum_j w^{l+1}_{jk} \delta^{l+1}_j,
    \qquad \nabla_{a^l} C = (w^{l+1})^T \delta^{l+1} \]

    Written as ``delta @ w``: (w^T delta) for one example, and the same row by row (one
    matrix product) for a leading batch axis.

    Examples:
      >>> w_next, delta_next = jnp.ones((2, 3)), jnp.ones(2)
      >>> weighted_error(w_next, delta_next).shape
      (3,)
      >>> bool(jnp.allclose(weighted_error(w_next, delta_next), w_next.T @ delta_next))
      True
    """
    return delta_next @ w_next


def hidden_error(
    w_next: Array, delta_next: Array, z: Array, a: Array, *, net: Network = Network()
) -> Array:
    r"""delta^l = (w^{l+1})^T delta^{l+1} ⊙ sigma'(z^l): chapter 10 eq 96 (and eqs 92-95, 97).

    \[ \delta^l = (w^{l+1})^T \delta^{l+1} \odot \sigma'(z^l) \]

    For one example: delta_next of shape (n_{l+1},), z = z^l and a = sigma(z^l) of shape
    (n_l,); sigma is ``net.activation``. In the w_jk convention the sum of eq 8 runs over
    the neurons j of layer l+1, which is the transpose (w^{l+1})^T. Chapter 10 writes
    "w^(N) · delta^(N)" in eq 96 and prints the matrix of eq 95 with entries w_kj (and
    the index typos w_23 for w_22 and w_32); that matrix is exactly our (w^{l+1})^T. A
    non-elementwise sigma replaces "⊙ sigma'(z^l)" by its vector-Jacobian product.

    Examples:
      >>> w_next, delta_next, z = jnp.ones((2, 3)), jnp.ones(2), jnp.zeros(3)
      >>> delta = hidden_error(w_next, delta_next, z, jax.nn.sigmoid(z))  # 2 * 0.25
      >>> delta.shape, bool(jnp.allclose(delta, 0.5))
      ((3,), True)
    """
    return net.activation.backward(z, a, weighted_error(w_next, delta_next))


def layer_gradient(delta: Array, a_prev: Array) -> Layer:
    r"""dC/dw_jk = delta_j a_k^{l-1} (chapter 10 eqs 98-99; 001 notes eq 6) and dC/db = delta
    (001 notes eq 7): the outer product delta (a^{l-1})^T, network.py's nabla_w.

    \[ \frac{\partial C}{\partial w^l_{jk}} = \delta^l_j a^{l-1}_k, \qquad
    \frac{\partial C}{\partial b^l_j} = \delta^l_j \]

    For one example delta (n_l,) and a_prev (n_{l-1},). Leading batch axes, if present,
    are summed: sum_i delta_i a_i^T as one matrix product.

    Examples:
      >>> g = layer_gradient(jnp.ones(2), jnp.ones(3))
      >>> g.w.shape, g.b.shape
      ((2, 3), (2,))
    """
    batch_axes = tuple(range(delta.ndim - 1))
    return Layer(
        jnp.tensordot(delta, a_prev, axes=(batch_axes, batch_axes)),
        jnp.sum(delta, axis=batch_axes),
    )

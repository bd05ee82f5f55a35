"""The one-neuron-per-layer chain of chapter 10, eqs 75-86, as the explicit product of eq 85."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from functional_bp._validation import check_float_dtype
from functional_bp.activations import SIGMOID

Array = jax.Array

__all__ = ["chain_rule_gradients"]


@jax.jit
def _chain_rule_gradients(ws: Array, x: Array, y: Array) -> Array:
    num_layers = ws.shape[0]
    # Forward (eqs 75-77): h_n = w_n a_{n-1}, a_n = sigma(h_n), a_0 = x, b = 0.
    a, h = [x], []
    for n in range(num_layers):
        h.append(ws[n] * a[n])
        a.append(SIGMOID.fn(h[n]))
    sigma_prime = [SIGMOID.prime(h[n], a[n + 1]) for n in range(num_layers)]
    dC_dyhat = 2 * (a[-1] - y)  # C = (yhat - y)^2
    # Eq 85 for w_n: dh_n/dw_n = a_{n-1}, then sigma'(h_n), then w_m sigma'(h_m) for every
    # later layer m (eqs 80-83), then dC/dyhat (eq 84).
    grads = []
    for n in range(num_layers):
        factors = [a[n], sigma_prime[n]]
        factors += [ws[m] * sigma_prime[m] for m in range(n + 1, num_layers)]
        factors.append(dC_dyhat)
        grads.append(jnp.prod(jnp.stack(factors)))
    return jnp.stack(grads)


def chain_rule_gradients(ws: Array, x: Array, y: Array) -> Array:
    r"""dC/dw_n of a chain of one sigmoid neuron per layer, from the explicit product of eq 85.

    Chapter 10 eqs 75-86 with b = 0 and C = (yhat - y)^2, generalised from N = 3 to any
    number of layers N: with a_0 = x, h_n = w_n a_{n-1} (eq 77), a_n = sigma(h_n),

        dC/dw_n = a_{n-1} sigma'(h_n) * prod_{m=n+1}^{N} [w_m sigma'(h_m)] * dC/dyhat,

    \[ \frac{\partial C}{\partial w_n} = a_{n-1}\, \sigma'(h_n) \prod_{m=n+1}^{N}
    \left[ w_m\, \sigma'(h_m) \right] \frac{\partial C}{\partial \hat y} \]

    dC/dyhat = 2 (yhat - y). For n = 1 and N = 3 this is eq 85 term by term. It equals
    `backprop` with ``cost="squared_error"`` on a width-1 network with zero biases.

    Args:
      ws: the weights w_1, ..., w_N, shape (N,).
      x: the input, a scalar.
      y: the target, a scalar.

    Returns:
      dC/dw_n for n = 1..N, shape (N,).

    Examples:
      >>> ws = jnp.array([0.5, -1.0, 2.0])
      >>> params = [Layer(jnp.full((1, 1), w), jnp.zeros(1)) for w in ws]
      >>> g = backprop(params, jnp.ones(1), jnp.zeros(1), net=Network(cost="squared_error"))
      >>> bool(jnp.allclose(chain_rule_gradients(ws, 1.0, 0.0), jnp.stack([l.w[0, 0] for l in g])))
      True
    """
    ws, x, y = jnp.asarray(ws), jnp.asarray(x), jnp.asarray(y)
    if ws.ndim != 1 or ws.shape[0] < 1:
        raise ValueError(f"Expected ws to have shape (N,) with N >= 1, got {np.shape(ws)} instead")
    for name, value in (("ws", ws), ("x", x), ("y", y)):
        check_float_dtype(value.dtype, name)
    for name, value in (("x", x), ("y", y)):
        if value.ndim != 0:
            raise ValueError(f"Expected {name} to be a scalar, got shape {value.shape} instead")
    return _chain_rule_gradients(ws, x.astype(ws.dtype), y.astype(ws.dtype))

"""`mlp`: the network as a JAX function whose VJP is the hand-written backward pass.

With `jax.custom_vjp`, ``jax.grad`` of any loss built on `mlp` (extra regularisers,
another head, a sum with other terms) runs the documents' equations through the
network: eq 91 and eq 96 for the error terms, eq 99 and eq 7 for the gradients, and eq 8
of the 001 notes for the gradient with respect to the input.
"""

from __future__ import annotations

import functools
from typing import Optional

import jax

from functional_bp._options import ActivationArg, Options, prepare
from functional_bp.backward import backward_pass, summed_gradients, weighted_error
from functional_bp.forward import forward_pass
from functional_bp.params import Params

Array = jax.Array


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _network(params: Params, xs: Array, opts: Options) -> Array:
    return forward_pass(params, xs, opts).activations[-1]


def _network_fwd(params, xs, opts):
    cache = forward_pass(params, xs, opts)
    return cache.activations[-1], (params, cache)


def _network_bwd(opts, residuals, cotangent):
    """The hand-written backward pass for any cotangent g = dL/da^L of shape (batch, n_L)."""
    params, cache = residuals
    # Eq 91 with the caller's dL/da^L in place of dC/da^L, one example at a time.
    delta_L = jax.vmap(opts.output_activation.backward)(
        cache.zs[-1], cache.activations[-1], cotangent
    )
    deltas = backward_pass(params, cache, delta_L, opts)  # eq 96
    grads = summed_gradients(deltas, cache)  # eqs 99 and 7, summed over the batch
    return grads, weighted_error(params[0].w, deltas[0])  # 001 notes eq 8 for dL/dx


_network.defvjp(_network_fwd, _network_bwd)


@functools.partial(jax.jit, static_argnames=("activation", "output_activation"))
def mlp(
    params: Params,
    x: Array,
    *,
    activation: ActivationArg = "sigmoid",
    output_activation: Optional[ActivationArg] = None,
) -> Array:
    """The output a^L of the network, differentiated by the hand-written backprop.

    Same values as `feedforward`; ``jax.grad``/``jax.vjp`` through it (with respect to
    ``params`` and ``x``) use the hand-written backward pass, registered with
    `jax.custom_vjp`. Forward mode (``jax.jvp``, ``jax.jacfwd``) is not defined for a
    custom VJP and raises JAX's TypeError ("can't apply forward-mode autodiff (jvp) to a
    custom_vjp function"); use ``jax.jacrev`` instead.

    Args:
      params: a list of `Layer`.
      x: one example (n_in,) or a batch (batch, n_in).
      activation, output_activation: as for `forward`.
    """
    opts = prepare(params, x, None, activation, output_activation, None, batched=None)
    # Cast outside the custom VJP, so that autodiff returns dL/dx in x's own dtype.
    xs = x.astype(params[0].w.dtype)
    if x.ndim == 1:
        return _network(params, xs[None], opts)[0]
    return _network(params, xs, opts)

"""`mlp`: the network as a JAX function whose VJP is the hand-written backward pass.

With `jax.custom_vjp`, ``jax.grad`` of any loss built on `mlp` (extra regularisers,
another head, a sum with other terms) runs the documents' equations through the
network: eq 96 for the error terms, eq 99 and eq 7 for the gradients, and eq 8 of the
001 notes for the gradient with respect to the input.
"""

from __future__ import annotations

import functools
from typing import Optional

import jax

from functional_bp._options import Options, prepare
from functional_bp.activations import Activation
from functional_bp.backward import backpropagate, gradients_from_error_terms
from functional_bp.forward import forward_any
from functional_bp.params import Params

Array = jax.Array


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _mlp(params: Params, x: Array, opts: Options) -> Array:
    return forward_any(params, x, opts).activations[-1]


def _mlp_fwd(params, x, opts):
    cache = forward_any(params, x, opts)
    return cache.activations[-1], (params, cache)


def _mlp_bwd(opts, residuals, cotangent):
    """The hand-written backward pass for any cotangent dL/da^L."""
    params, cache = residuals
    # Eqs 90-91 with dL/da^L from the caller's loss.
    delta_L = cotangent * opts.output_activation.prime(cache.zs[-1], cache.activations[-1])
    deltas = backpropagate(params, cache, delta_L, opts)  # eq 96
    grads = gradients_from_error_terms(deltas, cache)  # eqs 99 and 7, summed over a batch
    dx = deltas[0] @ params[0].w  # 001 notes eq 8: dL/da^0 = (w^1)^T delta^1
    return grads, dx


_mlp.defvjp(_mlp_fwd, _mlp_bwd)


@functools.partial(jax.jit, static_argnames=("activation", "output_activation"))
def mlp(
    params: Params,
    x: Array,
    *,
    activation: str | Activation = "sigmoid",
    output_activation: Optional[str | Activation] = None,
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
    opts = prepare(params, x, None, activation, output_activation, "quadratic", batched=None)
    return _mlp(params, x, opts)

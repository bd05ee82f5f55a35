"""Vanishing gradients, as the chain rule predicts.

Eq 85 multiplies one sigma'(h) per layer on the way back, and sigma'(z) <= 1/4 for the
sigmoid, so the early layers of a deep sigmoid network learn slowly. These are the
per-layer figures that show it (the picture of the book's chapter 5).
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from functional_bp._options import STATIC, ActivationArg, CostArg, prepare, with_options_doc
from functional_bp.backward import mean_value_and_grad
from functional_bp.params import Params

Array = jax.Array


class LayerNorms(NamedTuple):
    """Per-layer gradient sizes, each of shape (L,), layer 1 first.

    Attributes:
      delta: ||delta^l|| of the mini-batch mean, i.e. ||dC/db^l|| (eq 7): the book's
        "speed of learning" of layer l.
      weight_grad: ||dC/dw^l||_F (eq 99).
    """

    delta: Array
    weight_grad: Array


@functools.partial(jax.jit, static_argnames=STATIC)
@with_options_doc
def layer_gradient_norms(
    params: Params,
    xs: Array,
    ys: Array,
    *,
    activation: ActivationArg = "sigmoid",
    output_activation: Optional[ActivationArg] = None,
    cost: CostArg = "quadratic",
) -> LayerNorms:
    """||delta^l|| and ||dC/dw^l|| for every layer, from the hand-written mean gradient.

    Args:
      params: a list of `Layer`.
      xs: shape (batch, n_in).
      ys: shape (batch, n_out).
      {options}
    """
    opts = prepare(params, xs, ys, activation, output_activation, cost, batched=True)
    grads = mean_value_and_grad(params, xs, ys, opts)[1]
    return LayerNorms(
        jnp.stack([jnp.linalg.norm(g.b) for g in grads]),
        jnp.stack([jnp.linalg.norm(g.w) for g in grads]),
    )

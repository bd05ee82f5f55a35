"""The public gradient functions, each one `prepare` and a call into the core of
`functional_bp.backward`."""

from __future__ import annotations

import functools
from typing import Optional

import jax

from functional_bp._options import STATIC, ActivationArg, CostArg, prepare, with_options_doc
from functional_bp.backward import backprop_batch, mean_cost, mean_value_and_grad
from functional_bp.params import Layer, Params

Array = jax.Array


@functools.partial(jax.jit, static_argnames=STATIC)
@with_options_doc
def error_terms(
    params: Params,
    x: Array,
    y: Array,
    *,
    activation: ActivationArg = "sigmoid",
    output_activation: Optional[ActivationArg] = None,
    cost: CostArg = "quadratic",
) -> list[Array]:
    """The error terms delta^l = dC/dz^l of every layer, for one example.

    delta^L = dC/da^L ⊙ sigma'(z^L) (chapter 10 eqs 90-91, `output_error`), then,
    backwards, delta^l = (w^{l+1})^T delta^{l+1} ⊙ sigma'(z^l) (eq 96, `hidden_error`).

    Args:
      params: a list of `Layer`.
      x: one example, shape (n_in,).
      y: its target, shape (n_out,).
      {options}

    Returns:
      ``[delta^1, ..., delta^L]``, delta^l of shape (n_l,).
    """
    opts = prepare(params, x, y, activation, output_activation, cost, batched=False)
    return [delta[0] for delta in backprop_batch(params, x[None], y[None], opts).deltas]


@functools.partial(jax.jit, static_argnames=STATIC)
@with_options_doc
def backprop(
    params: Params,
    x: Array,
    y: Array,
    *,
    activation: ActivationArg = "sigmoid",
    output_activation: Optional[ActivationArg] = None,
    cost: CostArg = "quadratic",
) -> list[Layer]:
    """The gradient of the cost of one example: network.py's ``backprop``.

    dC/dw^l = delta^l (a^{l-1})^T (chapter 10 eq 99, 001 notes eq 6, `layer_gradient`)
    and dC/db^l = delta^l (001 notes eq 7), with the delta^l of `error_terms`.

    Args:
      params: a list of `Layer`.
      x: one example, shape (n_in,).
      y: its target, shape (n_out,).
      {options}

    Returns:
      A list of `Layer(dC/dw, dC/db)`, the structure of ``params``.
    """
    opts = prepare(params, x, y, activation, output_activation, cost, batched=False)
    return mean_value_and_grad(params, x[None], y[None], opts)[1]


@functools.partial(jax.jit, static_argnames=STATIC)
@with_options_doc
def value_and_grad(
    params: Params,
    xs: Array,
    ys: Array,
    *,
    activation: ActivationArg = "sigmoid",
    output_activation: Optional[ActivationArg] = None,
    cost: CostArg = "quadratic",
) -> tuple[Array, list[Layer]]:
    """``(loss, grad)`` of a mini-batch from one forward and one backward pass.

    Args:
      params: a list of `Layer`.
      xs: shape (batch, n_in).
      ys: shape (batch, n_out).
      {options}

    Returns:
      The mean cost and the mean of the per-example gradients.
    """
    opts = prepare(params, xs, ys, activation, output_activation, cost, batched=True)
    return mean_value_and_grad(params, xs, ys, opts)


@functools.partial(jax.jit, static_argnames=STATIC)
@with_options_doc
def grad(
    params: Params,
    xs: Array,
    ys: Array,
    *,
    activation: ActivationArg = "sigmoid",
    output_activation: Optional[ActivationArg] = None,
    cost: CostArg = "quadratic",
) -> list[Layer]:
    """The mean over the mini-batch of the per-example gradients of `backprop`.

    Error terms are computed for every example (eqs 90-91, then eq 96 as one matrix
    product per layer); eq 99 is then summed over the batch as one matrix product per
    layer, sum_i delta_i a_i^T = Delta^T A, with the 1/batch folded into delta^L: the
    gradient network.py's ``update_mini_batch`` averages.

    Args:
      params: a list of `Layer`.
      xs: shape (batch, n_in).
      ys: shape (batch, n_out).
      {options}

    Returns:
      A list of `Layer`, the structure of ``params``.
    """
    opts = prepare(params, xs, ys, activation, output_activation, cost, batched=True)
    return mean_value_and_grad(params, xs, ys, opts)[1]


@functools.partial(jax.jit, static_argnames=STATIC)
@with_options_doc
def loss(
    params: Params,
    xs: Array,
    ys: Array,
    *,
    activation: ActivationArg = "sigmoid",
    output_activation: Optional[ActivationArg] = None,
    cost: CostArg = "quadratic",
) -> Array:
    """The mean per-example cost of a mini-batch: what ``jax.grad`` differentiates when
    it is compared with `grad`.

    Args:
      params: a list of `Layer`.
      xs: shape (batch, n_in).
      ys: shape (batch, n_out).
      {options}
    """
    opts = prepare(params, xs, ys, activation, output_activation, cost, batched=True)
    return mean_cost(params, xs, ys, opts)

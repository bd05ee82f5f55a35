"""Per-example gradients, their norms, clipping and DP-SGD, from the error terms.

A dense layer's per-example weight gradient is the outer product delta_i (a_i^{l-1})^T
(eq 99), so its Frobenius norm is ||delta_i|| ||a_i^{l-1}||, and the bias gradient's is
||delta_i||. Norms and clipping therefore cost O(batch * sum_l n_l) memory, never the
O(batch * sum_l n_in n_out) of materialised per-example gradients.
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from functional_bp._options import STATIC, ActivationArg, CostArg, prepare, with_options_doc
from functional_bp._validation import check_key, check_values, non_negative, positive
from functional_bp.backward import Backprop, backprop_batch, layer_gradient, summed_gradients
from functional_bp.params import Layer, Params
from functional_bp.training import sgd_update

Array = jax.Array


class PerExampleNorms(NamedTuple):
    """L2 norms of each example's gradient.

    Attributes:
      total: shape (batch,): the norm of the whole gradient (every layer, w and b).
      layers: one `Layer(w, b)` per layer, each leaf of shape (batch,): the Frobenius
        norm of dC/dw^l and the norm of dC/db^l for each example.
    """

    total: Array
    layers: list[Layer]


@functools.partial(jax.jit, static_argnames=STATIC)
@with_options_doc
def per_example_grads(
    params: Params,
    xs: Array,
    ys: Array,
    *,
    activation: ActivationArg = "sigmoid",
    output_activation: Optional[ActivationArg] = None,
    cost: CostArg = "quadratic",
) -> list[Layer]:
    """`backprop` of every example in a batch: eq 99 for each example, by `jax.vmap`.

    Args:
      params: a list of `Layer`.
      xs: shape (batch, n_in).
      ys: shape (batch, n_out).
      {options}

    Returns:
      A list of `Layer`; every leaf has a leading batch axis: w is (batch, n_out, n_in).
    """
    opts = prepare(params, xs, ys, activation, output_activation, cost, batched=True)
    cache, _, deltas = backprop_batch(params, xs, ys, opts)
    return [jax.vmap(layer_gradient)(d, a) for d, a in zip(deltas, cache.activations)]


def _norm(x: Array) -> Array:
    """The L2 norm over the last axis, in at least float32 and scaled by the largest
    entry, so that no square overflows (float16 activations above 256) or underflows."""
    x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    largest = jnp.max(jnp.abs(x), axis=-1, keepdims=True)
    safe = jnp.where(largest == 0, 1, largest)
    return safe[..., 0] * jnp.sqrt(jnp.sum((x / safe) ** 2, axis=-1))


def _norms(result: Backprop) -> PerExampleNorms:
    """||delta_i a_i^T||_F = ||delta_i|| ||a_i||, from the (batch, n_l) error terms; in
    at least float32, as `_norm`."""
    layers = []
    for delta, a_prev in zip(result.deltas, result.cache.activations):
        delta_norm = _norm(delta)
        layers.append(Layer(delta_norm * _norm(a_prev), delta_norm))
    total = _norm(jnp.stack([leaf for layer in layers for leaf in layer], axis=-1))
    return PerExampleNorms(total, layers)


@functools.partial(jax.jit, static_argnames=STATIC)
@with_options_doc
def per_example_grad_norms(
    params: Params,
    xs: Array,
    ys: Array,
    *,
    activation: ActivationArg = "sigmoid",
    output_activation: Optional[ActivationArg] = None,
    cost: CostArg = "quadratic",
) -> PerExampleNorms:
    """The L2 norm of every example's gradient, from the error terms alone.

    ||dC_i/dw^l||_F = ||delta_i^l|| ||a_i^{l-1}|| (eq 99 is an outer product) and
    ||dC_i/db^l|| = ||delta_i^l|| (eq 7); per-example gradients are never built.

    Args:
      params: a list of `Layer`.
      xs: shape (batch, n_in).
      ys: shape (batch, n_out).
      {options}

    Returns:
      `PerExampleNorms`: ``total`` of shape (batch,) and per-layer ``layers``.
    """
    opts = prepare(params, xs, ys, activation, output_activation, cost, batched=True)
    norms = _norms(backprop_batch(params, xs, ys, opts))
    return jax.tree.map(lambda norm: norm.astype(xs.dtype), norms)


def clip_weights(total_norms: Array, clip_norm) -> Array:
    """min(1, C / ||g_i||). An exactly zero gradient keeps weight 1; a NaN norm gives a
    NaN weight, so it shows in the result instead of passing unclipped."""
    safe = jnp.where(total_norms == 0, 1, total_norms)
    return jnp.minimum(1, clip_norm / safe)


def clipped_mean(params: Params, xs: Array, ys: Array, clip_norm, opts) -> list[Layer]:
    """One weighted backward pass: sum_i w_i delta_i a_i^T with w_i = min(1, C/||g_i||)/B."""
    result = backprop_batch(params, xs, ys, opts)
    weights = clip_weights(_norms(result).total, clip_norm) / xs.shape[0]
    weighted = [delta * weights[:, None].astype(delta.dtype) for delta in result.deltas]
    return summed_gradients(weighted, result.cache)


@check_values(clip_norm=positive)
@functools.partial(jax.jit, static_argnames=STATIC)
@with_options_doc
def clipped_grad(
    params: Params,
    xs: Array,
    ys: Array,
    clip_norm: float,
    *,
    activation: ActivationArg = "sigmoid",
    output_activation: Optional[ActivationArg] = None,
    cost: CostArg = "quadratic",
) -> list[Layer]:
    """The mean of per-example gradients, each clipped to L2 norm at most ``clip_norm``.

    mean_i min(1, C/||g_i||) g_i, computed as one weighted backward pass: the weights
    scale the error terms delta_i before eq 99 sums delta_i a_i^T over the batch.

    Args:
      params: a list of `Layer`.
      xs: shape (batch, n_in).
      ys: shape (batch, n_out).
      clip_norm: C, the largest norm an example's gradient keeps.
      {options}
    """
    opts = prepare(params, xs, ys, activation, output_activation, cost, batched=True)
    return clipped_mean(params, xs, ys, clip_norm, opts)


def noisy_clipped_mean(key, params, xs, ys, clip_norm, noise_multiplier, opts) -> list[Layer]:
    """`clipped_mean` plus N(0, (sigma C / B)^2) on every entry, drawn from ``key``."""
    check_key(key)
    grads = clipped_mean(params, xs, ys, clip_norm, opts)
    std = noise_multiplier * clip_norm / xs.shape[0]
    leaves, treedef = jax.tree.flatten(grads)
    keys = jax.random.split(key, len(leaves))
    noisy = [g + std * jax.random.normal(k, g.shape, g.dtype) for g, k in zip(leaves, keys)]
    return jax.tree.unflatten(treedef, noisy)


@check_values(key=check_key, clip_norm=positive, noise_multiplier=non_negative)
@functools.partial(jax.jit, static_argnames=STATIC)
@with_options_doc
def private_grad(
    key: Array,
    params: Params,
    xs: Array,
    ys: Array,
    clip_norm: float,
    noise_multiplier: float,
    *,
    activation: ActivationArg = "sigmoid",
    output_activation: Optional[ActivationArg] = None,
    cost: CostArg = "quadratic",
) -> list[Layer]:
    """The DP-SGD gradient of Abadi et al. (2016): `clipped_grad` plus Gaussian noise.

    g = (1/B) [sum_i clip_C(g_i) + N(0, sigma^2 C^2 I)], i.e. the clipped mean plus noise
    of standard deviation sigma C / B on every entry, drawn from ``key``. Feed it to any
    optax optimizer (``optimizer.update(g, state, params)``) or use `dp_sgd_step`.

    Args:
      key: a `jax.random` key for the noise.
      params: a list of `Layer`.
      xs: shape (batch, n_in).
      ys: shape (batch, n_out).
      clip_norm: C.
      noise_multiplier: sigma.
      {options}

    References:
      Abadi et al., "Deep Learning with Differential Privacy", CCS 2016, Algorithm 1.
    """
    opts = prepare(params, xs, ys, activation, output_activation, cost, batched=True)
    return noisy_clipped_mean(key, params, xs, ys, clip_norm, noise_multiplier, opts)


@check_values(key=check_key, eta=positive, clip_norm=positive, noise_multiplier=non_negative)
@functools.partial(jax.jit, static_argnames=STATIC)
@with_options_doc
def dp_sgd_step(
    key: Array,
    params: Params,
    xs: Array,
    ys: Array,
    eta: float,
    clip_norm: float,
    noise_multiplier: float,
    *,
    activation: ActivationArg = "sigmoid",
    output_activation: Optional[ActivationArg] = None,
    cost: CostArg = "quadratic",
) -> list[Layer]:
    """One DP-SGD step: params - eta * `private_grad`.

    Args:
      key: a `jax.random` key for the noise.
      params: a list of `Layer`.
      xs: shape (batch, n_in).
      ys: shape (batch, n_out).
      eta: the learning rate.
      clip_norm: C.
      noise_multiplier: sigma.
      {options}
    """
    opts = prepare(params, xs, ys, activation, output_activation, cost, batched=True)
    grads = noisy_clipped_mean(key, params, xs, ys, clip_norm, noise_multiplier, opts)
    return sgd_update(params, grads, eta)

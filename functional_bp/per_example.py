"""Per-example gradient norms, clipping and DP-SGD from the error terms.

A dense layer's per-example weight gradient is the outer product delta_i (a_i^{l-1})^T
(eq 99), so its squared Frobenius norm is ||delta_i||^2 ||a_i^{l-1}||^2, and the bias
gradient's is ||delta_i||^2. Norms therefore cost O(batch * sum_l n_l) memory, never
the O(batch * sum_l n_in n_out) of materialised per-example gradients.
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from functional_bp._options import STATIC, Options, prepare
from functional_bp.activations import Activation
from functional_bp.backward import error_terms_from_cache, gradients_from_error_terms
from functional_bp.costs import Cost
from functional_bp.forward import Cache, forward_any
from functional_bp.params import Layer, Params

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


def _batch_error_terms(params: Params, xs: Array, ys: Array, opts: Options):
    """The cache and the per-example delta^l, each (batch, n_l): eqs 90-91 and 96 act
    row by row on the batch."""
    cache = forward_any(params, xs, opts)
    ys = ys.astype(cache.activations[-1].dtype)
    return cache, error_terms_from_cache(params, cache, ys, opts)


def _norms(cache: Cache, deltas: list[Array]) -> PerExampleNorms:
    """||delta_i a_i^T||_F = ||delta_i|| ||a_i||, from the (batch, n_l) error terms."""
    layers = []
    for delta, a_prev in zip(deltas, cache.activations):
        delta_sq = jnp.sum(delta**2, axis=-1)
        layers.append(Layer(jnp.sqrt(delta_sq * jnp.sum(a_prev**2, axis=-1)), jnp.sqrt(delta_sq)))
    total = jnp.sqrt(sum(layer.w**2 + layer.b**2 for layer in layers))
    return PerExampleNorms(total, layers)


def _clip_weights(total_norms: Array, clip_norm) -> Array:
    """min(1, C / ||g_i||); an exactly zero gradient keeps weight 1."""
    safe = jnp.where(total_norms > 0, total_norms, 1.0)
    return jnp.minimum(1.0, clip_norm / safe)


@functools.partial(jax.jit, static_argnames=STATIC)
def per_example_grad_norms(
    params: Params,
    xs: Array,
    ys: Array,
    *,
    activation: str | Activation = "sigmoid",
    output_activation: Optional[str | Activation] = None,
    cost: str | Cost = "quadratic",
) -> PerExampleNorms:
    """The L2 norm of every example's gradient, from the error terms alone.

    ||dC_i/dw^l||_F = ||delta_i^l|| ||a_i^{l-1}|| (eq 99 is an outer product) and
    ||dC_i/db^l|| = ||delta_i^l|| (eq 7); per-example gradients are never built.

    Args:
      params, xs, ys, activation, output_activation, cost: as for `grad`.

    Returns:
      `PerExampleNorms`: ``total`` of shape (batch,) and per-layer ``layers``.
    """
    opts = prepare(params, xs, ys, activation, output_activation, cost, batched=True)
    return _norms(*_batch_error_terms(params, xs, ys, opts))


def _clipped(params, xs, ys, clip_norm, opts):
    cache, deltas = _batch_error_terms(params, xs, ys, opts)
    weights = _clip_weights(_norms(cache, deltas).total, clip_norm) / xs.shape[0]
    # One weighted backward pass: sum_i w_i delta_i a_i^T, the weights folded into delta.
    weighted = [delta * weights[:, None] for delta in deltas]
    return gradients_from_error_terms(weighted, cache)


@functools.partial(jax.jit, static_argnames=STATIC)
def clipped_grad(
    params: Params,
    xs: Array,
    ys: Array,
    clip_norm: float,
    *,
    activation: str | Activation = "sigmoid",
    output_activation: Optional[str | Activation] = None,
    cost: str | Cost = "quadratic",
) -> list[Layer]:
    """The mean of per-example gradients, each clipped to L2 norm at most ``clip_norm``.

    mean_i min(1, C/||g_i||) g_i, computed as one weighted backward pass: the weights
    scale the error terms delta_i before eq 99 sums delta_i a_i^T over the batch.

    Args:
      clip_norm: C, the largest norm an example's gradient keeps.
      params, xs, ys, activation, output_activation, cost: as for `grad`.
    """
    opts = prepare(params, xs, ys, activation, output_activation, cost, batched=True)
    return _clipped(params, xs, ys, clip_norm, opts)


@functools.partial(jax.jit, static_argnames=STATIC)
def private_grad(
    key: Array,
    params: Params,
    xs: Array,
    ys: Array,
    clip_norm: float,
    noise_multiplier: float,
    *,
    activation: str | Activation = "sigmoid",
    output_activation: Optional[str | Activation] = None,
    cost: str | Cost = "quadratic",
) -> list[Layer]:
    """The DP-SGD gradient of Abadi et al. (2016): `clipped_grad` plus Gaussian noise.

    g = (1/B) [sum_i clip_C(g_i) + N(0, sigma^2 C^2 I)], i.e. the clipped mean plus noise
    of standard deviation sigma C / B on every entry, drawn from ``key``. Feed it to any
    optax optimizer (``optimizer.update(g, state, params)``) or use `dp_sgd_step`.

    Args:
      key: a `jax.random` key for the noise.
      clip_norm: C.
      noise_multiplier: sigma.
      params, xs, ys, activation, output_activation, cost: as for `grad`.

    References:
      Abadi et al., "Deep Learning with Differential Privacy", CCS 2016, Algorithm 1.
    """
    opts = prepare(params, xs, ys, activation, output_activation, cost, batched=True)
    grads = _clipped(params, xs, ys, clip_norm, opts)
    std = noise_multiplier * clip_norm / xs.shape[0]
    leaves, treedef = jax.tree.flatten(grads)
    keys = jax.random.split(key, len(leaves))
    noisy = [g + std * jax.random.normal(k, g.shape, g.dtype) for g, k in zip(leaves, keys)]
    return jax.tree.unflatten(treedef, noisy)


@functools.partial(jax.jit, static_argnames=STATIC)
def dp_sgd_step(
    key: Array,
    params: Params,
    xs: Array,
    ys: Array,
    eta: float,
    clip_norm: float,
    noise_multiplier: float,
    *,
    activation: str | Activation = "sigmoid",
    output_activation: Optional[str | Activation] = None,
    cost: str | Cost = "quadratic",
) -> list[Layer]:
    """One DP-SGD step: params - eta * `private_grad`."""
    grads = private_grad(
        key,
        params,
        xs,
        ys,
        clip_norm,
        noise_multiplier,
        activation=activation,
        output_activation=output_activation,
        cost=cost,
    )
    return jax.tree.map(lambda p, g: p - eta * g, params, grads)

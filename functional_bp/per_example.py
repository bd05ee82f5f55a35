r"""Per-example gradients, their norms, clipping and DP-SGD, from the error terms.

A dense layer's per-example weight gradient is the outer product delta_i (a_i^{l-1})^T
(eq 99), so its Frobenius norm is ||delta_i|| ||a_i^{l-1}||, and the bias gradient's is
||delta_i||:

\[ \lVert \delta_i (a_i^{l-1})^\top \rVert_F = \lVert \delta_i \rVert \, \lVert a_i^{l-1}
\rVert, \qquad \lVert \partial C_i / \partial b^l \rVert = \lVert \delta_i \rVert. \]

Norms and clipping therefore cost O(batch * sum_l n_l) memory, never the
O(batch * sum_l n_in n_out) of materialised per-example gradients.

`ClippedGradient` and `PrivateGradient` are the same quantities as gradients for
`functional_bp.training`: a DP-SGD step is ``training.train_step(key, optax.sgd(eta),
params, state, xs, ys, gradient=PrivateGradient(clip_norm, noise_multiplier))``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from functional_bp import core
from functional_bp._validation import check_key, check_number, check_values, non_negative, positive
from functional_bp.network import Network, jit_with_net
from functional_bp.params import Layer, Params

Array = jax.Array

__all__ = [
    "ClippedGradient",
    "PerExampleNorms",
    "PrivateGradient",
    "clipped_grad",
    "norms_from_record",
    "per_example_grad_norms",
    "per_example_grads",
    "private_grad",
]


class PerExampleNorms(NamedTuple):
    """L2 norms of each example's gradient.

    Attributes:
      total: shape (batch,): the norm of the whole gradient (every layer, w and b).
      layers: one `Layer(w, b)` per layer, each leaf of shape (batch,): the Frobenius
        norm of dC/dw^l and the norm of dC/db^l for each example.

    Examples:
      >>> norms = fbp.per_example.PerExampleNorms(jnp.ones(5), [Layer(jnp.ones(5), jnp.ones(5))])
      >>> norms.total.shape, norms.layers[0].w.shape
      ((5,), (5,))
    """

    total: Array
    layers: list[Layer]


@jit_with_net
def per_example_grads(params: Params, xs: Array, ys: Array, *, net: Network = Network()):
    """`backprop` of every example in a batch: eq 99 for each example, by `jax.vmap`.

    Args:
      params: a list of `Layer`.
      xs: shape (batch, n_in).
      ys: shape (batch, n_out).
      net: the `Network`.

    Returns:
      A list of `Layer`; every leaf has a leading batch axis: w is (batch, n_out, n_in).

    Examples:
      >>> params = init_mlp(jax.random.key(0), [3, 4, 2])
      >>> xs, ys = jnp.ones((5, 3)), jnp.zeros((5, 2))
      >>> [g.w.shape for g in fbp.per_example.per_example_grads(params, xs, ys)]
      [(5, 4, 3), (5, 2, 4)]
    """
    core.check(net, params, xs, ys)
    record = core.backprop_batch(net, params, xs, ys)
    return [
        jax.vmap(core.Dense.gradient)(d, a) for d, a in zip(record.deltas, record.cache.activations)
    ]


def _norm(x: Array) -> Array:
    """The L2 norm over the last axis, in at least float32 and scaled by the largest
    entry, so that no square overflows (float16 activations above 256) or underflows."""
    x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    largest = jnp.max(jnp.abs(x), axis=-1, keepdims=True)
    safe = jnp.where(largest == 0, 1, largest)
    return safe[..., 0] * jnp.sqrt(jnp.sum((x / safe) ** 2, axis=-1))


def norms_from_record(record: core.Record) -> PerExampleNorms:
    r"""||delta_i a_i^T||_F = ||delta_i|| ||a_i|| per layer (eq 99 is an outer product)
    and ||delta_i|| for the bias (eq 7), from the core's record; in at least float32:
    \( \lVert \delta_i a_i^\top \rVert_F = \lVert \delta_i \rVert \, \lVert a_i \rVert \).

    Examples:
      >>> params = init_mlp(jax.random.key(0), [3, 4, 2])
      >>> xs, ys = jnp.ones((5, 3)), jnp.zeros((5, 2))
      >>> record = fbp.core.backprop_batch(Network(), params, xs, ys)
      >>> fbp.per_example.norms_from_record(record).total.shape
      (5,)
    """
    layers = []
    for delta, a_prev in zip(record.deltas, record.cache.activations):
        delta_norm = _norm(delta)
        layers.append(Layer(delta_norm * _norm(a_prev), delta_norm))
    total = _norm(jnp.stack([leaf for layer in layers for leaf in layer], axis=-1))
    return PerExampleNorms(total, layers)


@jit_with_net
def per_example_grad_norms(
    params: Params, xs: Array, ys: Array, *, net: Network = Network()
) -> PerExampleNorms:
    r"""The L2 norm of every example's gradient, from the error terms alone.

    ||dC_i/dw^l||_F = ||delta_i^l|| ||a_i^{l-1}|| (eq 99 is an outer product) and
    ||dC_i/db^l|| = ||delta_i^l|| (eq 7); per-example gradients are never built:

    \[ \lVert \partial C_i / \partial w^l \rVert_F = \lVert \delta_i^l \rVert \,
    \lVert a_i^{l-1} \rVert, \qquad \lVert \partial C_i / \partial b^l \rVert =
    \lVert \delta_i^l \rVert. \]

    Args:
      params: a list of `Layer`.
      xs: shape (batch, n_in).
      ys: shape (batch, n_out).
      net: the `Network`.

    Returns:
      `PerExampleNorms`: ``total`` of shape (batch,) and per-layer ``layers``.

    Examples:
      >>> params = init_mlp(jax.random.key(0), [3, 4, 2])
      >>> xs, ys = jnp.ones((5, 3)), jnp.zeros((5, 2))
      >>> norms = fbp.per_example.per_example_grad_norms(params, xs, ys)
      >>> norms.total.shape, len(norms.layers)
      ((5,), 2)
    """
    core.check(net, params, xs, ys)
    norms = norms_from_record(core.backprop_batch(net, params, xs, ys))
    return jax.tree.map(lambda norm: norm.astype(xs.dtype), norms)


def clip_weights(total_norms: Array, clip_norm) -> Array:
    """min(1, C / ||g_i||). An exactly zero gradient keeps weight 1; a NaN norm gives a
    NaN weight, so it shows in the result instead of passing unclipped."""
    safe = jnp.where(total_norms == 0, 1, total_norms)
    return jnp.minimum(1, clip_norm / safe)


def _clipped_mean(net, params, xs, ys, clip_norm) -> list[Layer]:
    """One weighted backward pass: sum_i w_i delta_i a_i^T with w_i = min(1, C/||g_i||)/B."""
    record = core.backprop_batch(net, params, xs, ys)
    weights = clip_weights(norms_from_record(record).total, clip_norm) / xs.shape[0]
    weighted = [delta * weights[:, None].astype(delta.dtype) for delta in record.deltas]
    return core.summed_gradients(weighted, record.cache)


def _noisy_clipped_mean(key, net, params, xs, ys, clip_norm, noise_multiplier) -> list[Layer]:
    """`_clipped_mean` plus N(0, (sigma C / B)^2) on every entry, drawn from ``key``."""
    grads = _clipped_mean(net, params, xs, ys, clip_norm)
    std = noise_multiplier * clip_norm / xs.shape[0]
    leaves, treedef = jax.tree.flatten(grads)
    keys = jax.random.split(key, len(leaves))
    noisy = [g + std * jax.random.normal(k, g.shape, g.dtype) for g, k in zip(leaves, keys)]
    return jax.tree.unflatten(treedef, noisy)


@check_values(clip_norm=positive)
@jit_with_net
def clipped_grad(
    params: Params, xs: Array, ys: Array, clip_norm: float, *, net: Network = Network()
) -> list[Layer]:
    r"""The mean of per-example gradients, each clipped to L2 norm at most ``clip_norm``.

    mean_i min(1, C/||g_i||) g_i, computed as one weighted backward pass: the weights
    scale the error terms delta_i before eq 99 sums delta_i a_i^T over the batch:

    \[ \bar g = \frac{1}{B} \sum_i \min\left(1, \frac{C}{\lVert g_i \rVert}\right) g_i. \]

    Args:
      params: a list of `Layer`.
      xs: shape (batch, n_in).
      ys: shape (batch, n_out).
      clip_norm: C, the largest norm an example's gradient keeps.
      net: the `Network`.

    Examples:
      >>> params = init_mlp(jax.random.key(0), [3, 4, 2])
      >>> xs, ys = jnp.ones((5, 3)), jnp.zeros((5, 2))
      >>> [g.w.shape for g in fbp.per_example.clipped_grad(params, xs, ys, 1.0)]
      [(4, 3), (2, 4)]
    """
    core.check(net, params, xs, ys)
    return _clipped_mean(net, params, xs, ys, clip_norm)


@check_values(key=check_key, clip_norm=positive, noise_multiplier=non_negative)
@jit_with_net
def private_grad(
    key: Array,
    params: Params,
    xs: Array,
    ys: Array,
    clip_norm: float,
    noise_multiplier: float,
    *,
    net: Network = Network(),
) -> list[Layer]:
    r"""The DP-SGD gradient of Abadi et al. (2016): `clipped_grad` plus Gaussian noise.

    g = (1/B) [sum_i clip_C(g_i) + N(0, sigma^2 C^2 I)], i.e. the clipped mean plus noise
    of standard deviation sigma C / B on every entry, drawn from ``key``:

    \[ g = \frac{1}{B} \left[ \sum_i \min\left(1, \frac{C}{\lVert g_i \rVert}\right) g_i
    + \mathcal{N}(0, \sigma^2 C^2 I) \right]. \]

    Feed it to any optax optimizer, or train with `PrivateGradient`.

    Args:
      key: a `jax.random` key for the noise.
      params: a list of `Layer`.
      xs: shape (batch, n_in).
      ys: shape (batch, n_out).
      clip_norm: C.
      noise_multiplier: sigma.
      net: the `Network`.

    References:
      Abadi et al., "Deep Learning with Differential Privacy", CCS 2016, Algorithm 1.

    Examples:
      >>> params = init_mlp(jax.random.key(0), [3, 4, 2])
      >>> xs, ys = jnp.ones((5, 3)), jnp.zeros((5, 2))
      >>> grads = fbp.per_example.private_grad(jax.random.key(1), params, xs, ys, 1.0, 1.1)
      >>> [g.w.shape for g in grads]
      [(4, 3), (2, 4)]
    """
    core.check(net, params, xs, ys)
    return _noisy_clipped_mean(key, net, params, xs, ys, clip_norm, noise_multiplier)


@core.gradient_class
class ClippedGradient(core.Gradient):
    r"""`clipped_grad` as a training gradient: the mean of per-example gradients clipped
    to norm ``clip_norm`` (a leaf: traced, per run under `training.many`), each example
    weighted by \( \min(1, C / \lVert g_i \rVert) \).

    Examples:
      >>> params = init_mlp(jax.random.key(0), [3, 4, 2])
      >>> xs, ys = jnp.ones((5, 3)), jnp.zeros((5, 2))
      >>> gradient = fbp.per_example.ClippedGradient(clip_norm=1.0)
      >>> gradient(None, Network(), params, xs, ys)[0].w.shape
      (4, 3)
    """

    clip_norm: float

    def __call__(self, key, net, params, xs, ys):
        return _clipped_mean(net, params, xs, ys, self.clip_norm)

    def check_values(self) -> None:
        check_number(self.clip_norm, "clip_norm", minimum=0, inclusive=False)


@core.gradient_class
class PrivateGradient(core.Gradient):
    r"""`private_grad` as a training gradient (DP-SGD): clipped to ``clip_norm``, plus
    noise of std ``noise_multiplier * clip_norm / batch`` drawn from the step's key,
    \( \sigma C / B \).

    Examples:
      >>> params = init_mlp(jax.random.key(0), [3, 4, 2])
      >>> xs, ys = jnp.ones((5, 3)), jnp.zeros((5, 2))
      >>> gradient = fbp.per_example.PrivateGradient(clip_norm=1.0, noise_multiplier=1.1)
      >>> gradient(jax.random.key(1), Network(), params, xs, ys)[0].w.shape
      (4, 3)
    """

    clip_norm: float
    noise_multiplier: float

    def __call__(self, key, net, params, xs, ys):
        if key is None:
            raise ValueError("PrivateGradient draws noise: give the step a jax.random key")
        return _noisy_clipped_mean(key, net, params, xs, ys, self.clip_norm, self.noise_multiplier)

    def check_values(self) -> None:
        check_number(self.clip_norm, "clip_norm", minimum=0, inclusive=False)
        check_number(self.noise_multiplier, "noise_multiplier", minimum=0)

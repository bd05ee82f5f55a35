"""Statistics of the per-example gradients g_i = dC_i/dtheta, from one backward pass.

The core keeps every example's error terms delta_i^l and activations a_i^{l-1}, and a
dense layer's g_i is their outer product (eq 99). So each statistic below is a few matrix
products over the batch; no per-example gradient of shape (batch, n_l, n_{l-1}) is ever
built (BackPACK's BatchL2Grad, SumGradSquared, Variance and BatchDotGrad, in JAX). A
convolution (`functional_bp.layers`) has no such factorisation: its per-example
gradients, batch x filters x C x kh x kw numbers, are formed for it alone (the dense
layers of the same network keep the outer products). Each function takes ``key=`` for
the masks of a `Dropout` layer, which a network with dropout needs (or pass
``net=net.deterministic()`` for its statistics without dropout).

Numerics. Every statistic is computed in at least float32: float16 and bfloat16 params,
xs and ys are cast up first (a square of a float16 gradient underflows below 2.4e-4 and
overflows above 256), and the result is cast back to the params' dtype, except
`gradient_noise_scale`, whose three scalars stay in at least float32 (a ratio of sums of
squares, which float16 would overflow). A concrete xs or ys holding NaN or inf is refused
with a ValueError naming it, before any computation (one reduction on the device); under
your own `jax.jit` or `jax.vmap` it is a tracer and is not checked.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from functional_bp import core
from functional_bp._validation import check_values, finite_array, optional_key
from functional_bp.layers import is_dense
from functional_bp.network import Network, jit_with_net
from functional_bp.params import Layer, Params
from functional_bp.per_example import norms_from_record

Array = jax.Array

__all__ = ["NoiseScale", "batch_dot", "grad_variance", "gradient_noise_scale", "sum_grad_squared"]


def _cast(tree, dtype):
    """Every leaf of ``tree`` in ``dtype``."""
    return jax.tree.map(lambda leaf: leaf.astype(dtype), tree)


def _squares(result: core.Record, net: Network) -> list[Layer]:
    """sum_i g_i^2 entry by entry: eq 99 squared is (delta_i^2)(a_i^2)^T, so the sum over
    the batch is one matrix product, (delta^2)^T (a^2); for b, sum_i delta_i^2. A
    convolution's squares do not factor (a sum over positions): its per-example
    gradients are formed and squared."""
    squares = []
    for kind, d, a in core.layer_terms(net, result.deltas, result.cache):
        if is_dense(kind):
            squares.append(core.Dense.gradient(d**2, a**2))
        else:
            g = kind.per_example_gradient(d, a)
            squares.append(jax.tree.map(lambda leaf: jnp.sum(leaf**2, axis=0), g))
    return squares


def _grams(result: core.Record, net: Network) -> list[Array]:
    """<g_i^l, g_j^l> of every layer, (N, N): (D D^T) ⊙ (A A^T + 1) for a dense layer; a
    convolution's from its per-example gradients, flattened."""
    grams = []
    for kind, d, a in core.layer_terms(net, result.deltas, result.cache):
        if is_dense(kind):
            grams.append((d @ d.T) * (a @ a.T + 1))
        else:
            g = [
                leaf.reshape(leaf.shape[0], math.prod(leaf.shape[1:]))
                for leaf in kind.per_example_gradient(d, a)
            ]
            grams.append(sum(leaf @ leaf.T for leaf in g))
    return grams


@check_values(xs=finite_array, ys=finite_array, key=optional_key)
@jit_with_net
def sum_grad_squared(
    params: Params,
    xs: Array,
    ys: Array,
    *,
    net: Network = Network(),
    key: Optional[Array] = None,
) -> list[Layer]:
    r"""sum_i g_i^2, elementwise, in the structure of params (BackPACK's SumGradSquared).

    For layer l: sum_i (delta_i^l)^2 ((a_i^{l-1})^2)^T for w (eq 99 squared entry by
    entry: one matrix product) and sum_i (delta_i^l)^2 for b:

    \[ \sum_i (g_i^{w^l})^2 = \sum_i (\delta_i^l)^2 \left((a_i^{l-1})^2\right)^\top,
    \qquad \sum_i (g_i^{b^l})^2 = \sum_i (\delta_i^l)^2. \]

    Args:
      params: a list of `Layer`.
      xs: shape (batch, n_in).
      ys: shape (batch, n_out).
      net: the `Network`.
      key: draws the masks of a `functional_bp.layers.Dropout`, if any.

    Examples:
      >>> params = init_mlp(jax.random.key(0), [3, 4, 2])
      >>> xs, ys = jnp.ones((5, 3)), jnp.zeros((5, 2))
      >>> [g.w.shape for g in fbp.statistics.sum_grad_squared(params, xs, ys)]
      [(4, 3), (2, 4)]
    """
    core.check(net, params, xs, ys, layered=True)
    dtype, (params, xs, ys) = core.working_precision(params, xs, ys)
    return _cast(_squares(core.backprop_batch(net, params, xs, ys, key=key), net), dtype)


@check_values(xs=finite_array, ys=finite_array, key=optional_key)
@jit_with_net
def grad_variance(
    params: Params,
    xs: Array,
    ys: Array,
    *,
    net: Network = Network(),
    key: Optional[Array] = None,
) -> list[Layer]:
    r"""(1/N) sum_i (g_i - g_bar)^2, elementwise (BackPACK's Variance), as
    (1/N) sum_i g_i^2 - g_bar^2 from `sum_grad_squared` and the mean gradient g_bar:

    \[ \frac{1}{N} \sum_i (g_i - \bar g)^2 = \frac{1}{N} \sum_i g_i^2 - \bar g^2. \]

    Args:
      params: a list of `Layer`.
      xs: shape (batch, n_in).
      ys: shape (batch, n_out).
      net: the `Network`.
      key: draws the masks of a `functional_bp.layers.Dropout`, if any.

    Examples:
      >>> params = init_mlp(jax.random.key(0), [3, 4, 2])
      >>> xs, ys = jnp.ones((5, 3)), jnp.zeros((5, 2))
      >>> variance = fbp.statistics.grad_variance(params, xs, ys)
      >>> [v.w.shape for v in variance], bool(all((v.w >= 0).all() for v in variance))
      ([(4, 3), (2, 4)], True)
    """
    core.check(net, params, xs, ys, layered=True)
    dtype, (params, xs, ys) = core.working_precision(params, xs, ys)
    result = core.backprop_batch(net, params, xs, ys, key=key)
    n = xs.shape[0]
    summed = core.summed_gradients(result.deltas, result.cache, net=net)
    squares = _squares(result, net)
    # Rounding can leave -1e-17 where the variance is 0; a variance is never negative.
    variance = jax.tree.map(lambda s, q: jnp.maximum(q / n - (s / n) ** 2, 0), summed, squares)
    return _cast(variance, dtype)


def _bool(value, name: str) -> None:
    """A `check_values` rule: a Python or NumPy bool (seen before jit, where 1 and True
    would share a compiled program)."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(
            f"Expected {name} to be a bool, got {type(value).__name__} {value!r} instead"
        )


@check_values(xs=finite_array, ys=finite_array, per_layer=_bool, key=optional_key)
@jit_with_net(static=("per_layer",))
def batch_dot(
    params: Params,
    xs: Array,
    ys: Array,
    *,
    per_layer: bool = False,
    net: Network = Network(),
    key: Optional[Array] = None,
) -> Array:
    r"""The (N, N) matrix <g_i, g_j> over all parameters (BackPACK's BatchDotGrad), or
    with ``per_layer=True`` the (L, N, N) Gram matrices <g_i^l, g_j^l> of each layer's
    parameters (w^l and b^l), whose sum over the layers is the former.

    <delta_i a_i^T, delta_j a_j^T>_F = (delta_i . delta_j)(a_i . a_j), and the biases add
    delta_i . delta_j: per layer (D D^T) ⊙ (A A^T + 1), summed over the layers:

    \[ \langle g_i, g_j \rangle = \sum_l (\delta_i^l \cdot \delta_j^l)
    (a_i^{l-1} \cdot a_j^{l-1} + 1), \qquad \text{i.e.} \quad \sum_l (D^l D^{l\top})
    \odot (A^{l-1} A^{l-1\top} + 1). \]

    Per layer, \( \langle g_i^l, g_j^l \rangle = (\delta_i^l \cdot \delta_j^l)
    (a_i^{l-1} \cdot a_j^{l-1} + 1) \).

    Args:
      params: a list of `Layer`.
      xs: shape (batch, n_in).
      ys: shape (batch, n_out).
      per_layer: a bool: False (the default) for the (N, N) sum over the layers, True
        for the (L, N, N) stack of the layers' Gram matrices, layer 1 first.
      net: the `Network`.
      key: draws the masks of a `functional_bp.layers.Dropout`, if any.

    Examples:
      >>> params = init_mlp(jax.random.key(0), [3, 4, 2])
      >>> xs, ys = jnp.ones((5, 3)), jnp.zeros((5, 2))
      >>> fbp.statistics.batch_dot(params, xs, ys).shape
      (5, 5)
      >>> fbp.statistics.batch_dot(params, xs, ys, per_layer=True).shape
      (2, 5, 5)
    """
    core.check(net, params, xs, ys, layered=True)
    dtype, (params, xs, ys) = core.working_precision(params, xs, ys)
    grams = _grams(core.backprop_batch(net, params, xs, ys, key=key), net)
    if per_layer:
        return jnp.stack(grams).astype(dtype)
    return sum(grams).astype(dtype)


class NoiseScale(NamedTuple):
    r"""The simple gradient noise scale of McCandlish et al. (2018) and its parts,
    \( B_\text{simple} = \operatorname{tr}(\Sigma) / \lvert G \rvert^2 \).

    Attributes:
      b_simple: tr(Sigma) / |G|^2; +inf where |G|^2 is 0 and tr(Sigma) > 0, NaN where
        both are 0 (see `gradient_noise_scale`).
      trace: tr(Sigma) = sum_i ||g_i - g_bar||^2 / (N - 1), unbiased, never negative.
      grad_norm_sq: |G|^2 estimated without bias as ||g_bar||^2 - tr(Sigma) / N.

    Examples:
      >>> scale = fbp.statistics.NoiseScale(jnp.array(2.0), jnp.array(1.0), jnp.array(0.5))
      >>> bool(scale.b_simple == scale.trace / scale.grad_norm_sq)
      True
    """

    b_simple: Array
    trace: Array
    grad_norm_sq: Array


@check_values(xs=finite_array, ys=finite_array, key=optional_key)
@jit_with_net
def gradient_noise_scale(
    params: Params,
    xs: Array,
    ys: Array,
    *,
    net: Network = Network(),
    key: Optional[Array] = None,
) -> NoiseScale:
    r"""B_simple = tr(Sigma) / |G|^2 of McCandlish et al., "An Empirical Model of
    Large-Batch Training" (2018), from one batch, each part unbiased.

    tr(Sigma) = sum_i ||g_i - g_bar||^2 / (N - 1) = (sum_i ||g_i||^2 - N ||g_bar||^2) /
    (N - 1), with ||g_i||^2 = sum_l ||delta_i^l||^2 (||a_i^{l-1}||^2 + 1) from the error
    terms; |G|^2 = ||g_bar||^2 - tr(Sigma) / N:

    \[ B_\text{simple} = \frac{\operatorname{tr}(\Sigma)}{\lvert G \rvert^2}, \quad
    \operatorname{tr}(\Sigma) = \frac{\sum_i \lVert g_i \rVert^2 - N \lVert \bar g
    \rVert^2}{N - 1}, \quad \lvert G \rvert^2 = \lVert \bar g \rVert^2 -
    \frac{\operatorname{tr}(\Sigma)}{N}, \]

    \[ \lVert g_i \rVert^2 = \sum_l \lVert \delta_i^l \rVert^2 \left(\lVert a_i^{l-1}
    \rVert^2 + 1\right). \]

    Over several batches, average ``trace``
    and ``grad_norm_sq`` separately before dividing (the paper's advice): the ratio of
    one batch is noisy and is negative when the estimate of |G|^2 is.

    At a zero gradient the ratio is decided here, not left to a 0/0 (``trace`` is
    clamped at 0, as rounding can leave -1e-17 where every g_i is the same):

    - the mean gradient exactly 0 with noise (g_bar = 0, tr(Sigma) > 0): |G|^2 =
      -tr(Sigma)/N, so ``b_simple`` = -N, finite and negative like any batch whose
      estimate of |G|^2 is negative;
    - |G|^2 exactly 0 and tr(Sigma) > 0 (noise, no signal): ``b_simple`` = +inf;
    - every g_i = 0 (tr(Sigma) = 0 and |G|^2 = 0: a stationary point of every example,
      a dead network): ``b_simple`` = NaN, as the ratio is undefined (its limit depends
      on how the gradients vanish: 0 along g_i = g -> 0, -N along g_bar = 0). ``trace``
      and ``grad_norm_sq`` are then 0, finite:

    \[ B_\text{simple} = \begin{cases} \operatorname{tr}(\Sigma) / \lvert G \rvert^2 &
    \lvert G \rvert^2 \ne 0 \\ +\infty & \lvert G \rvert^2 = 0 < \operatorname{tr}(\Sigma)
    \\ \text{NaN} & \lvert G \rvert^2 = \operatorname{tr}(\Sigma) = 0. \end{cases} \]

    Computed in at least float32, and returned so: the three scalars of float16 params
    are float32 (a ratio of sums of squares, which float16 would overflow).

    Args:
      params: a list of `Layer`.
      xs: shape (batch, n_in), at least two examples.
      ys: shape (batch, n_out).
      net: the `Network`.
      key: draws the masks of a `functional_bp.layers.Dropout`, if any.

    Returns:
      `NoiseScale`: ``b_simple``, ``trace`` and ``grad_norm_sq``, each a scalar.

    Examples:
      >>> params = init_mlp(jax.random.key(0), [3, 4, 2])
      >>> xs, ys = jax.random.normal(jax.random.key(1), (6, 3)), jnp.zeros((6, 2))
      >>> scale = fbp.statistics.gradient_noise_scale(params, xs, ys)
      >>> scale.b_simple.shape, bool(scale.trace >= 0)
      ((), True)
    """
    core.check(net, params, xs, ys, layered=True)
    n = xs.shape[0]
    if n < 2:
        raise ValueError(
            f"Expected at least two examples for a variance, got xs of shape {xs.shape}"
        )
    _, (params, xs, ys) = core.working_precision(params, xs, ys)
    result = core.backprop_batch(net, params, xs, ys, key=key)
    mean_sq = sum(
        jnp.sum((g / n) ** 2)
        for g in jax.tree.leaves(core.summed_gradients(result.deltas, result.cache, net=net))
    )
    squared = (
        norms_from_record(result, net=net).total ** 2
    )  # ||g_i||^2, from the error terms (per_example)
    # A sum of squared deviations is never negative; rounding can leave -1e-17 at 0.
    trace = jnp.maximum((jnp.sum(squared) - n * mean_sq) / (n - 1), 0)
    grad_norm_sq = mean_sq - trace / n
    return NoiseScale(_noise_ratio(trace, grad_norm_sq), trace, grad_norm_sq)


def _noise_ratio(trace: Array, grad_norm_sq: Array) -> Array:
    """trace / grad_norm_sq, with +inf for (trace > 0, 0) and NaN for (0, 0) chosen
    explicitly (`gradient_noise_scale`), not left to the division."""
    zero = grad_norm_sq == 0
    ratio = trace / jnp.where(zero, 1, grad_norm_sq)
    return jnp.where(zero, jnp.where(trace > 0, jnp.inf, jnp.nan), ratio)

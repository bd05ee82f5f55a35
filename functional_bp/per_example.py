r"""Per-example gradients, their norms, clipping and DP-SGD, from the error terms.

A dense layer's per-example weight gradient is the outer product delta_i (a_i^{l-1})^T
(eq 99), so its Frobenius norm is ||delta_i|| ||a_i^{l-1}||, and the bias gradient's is
||delta_i||:

\[ \lVert \delta_i (a_i^{l-1})^\top \rVert_F = \lVert \delta_i \rVert \, \lVert a_i^{l-1}
\rVert, \qquad \lVert \partial C_i / \partial b^l \rVert = \lVert \delta_i \rVert. \]

Norms and clipping therefore cost O(batch * sum_l n_l) memory, never the
O(batch * sum_l n_in n_out) of materialised per-example gradients.

A convolution's per-example weight gradient is a sum of outer products over positions,
with no such factorisation: its norm is taken from the per-example gradient itself,
delta_i^l (filters, positions) times the receptive fields of a_i^{l-1} (positions,
C kh kw), one batched matrix product with the multiply-adds of the summed gradient and
batch x filters x C x kh x kw entries held (2.6 M floats for the book's second
convolution, 40 x 20 x 5 x 5, at batch 128). Dense layers of the same network keep the
outer-product norm; pooling, `Flatten` and `Dropout` have no weights.

`ClippedGradient` and `PrivateGradient` are the same quantities as gradients for
`functional_bp.training`: a DP-SGD step is ``training.train_step(key, optax.sgd(eta),
params, state, xs, ys, gradient=PrivateGradient(clip_norm, noise_multiplier))``. With
Poisson sampling (`functional_bp.privacy`) a batch is padded to a fixed size: ``mask``
marks its real examples (a padded one contributes nothing) and ``expected_batch_size``
(q N) replaces the batch size in the mean and in the noise's std, sigma C / (q N).

The noise. A DP step at [784, 1024, 1024, 10], batch 256, float32, costs about as much
as its Gaussian draw on top of a plain step: the clipped pass itself is 0.98-1.00x a
plain `train_step`, the draw of 1.86 M normals 0.5-0.6x. Measured on this project's
2-core CPU (shared, loaded; medians of interleaved runs, each row the DP step over a
plain `train_step` with `optax.sgd`), for the same clipped pass and these draws:

| noise draw | DP step / plain step |
| --- | --- |
| `jax.random.normal` per leaf, the step's threefry2x32 key | 1.33-1.54 |
| one draw over all entries, concatenated and split back | 1.91-2.08 |
| per leaf, a derived ``"rbg"`` key (XLA RngBitGenerator) | 3.36-3.64 |
| per leaf, a derived ``"unsafe_rbg"`` key | 3.38-3.54 |
| Box-Muller from threefry uniforms | 3.90-4.24 |
| per leaf, a derived ``"philox2x32"`` / ``"philox4x32"`` key | 1.36-1.39 |
| per leaf, a derived ``"threefry4x32"`` key | 1.32-1.38 |

The draw is JAX's default, `jax.random.normal` per leaf from the step's key, split once
per leaf, in the params' dtype: within the noise of the fastest measured (threefry4x32,
a few per cent faster in these loaded runs), exact under `jax.vmap` (so
`training.many` runs equal separate runs) and identical across devices, unlike rbg and
unsafe_rbg (JAX documents that under vmap they draw a whole batch from the first key,
and that their outputs were never put through BigCrush; on a CPU they are also the
slowest). What remains above 1.0x is the cost of the Gaussian itself (the inverse error
function on 1.86 M uniforms).
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from functional_bp import core
from functional_bp._validation import (
    check_key,
    check_number,
    check_values,
    is_traced,
    non_negative,
    optional_key,
    positive,
)
from functional_bp.layers import is_dense
from functional_bp.network import Network, jit_with_net
from functional_bp.params import Layer, Params

Array = jax.Array

__all__ = [
    "ClippedGradient",
    "PerExampleNorms",
    "PrivateGradient",
    "clipped_grad",
    "gaussian_like",
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


@check_values(key=optional_key)
@jit_with_net(half_in_float32=True)
def per_example_grads(
    params: Params, xs: Array, ys: Array, *, net: Network = Network(), key: Optional[Array] = None
):
    """`backprop` of every example in a batch: eq 99 for each example
    (`functional_bp.core.per_example_gradients`).

    Args:
      params: a list of `Layer`.
      xs: shape (batch, n_in).
      ys: shape (batch, n_out).
      net: the `Network`.
      key: draws the `functional_bp.layers.Dropout` masks, if any.

    Returns:
      A list of `Layer`; every leaf has a leading batch axis: w is (batch, n_out, n_in)
      for a dense layer, (batch, filters, C, kh, kw) for a convolution.

    Examples:
      >>> params = init_mlp(jax.random.key(0), [3, 4, 2])
      >>> xs, ys = jnp.ones((5, 3)), jnp.zeros((5, 2))
      >>> [g.w.shape for g in fbp.per_example.per_example_grads(params, xs, ys)]
      [(5, 4, 3), (5, 2, 4)]
    """
    core.check(net, params, xs, ys, layered=True)
    record = core.backprop_batch(net, params, xs, ys, key=key)
    return core.per_example_gradients(record.deltas, record.cache, net=net)


def _norm(x: Array) -> Array:
    """The L2 norm over the last axis, in at least float32 and scaled by the largest
    entry, so that no square overflows (float16 activations above 256) or underflows."""
    x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    largest = jnp.max(jnp.abs(x), axis=-1, keepdims=True)
    safe = jnp.where(largest == 0, 1, largest)
    return safe[..., 0] * jnp.sqrt(jnp.sum((x / safe) ** 2, axis=-1))


def norms_from_record(record: core.Record, *, net: Network = Network()) -> PerExampleNorms:
    r"""||delta_i a_i^T||_F = ||delta_i|| ||a_i|| per layer (eq 99 is an outer product)
    and ||delta_i|| for the bias (eq 7), from the core's record; in at least float32:
    \( \lVert \delta_i a_i^\top \rVert_F = \lVert \delta_i \rVert \, \lVert a_i \rVert \).
    A convolution's (in ``net.layers``) from its per-example gradient (module notes).

    Examples:
      >>> params = init_mlp(jax.random.key(0), [3, 4, 2])
      >>> xs, ys = jnp.ones((5, 3)), jnp.zeros((5, 2))
      >>> record = fbp.core.backprop_batch(Network(), params, xs, ys)
      >>> fbp.per_example.norms_from_record(record).total.shape
      (5,)
    """
    layers = []
    for kind, delta, a_prev in core.layer_terms(net, record.deltas, record.cache):
        if is_dense(kind):
            delta_norm = _norm(delta)
            layers.append(Layer(delta_norm * _norm(a_prev), delta_norm))
        else:
            g = kind.per_example_gradient(delta, a_prev)
            layers.append(
                Layer(
                    *(_norm(leaf.reshape(leaf.shape[0], math.prod(leaf.shape[1:]))) for leaf in g)
                )
            )
    total = _norm(jnp.stack([leaf for layer in layers for leaf in layer], axis=-1))
    return PerExampleNorms(total, layers)


@check_values(key=optional_key)
@jit_with_net(half_in_float32=True)
def per_example_grad_norms(
    params: Params, xs: Array, ys: Array, *, net: Network = Network(), key: Optional[Array] = None
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
      net: the `Network`; a convolution's norms come from its per-example gradient
        (module notes).
      key: draws the `functional_bp.layers.Dropout` masks, if any.

    Returns:
      `PerExampleNorms`: ``total`` of shape (batch,) and per-layer ``layers``.

    Examples:
      >>> params = init_mlp(jax.random.key(0), [3, 4, 2])
      >>> xs, ys = jnp.ones((5, 3)), jnp.zeros((5, 2))
      >>> norms = fbp.per_example.per_example_grad_norms(params, xs, ys)
      >>> norms.total.shape, len(norms.layers)
      ((5,), 2)
    """
    core.check(net, params, xs, ys, layered=True)
    norms = norms_from_record(core.backprop_batch(net, params, xs, ys, key=key), net=net)
    return jax.tree.map(lambda norm: norm.astype(xs.dtype), norms)


def clip_weights(total_norms: Array, clip_norm) -> Array:
    """min(1, C / ||g_i||). An exactly zero gradient keeps weight 1; a NaN norm gives a
    NaN weight, so it shows in the result instead of passing unclipped."""
    safe = jnp.where(total_norms == 0, 1, total_norms)
    return jnp.minimum(1, clip_norm / safe)


def _denominator(batch: int, expected_batch_size):
    """What the clipped sum is divided by: q N when given (a mask requires it), else the
    batch."""
    return batch if expected_batch_size is None else expected_batch_size


def _real(mask: Array) -> Array:
    """1 where the mask says a real example, 0 elsewhere: only an entry exactly True (or
    1) counts, so no mask, traced or not, can weight an example above 1."""
    return (mask == 1).astype(jnp.float32)


def _clipped_mean(
    net, params, xs, ys, clip_norm, expected_batch_size=None, mask=None, key=None
) -> list[Layer]:
    """One weighted backward pass: sum_i w_i delta_i a_i^T with w_i = m_i min(1, C/||g_i||)
    / B, m_i the mask (1 without one), B the expected batch size or the real examples.
    ``key`` draws the dropout masks of a network that has them."""
    record = core.backprop_batch(net, params, xs, ys, key=key)
    weights = clip_weights(norms_from_record(record, net=net).total, clip_norm)
    if mask is not None:
        weights = weights * _real(mask).astype(weights.dtype)
    weights = weights / _denominator(xs.shape[0], expected_batch_size)
    weighted = [
        delta * weights.reshape(-1, *[1] * (delta.ndim - 1)).astype(delta.dtype)
        for delta in record.deltas
    ]
    return core.summed_gradients(weighted, record.cache, net=net)


def gaussian_like(key: Array, tree):
    r"""Standard normal noise of the structure, shapes and dtypes of ``tree``'s leaves,
    \( \mathcal{N}(0, I) \): one independent draw per leaf from ``key`` (JAX's default
    generator; the module's notes compare the others).

    Examples:
      >>> noise = fbp.per_example.gaussian_like(jax.random.key(0), [jnp.zeros((2, 3), jnp.float32)])
      >>> noise[0].shape, noise[0].dtype
      ((2, 3), dtype('float32'))
    """
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(key, len(leaves))
    noise = [jax.random.normal(k, leaf.shape, leaf.dtype) for leaf, k in zip(leaves, keys)]
    return jax.tree.unflatten(treedef, noise)


def _noisy_clipped_mean(
    key, net, params, xs, ys, clip_norm, noise_multiplier, expected_batch_size=None, mask=None
) -> list[Layer]:
    """`_clipped_mean` plus N(0, (sigma C / B)^2) on every entry, drawn from ``key`` (and
    the dropout masks from a key split from it, for a network that has dropout)."""
    drop_key = None
    if net.has_dropout:
        key, drop_key = jax.random.split(key)
    grads = _clipped_mean(net, params, xs, ys, clip_norm, expected_batch_size, mask, drop_key)
    std = noise_multiplier * clip_norm / _denominator(xs.shape[0], expected_batch_size)
    noise = gaussian_like(key, grads)
    return jax.tree.map(lambda g, z: g + (std * z).astype(g.dtype), grads, noise)


def _check_batch_fields(gradient, xs) -> None:
    """Trace-time: the mask is one entry per example of the batch."""
    mask = gradient.mask
    if mask is None:
        return
    batch = np.shape(xs)[0]
    if np.shape(mask) != (batch,):
        raise ValueError(
            f"Expected mask to have shape ({batch},) (one entry per example of xs), got "
            f"shape {np.shape(mask)} instead"
        )


def _check_batch_values(gradient) -> None:
    check_number(
        gradient.expected_batch_size,
        "expected_batch_size",
        minimum=0,
        inclusive=False,
        optional=True,
    )
    mask = gradient.mask
    if mask is None:
        return
    dtype = getattr(mask, "dtype", None)
    if dtype is None or not (
        jnp.issubdtype(dtype, jnp.bool_)
        or jnp.issubdtype(dtype, jnp.integer)
        or jnp.issubdtype(dtype, jnp.floating)
    ):
        shown = f"an array of {dtype}" if dtype is not None else type(mask).__name__
        raise TypeError(
            f"Expected mask to be an array of bool (or 0 and 1) of shape (batch,), got "
            f"{shown} instead"
        )
    if gradient.expected_batch_size is None:
        # Dividing by the count of real examples would make the mean's scale, and the
        # noise's, depend on who was sampled: the accountant assumes q N.
        raise ValueError(
            "Expected expected_batch_size (q N, the mean batch of Poisson sampling) with "
            "a mask, got None: the clipped sum is divided by it, never by the count of "
            "real examples"
        )
    _check_zero_one(mask)


def _check_zero_one(mask) -> None:
    """A concrete mask holds only 0 and 1 (True and False): an entry of 2 would weight an
    example twice, past the clip norm the privacy guarantee rests on."""
    if is_traced(mask) or jnp.issubdtype(mask.dtype, jnp.bool_) or np.size(mask) == 0:
        return
    try:
        values = np.asarray(mask)
    except jax.errors.ConcretizationTypeError:  # a constant inside the caller's jit
        return
    bad = ~np.isin(values, (0, 1))
    if bad.any():
        first = int(np.argmax(bad))
        raise ValueError(
            f"Expected mask to hold only 0 and 1 (or True and False), got {int(bad.sum())} "
            f"other entries, the first mask[{first}] = {values[first]}: a weight above 1 "
            f"would break the clip norm's bound on each example's contribution"
        )


@check_values(clip_norm=positive, key=optional_key)
@jit_with_net(half_in_float32=True)
def clipped_grad(
    params: Params,
    xs: Array,
    ys: Array,
    clip_norm: float,
    *,
    net: Network = Network(),
    key: Optional[Array] = None,
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
      key: draws the `functional_bp.layers.Dropout` masks, if any.

    Examples:
      >>> params = init_mlp(jax.random.key(0), [3, 4, 2])
      >>> xs, ys = jnp.ones((5, 3)), jnp.zeros((5, 2))
      >>> [g.w.shape for g in fbp.per_example.clipped_grad(params, xs, ys, 1.0)]
      [(4, 3), (2, 4)]
    """
    core.check(net, params, xs, ys, layered=True)
    return _clipped_mean(net, params, xs, ys, clip_norm, key=key)


@check_values(key=check_key, clip_norm=positive, noise_multiplier=non_negative)
@jit_with_net(half_in_float32=True)
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

    Feed it to any optax optimizer, or train with `PrivateGradient`. What it guarantees
    and what voids it: as `PrivateGradient` (this is its fixed-batch form: account for
    it as Poisson sampling only if the batch was drawn so).

    Args:
      key: a `jax.random` key for the noise (and, split from it, the dropout masks of a
        network with `functional_bp.layers.Dropout`).
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
    core.check(net, params, xs, ys, layered=True)
    return _noisy_clipped_mean(key, net, params, xs, ys, clip_norm, noise_multiplier)


@core.gradient_class
class ClippedGradient(core.Gradient):
    r"""`clipped_grad` as a training gradient: the mean of per-example gradients clipped
    to norm ``clip_norm`` (a leaf: traced, per run under `training.many`), each example
    weighted by \( \min(1, C / \lVert g_i \rVert) \).

    With a ``mask`` (shape (batch,), True or 1 for a real example, False or 0 for
    padding), a masked example contributes nothing; with ``expected_batch_size`` (q N
    for Poisson sampling) the clipped sum is divided by it instead of by the batch:

    \[ \bar g = \frac{1}{B} \sum_i m_i \min\left(1, \frac{C}{\lVert g_i \rVert}
    \right) g_i, \]

    B the expected batch size when given, else the batch. A mask needs the expected
    batch size (a mean over the count of real examples would depend on who was sampled)
    and holds only True/False or 0/1: a concrete mask with any other entry (2, 0.5,
    NaN) is refused, and a traced one counts an entry as real only where it equals 1.
    Masked entries must still be finite (pad with real examples, as
    `privacy.poisson_batch` does).

    What it guarantees: every example's contribution to the sum has norm at most
    ``clip_norm`` (its sensitivity), whatever the mask. What voids it: nothing the class
    accepts; a network whose per-example gradients depend on other examples would (no
    layer type of this library couples examples).

    Examples:
      >>> params = init_mlp(jax.random.key(0), [3, 4, 2])
      >>> xs, ys = jnp.ones((5, 3)), jnp.zeros((5, 2))
      >>> gradient = fbp.per_example.ClippedGradient(clip_norm=1.0)
      >>> gradient(None, Network(), params, xs, ys)[0].w.shape
      (4, 3)
      >>> mask = jnp.array([True, True, True, False, False])
      >>> padded = fbp.per_example.ClippedGradient(1.0, expected_batch_size=3.0, mask=mask)
      >>> padded(None, Network(), params, xs, ys)[0].w.shape
      (4, 3)
    """

    clip_norm: float
    expected_batch_size: Optional[float] = None
    mask: Optional[Array] = None

    layered = True

    def __call__(self, key, net, params, xs, ys):
        return _clipped_mean(
            net, params, xs, ys, self.clip_norm, self.expected_batch_size, self.mask, key
        )

    def check(self, net, params, xs, ys) -> None:
        core.check(net, params, xs, ys, layered=True)
        _check_batch_fields(self, xs)

    def check_values(self) -> None:
        check_number(self.clip_norm, "clip_norm", minimum=0, inclusive=False)
        _check_batch_values(self)


@core.gradient_class
class PrivateGradient(core.Gradient):
    r"""`private_grad` as a training gradient (DP-SGD): clipped to ``clip_norm``, plus
    noise of std ``noise_multiplier * clip_norm / batch`` drawn from the step's key,
    \( \sigma C / B \).

    ``mask`` and ``expected_batch_size`` as in `ClippedGradient`: with Poisson sampling
    at rate q over N examples (`privacy.poisson_epoch`), B = q N in the mean and in the
    noise, the std is \( \sigma C / (q N) \), and padded examples contribute nothing:

    \[ g = \frac{1}{q N} \left[ \sum_i m_i \min\left(1, \frac{C}{\lVert g_i
    \rVert}\right) g_i + \mathcal{N}(0, \sigma^2 C^2 I) \right]. \]

    What it guarantees: one step is the Gaussian mechanism on a sum of sensitivity C
    (each example clipped, the mask weighting none above 1), with noise std sigma C
    before the division. The (epsilon, delta) of `privacy.epsilon` holds for a run of
    such steps when each batch is a Poisson sample at the rate and for the number of
    steps given to the accountant (`privacy.poisson_epoch` runs exactly that). What
    voids it: fixed-size or shuffled batches accounted as Poisson ones, a key reused
    across steps (the same noise twice), more steps than were accounted, or an expected
    batch size other than q N.

    Examples:
      >>> params = init_mlp(jax.random.key(0), [3, 4, 2])
      >>> xs, ys = jnp.ones((5, 3)), jnp.zeros((5, 2))
      >>> gradient = fbp.per_example.PrivateGradient(clip_norm=1.0, noise_multiplier=1.1)
      >>> gradient(jax.random.key(1), Network(), params, xs, ys)[0].w.shape
      (4, 3)
    """

    clip_norm: float
    noise_multiplier: float
    expected_batch_size: Optional[float] = None
    mask: Optional[Array] = None

    layered = True

    def __call__(self, key, net, params, xs, ys):
        if key is None:
            raise ValueError("PrivateGradient draws noise: give the step a jax.random key")
        return _noisy_clipped_mean(
            key,
            net,
            params,
            xs,
            ys,
            self.clip_norm,
            self.noise_multiplier,
            self.expected_batch_size,
            self.mask,
        )

    def check(self, net, params, xs, ys) -> None:
        core.check(net, params, xs, ys, layered=True)
        _check_batch_fields(self, xs)

    def check_values(self) -> None:
        check_number(self.clip_norm, "clip_norm", minimum=0, inclusive=False)
        check_number(self.noise_multiplier, "noise_multiplier", minimum=0)
        _check_batch_values(self)

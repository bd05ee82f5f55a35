r"""Curvature from the backward pass: the diagonal of the generalized Gauss-Newton matrix
(exact and Monte-Carlo, of the mean or of every example) and its Kronecker factors
(BackPACK's DiagGGNExact, DiagGGNMC, BatchDiagGGNExact, BatchDiagGGNMC, KFLR and KFAC,
in JAX).

The GGN of the mean cost is (1/N) sum_i J_i^T H_i J_i, with J_i the Jacobian of the
network's output and H_i the Hessian of the cost in it:

\[ G = \frac{1}{N} \sum_i J_i^\top H_i J_i. \]
 Write H_i = sum_k lambda_ik
v_ik v_ik^T (its eigendecomposition: a symmetric factor, with signs where H is not
positive semi-definite). Then J_i^T v_ik is eq 96 run from delta^L = v_ik (after sigma'
where the output is a^L): the backward pass, with a column of the factor in place of
dC/da^L. Eq 99 gives its outer products with a_i^{l-1}, so

  diag GGN of w^l = (1/N) sum_i sum_k lambda_ik (b_ik^l)^2 ((a_i^{l-1})^2)^T,

\[ \operatorname{diag} G_{w^l} = \frac{1}{N} \sum_i \sum_k \lambda_{ik} (b_{ik}^l)^2
\left((a_i^{l-1})^2\right)^\top, \]

with b_ik^l the column backpropagated to layer l: n_L backward passes, no Jacobian.

Numerics. Everything is computed in at least float32 (LAPACK's eigh has no float16 or
bfloat16): half-precision params, xs and ys are cast up first, and the results come
back in the params' dtype (the running average of `scale_by_diag_ggn` is kept in at
least float32). A concrete xs or ys holding NaN or inf is refused with a ValueError
naming it, before any computation; under your own `jax.jit` or `jax.vmap` it is a
tracer and is not checked. The preconditioner of `scale_by_diag_ggn` clamps the
curvature at 0 (a cost whose Hessian is indefinite has a GGN that is not positive
semi-definite), so its step is always a descent direction.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from functional_bp import core
from functional_bp._second_order import diag_hessian, ggn_vector_product, hessian_vector_product
from functional_bp._validation import (
    check_int,
    check_key,
    check_number,
    check_values,
    finite_array,
)
from functional_bp.equations import output_error
from functional_bp.layers import is_dense
from functional_bp.network import Network, jit_with_net
from functional_bp.params import Layer, Params

Array = jax.Array

__all__ = [
    "CurvatureTransformation",
    "DiagGGNState",
    "KFACFactors",
    "batch_diag_ggn",
    "batch_diag_ggn_mc",
    "diag_ggn",
    "diag_ggn_descent",
    "diag_ggn_mc",
    "diag_hessian",
    "ggn_vector_product",
    "hessian_vector_product",
    "kfac_factors",
    "kfac_factors_mc",
    "mean_diag_ggn",
    "scale_by_diag_ggn",
]


def _cast(tree, dtype):
    """Every leaf of ``tree`` in ``dtype``."""
    return jax.tree.map(lambda leaf: leaf.astype(dtype), tree)


def _hessian_factor(net: Network, z_L: Array, a_L: Array, y: Array) -> tuple[Array, Array]:
    """For one example, H = V diag(lambda) V^T and the columns V turned into output
    errors, shape (n_L, n_L) (column k is row k). H is the Hessian of the cost in z^L
    where it has a closed form there, else in a^L (then each column goes through sigma')."""
    form = net.cost.closed_form(net.output_activation)
    if form is not None:
        hessian = jax.hessian(form.fn)(z_L, y)
    else:
        hessian = jax.hessian(net.cost.fn)(a_L, y)
    eigenvalues, vectors = jnp.linalg.eigh(hessian)
    columns = vectors.T
    if form is None:
        backward = functools.partial(net.output_activation.backward, z_L, a_L)
        columns = jax.vmap(backward)(columns)
    return eigenvalues, columns


def _backpropagated(net: Network, params: Params, cache: core.Cache, columns: Array) -> list[Array]:
    """Eq 96 for each of K output errors per example: columns (batch, K, n_L) to
    [b^1, ..., b^L], each (batch, K, n_l)."""
    return jax.vmap(
        lambda delta_L: core.backward_pass(net, params, cache, delta_L), in_axes=1, out_axes=1
    )(columns)


def _factor_columns(net: Network, params: Params, xs: Array, ys: Array):
    """The forward cache, the weights lambda (batch, n_L) and the backpropagated columns."""
    cache = core.forward_pass(net, params, xs)
    ys = core.targets(ys, cache.activations[-1])  # integer class labels to one-hot
    factor = functools.partial(_hessian_factor, net)
    weights, columns = jax.vmap(factor)(cache.zs[-1], cache.activations[-1], ys)
    return cache, weights, _backpropagated(net, params, cache, columns)


def _squared_columns(kind, weights: Array, b: Array, a: Array) -> Layer:
    """sum_k lambda_ik (eq 99 of column b_ik)^2 for one layer, per example i. A dense
    layer's squares factor, (b_ik^l)^2 ((a_i^{l-1})^2)^T, and are summed over k first; a
    convolution's do not (a sum over positions), so each column's per-example gradient
    is formed: batch x K x filters x C x kh x kw entries."""
    if is_dense(kind):
        s = jnp.einsum("ik,ikn->in", weights, b**2)
        return Layer(s[:, :, None] * (a**2)[:, None, :], s)
    n, k = b.shape[:2]
    g = kind.per_example_gradient(b.reshape(n * k, *b.shape[2:]), jnp.repeat(a, k, axis=0))
    return jax.tree.map(
        lambda leaf: jnp.einsum(
            "ik,ik...->i...", weights, (leaf**2).reshape(n, k, *leaf.shape[1:])
        ),
        g,
    )


def _diagonal(
    net: Network, cache: core.Cache, weights: Array, columns: list[Array], n: int
) -> list[Layer]:
    """(1/N) sum_i sum_k lambda_ik (b_ik^l)^2 ((a_i^{l-1})^2)^T per layer (b: without the
    a factor): eq 99 squared entry by entry, summed over the columns first."""
    diagonal = []
    for kind, b, a in core.layer_terms(net, columns, cache):
        if is_dense(kind):
            s = core.Dense.gradient(jnp.einsum("ik,ikn->in", weights, b**2), a**2)
        else:
            s = jax.tree.map(
                lambda leaf: jnp.sum(leaf, axis=0), _squared_columns(kind, weights, b, a)
            )
        diagonal.append(jax.tree.map(lambda g: g / n, s))
    return diagonal


def _per_example_diagonal(
    net: Network, cache: core.Cache, weights: Array, columns: list[Array]
) -> list[Layer]:
    """sum_k lambda_ik (b_ik^l)^2 ((a_i^{l-1})^2)^T per example and layer, not summed
    over i: w of shape (batch, n_l, n_{l-1}), b of shape (batch, n_l)."""
    terms = core.layer_terms(net, columns, cache)
    return [_squared_columns(kind, weights, b, a) for kind, b, a in terms]


def _kfac(cache: core.Cache, weights: Array, columns: list[Array], n: int) -> list[KFACFactors]:
    """A = (1/N) sum_i abar_i abar_i^T and G = (1/N) sum_i sum_k lambda_ik b_ik b_ik^T."""
    factors = []
    for b, a in zip(columns, cache.activations):
        a_bar = jnp.concatenate([a, jnp.ones_like(a[:, :1])], axis=1)
        # One matrix product over the N K columns, (N K, n_l)^T (N K, n_l).
        columns_of = b.reshape(-1, b.shape[-1])
        g = (columns_of * weights.reshape(-1, 1)).T @ columns_of / n
        factors.append(KFACFactors(a_bar.T @ a_bar / n, g))
    return factors


def _samples(value: Any, name: str) -> None:
    """A `check_values` rule: ``samples`` an int >= 1, bools refused (seen before jit,
    where True and 1 would share a compiled program)."""
    check_int(value, name)


@check_values(xs=finite_array, ys=finite_array)
@jit_with_net
def diag_ggn(
    params: Params,
    xs: Array,
    ys: Array,
    *,
    net: Network = Network(),
) -> list[Layer]:
    r"""The diagonal of the generalized Gauss-Newton matrix of the mean cost,
    (1/N) sum_i J_i^T H_i J_i, in the structure of params (BackPACK's DiagGGNExact):
    \( \operatorname{diag} \frac{1}{N} \sum_i J_i^\top H_i J_i \).

    Where the cost has a closed form in z^L for the output activation (cross-entropy
    after a sigmoid, log-likelihood after a softmax or a sigmoid), J is the Jacobian of
    z^L and H the Hessian of the cost in z^L; otherwise J is the Jacobian of a^L and H
    the Hessian in a^L (I for "quadratic", 2I for "squared_error"). Computed by
    backpropagating the n_L columns of the eigendecomposition of each H_i through eq 96.

    For a cost whose Hessian is indefinite (a `Cost` of your own), entries can be
    negative: this is the exact diagonal; `scale_by_diag_ggn` clamps it. Computed in
    at least float32, returned in the params' dtype.

    Args:
      params: a list of `Layer`.
      xs: shape (batch, n_in).
      ys: shape (batch, n_out).
      net: the `Network`.

    Examples:
      >>> params = init_mlp(jax.random.key(0), [3, 4, 2])
      >>> xs, ys = jnp.ones((5, 3)), jnp.zeros((5, 2))
      >>> [d.w.shape for d in fbp.curvature.diag_ggn(params, xs, ys)]
      [(4, 3), (2, 4)]
    """
    core.check(net, params, xs, ys, layered=True)
    return mean_diag_ggn(net, params, xs, ys)


def mean_diag_ggn(net: Network, params: Params, xs: Array, ys: Array) -> list[Layer]:
    """`diag_ggn` without the checks: for use inside a trace that has run `core.check`.

    Examples:
      >>> params = init_mlp(jax.random.key(0), [3, 4, 2])
      >>> xs, ys = jnp.ones((5, 3)), jnp.zeros((5, 2))
      >>> [d.b.shape for d in fbp.curvature.mean_diag_ggn(Network(), params, xs, ys)]
      [(4,), (2,)]
    """
    dtype, (params, xs, ys) = core.working_precision(params, xs, ys)
    cache, weights, columns = _factor_columns(net, params, xs, ys)
    return _cast(_diagonal(net, cache, weights, columns, xs.shape[0]), dtype)


@check_values(xs=finite_array, ys=finite_array)
@jit_with_net
def batch_diag_ggn(
    params: Params,
    xs: Array,
    ys: Array,
    *,
    net: Network = Network(),
) -> list[Layer]:
    r"""The diagonal of every example's GGN, diag(J_i^T H_i J_i), without the mean over
    the batch (BackPACK's BatchDiagGGNExact): in the structure of params with a leading
    batch axis, w of shape (batch, n_l, n_{l-1}) and b of shape (batch, n_l):

    \[ \operatorname{diag}\left(J_i^\top H_i J_i\right)_{w^l} = \sum_k \lambda_{ik}
    (b_{ik}^l)^2 \left((a_i^{l-1})^2\right)^\top, \qquad
    \operatorname{diag}\left(J_i^\top H_i J_i\right)_{b^l} = \sum_k \lambda_{ik}
    (b_{ik}^l)^2. \]

    The same columns as `diag_ggn` (the eigendecomposition of each H_i, backpropagated
    by eq 96), not summed over the examples: its mean over the batch is `diag_ggn`. J and
    H are those of `diag_ggn` (in z^L where the cost has a closed form there, else in
    a^L). The result holds batch x params floats, as per-example gradients do: writing
    it, not the n_L backward passes, dominates for wide layers. Computed in at least
    float32, returned in the params' dtype.

    Args:
      params: a list of `Layer`.
      xs: shape (batch, n_in).
      ys: shape (batch, n_out), or integer class labels of shape (batch,).
      net: the `Network`.

    Returns:
      A list of `Layer`, one per layer, each leaf with a leading batch axis.

    Examples:
      >>> params = init_mlp(jax.random.key(0), [3, 4, 2])
      >>> xs, ys = jnp.ones((5, 3)), jnp.zeros((5, 2))
      >>> [d.w.shape for d in fbp.curvature.batch_diag_ggn(params, xs, ys)]
      [(5, 4, 3), (5, 2, 4)]
    """
    core.check(net, params, xs, ys, layered=True)
    dtype, (params, xs, ys) = core.working_precision(params, xs, ys)
    cache, weights, columns = _factor_columns(net, params, xs, ys)
    return _cast(_per_example_diagonal(net, cache, weights, columns), dtype)


def _sampler(net: Network, function: str = "diag_ggn_mc", exact: str = "diag_ggn"):
    """``sample(key, z, a)``: a target drawn from the model's predictive distribution."""
    form = net.cost.closed_form(net.output_activation)
    if form is not None and form.sample is not None:
        return lambda key, z, a: form.sample(key, z)
    if form is None and net.cost.sample is not None:
        return lambda key, z, a: net.cost.sample(key, a)
    raise ValueError(
        f"{function} needs targets sampled from the model: cost {net.cost.name!r} after "
        f"output activation {net.output_activation.name!r} has no sample function. Give "
        f"your Cost (or its ClosedForm) one, or use {exact}"
    )


def _sampled_factor_columns(
    key: Array, net: Network, params: Params, xs: Array, samples: int, sample
):
    """`_factor_columns` with sampled targets: the forward cache, the weights 1/samples
    (batch, samples) and the backpropagated output errors delta^L(y_s) of ``samples``
    targets drawn per example from the model."""
    cache = core.forward_pass(net, params, xs)
    z_L, a_L = cache.zs[-1], cache.activations[-1]
    n = z_L.shape[0]
    keys = jax.random.split(key, (n, samples))
    targets = jax.vmap(jax.vmap(sample, in_axes=(0, None, None)))(keys, z_L, a_L)
    error = functools.partial(output_error, net=net)
    columns = jax.vmap(jax.vmap(error, in_axes=(None, None, 0)))(z_L, a_L, targets)
    weights = jnp.full((n, samples), 1 / samples, z_L.dtype)
    return cache, weights, _backpropagated(net, params, cache, columns)


@check_values(xs=finite_array, ys=finite_array)
@jit_with_net(static=("samples",))
def diag_ggn_mc(
    key: Array,
    params: Params,
    xs: Array,
    ys: Array,
    *,
    samples: int = 1,
    net: Network = Network(),
) -> list[Layer]:
    r"""An unbiased Monte-Carlo estimate of `diag_ggn` (BackPACK's DiagGGNMC).

    For each example, ``samples`` targets y_s are drawn from the model's predictive
    distribution (the one whose negative log-likelihood the cost is: N(a, I) for
    "quadratic", N(a, I/2) for "squared_error", Bernoulli(sigma(z)) for cross-entropy
    after a sigmoid, Categorical(softmax(z)) for log-likelihood after a softmax);
    E[delta^L(y_s) delta^L(y_s)^T] is then the Hessian of the cost at the output,
    \( \mathbb{E}_{y_s}[\delta^L(y_s) \delta^L(y_s)^\top] = H \), so backpropagating
    delta^L(y_s) / sqrt(samples), eqs 90-91 with the sampled target, gives an unbiased
    estimate with ``samples`` backward passes instead of n_L.
    Log-likelihood assumes targets that sum to 1 (one-hot). Sampled and computed in at
    least float32, returned in the params' dtype.

    Args:
      key: a `jax.random` key for the targets.
      params: a list of `Layer`.
      xs: shape (batch, n_in).
      ys: shape (batch, n_out); used for shapes and checks, the targets are sampled.
      samples: sampled targets per example.
      net: the `Network`.

    Examples:
      >>> params = init_mlp(jax.random.key(0), [3, 4, 2])
      >>> xs, ys = jnp.ones((5, 3)), jnp.zeros((5, 2))
      >>> estimate = fbp.curvature.diag_ggn_mc(jax.random.key(1), params, xs, ys, samples=2)
      >>> [d.w.shape for d in estimate]
      [(4, 3), (2, 4)]
    """
    core.check(net, params, xs, ys, layered=True)
    check_key(key)
    samples = check_int(samples, "samples")
    sample = _sampler(net)
    dtype, (params, xs, ys) = core.working_precision(params, xs, ys)
    cache, weights, columns = _sampled_factor_columns(key, net, params, xs, samples, sample)
    return _cast(_diagonal(net, cache, weights, columns, xs.shape[0]), dtype)


@check_values(key=check_key, xs=finite_array, ys=finite_array, samples=_samples)
@jit_with_net(static=("samples",))
def batch_diag_ggn_mc(
    key: Array,
    params: Params,
    xs: Array,
    ys: Array,
    *,
    samples: int = 1,
    net: Network = Network(),
) -> list[Layer]:
    r"""An unbiased Monte-Carlo estimate of `batch_diag_ggn`, every example's diagonal
    GGN (BackPACK's BatchDiagGGNMC), from targets sampled as in `diag_ggn_mc`:

    \[ \operatorname{diag}\left(J_i^\top H_i J_i\right)_{w^l} \approx \frac{1}{S}
    \sum_{s=1}^S (b_{is}^l)^2 \left((a_i^{l-1})^2\right)^\top, \qquad
    \mathbb{E}_{y_s}[\delta^L(y_s) \delta^L(y_s)^\top] = H_i, \]

    with b_is^l the output error delta^L(y_s) of a target y_s drawn from the model's
    predictive distribution, backpropagated to layer l (eq 96): ``samples`` backward
    passes instead of n_L. Its mean over the batch is `diag_ggn_mc` with the same key.
    Sampled and computed in at least float32, returned in the params' dtype.

    Args:
      key: a `jax.random` key for the targets.
      params: a list of `Layer`.
      xs: shape (batch, n_in).
      ys: shape (batch, n_out), or integer class labels of shape (batch,); used for
        shapes and checks, the targets are sampled.
      samples: sampled targets per example, an int >= 1.
      net: the `Network`.

    Returns:
      A list of `Layer`, one per layer, each leaf with a leading batch axis.

    Examples:
      >>> params = init_mlp(jax.random.key(0), [3, 4, 2])
      >>> xs, ys = jnp.ones((5, 3)), jnp.zeros((5, 2))
      >>> estimate = fbp.curvature.batch_diag_ggn_mc(jax.random.key(1), params, xs, ys)
      >>> [d.b.shape for d in estimate]
      [(5, 4), (5, 2)]
    """
    core.check(net, params, xs, ys, layered=True)
    sample = _sampler(net, "batch_diag_ggn_mc", "batch_diag_ggn")
    dtype, (params, xs, ys) = core.working_precision(params, xs, ys)
    cache, weights, columns = _sampled_factor_columns(key, net, params, xs, samples, sample)
    return _cast(_per_example_diagonal(net, cache, weights, columns), dtype)


class KFACFactors(NamedTuple):
    r"""The Kronecker factors of one layer's GGN block: ``jnp.kron(G, A)``, for one
    example, is the block of the parameters ordered as the row-major flattening of the
    augmented matrix [w^l | b^l], \( G \otimes A \).

    Attributes:
      A: (n_{l-1} + 1, n_{l-1} + 1): (1/N) sum_i abar_i abar_i^T, abar = [a^{l-1}; 1].
      G: (n_l, n_l): (1/N) sum_i sum_k lambda_ik b_ik b_ik^T, the backpropagated factor.

    Examples:
      >>> factors = fbp.curvature.KFACFactors(A=jnp.eye(4), G=jnp.eye(2))
      >>> jnp.kron(factors.G, factors.A).shape
      (8, 8)
    """

    A: Array
    G: Array


@check_values(xs=finite_array, ys=finite_array)
@jit_with_net
def kfac_factors(
    params: Params,
    xs: Array,
    ys: Array,
    *,
    net: Network = Network(),
) -> list[KFACFactors]:
    r"""The Kronecker factors (A, G) of every layer's GGN block, KFLR (BackPACK's name):
    the exact factor of H (as for `diag_ggn`) backpropagated, not a sampled one.

    A = (1/N) sum_i abar_i abar_i^T with abar = [a^{l-1}; 1] (bias last), and
    G = (1/N) sum_i sum_k lambda_ik b_ik b_ik^T:

    \[ A = \frac{1}{N} \sum_i \bar a_i \bar a_i^\top, \quad \bar a_i = \begin{bmatrix}
    a_i^{l-1} \\ 1 \end{bmatrix}, \qquad G = \frac{1}{N} \sum_i \sum_k \lambda_{ik}
    b_{ik} b_{ik}^\top. \]

    For one example ``jnp.kron(G, A)`` is
    exactly the GGN block of layer l; for a batch, kron of the means approximates the
    mean of the krons (the K-FAC approximation). Computed in at least float32,
    returned in the params' dtype.

    Args:
      params: a list of `Layer`.
      xs: shape (batch, n_in).
      ys: shape (batch, n_out).
      net: the `Network`.

    Returns:
      A list of `KFACFactors`, one per layer, layer 1 first.

    Examples:
      >>> params = init_mlp(jax.random.key(0), [3, 4, 2])
      >>> xs, ys = jnp.ones((5, 3)), jnp.zeros((5, 2))
      >>> [(f.A.shape, f.G.shape) for f in fbp.curvature.kfac_factors(params, xs, ys)]
      [((4, 4), (4, 4)), ((5, 5), (2, 2))]
    """
    core.check(net, params, xs, ys)
    dtype, (params, xs, ys) = core.working_precision(params, xs, ys)
    cache, weights, columns = _factor_columns(net, params, xs, ys)
    return _cast(_kfac(cache, weights, columns, xs.shape[0]), dtype)


@check_values(key=check_key, xs=finite_array, ys=finite_array, samples=_samples)
@jit_with_net(static=("samples",))
def kfac_factors_mc(
    key: Array,
    params: Params,
    xs: Array,
    ys: Array,
    *,
    samples: int = 1,
    net: Network = Network(),
) -> list[KFACFactors]:
    r"""The Kronecker factors (A, G) of every layer with G from sampled targets
    (BackPACK's KFAC; `kfac_factors` is its exact KFLR): A as in `kfac_factors`, and

    \[ G = \frac{1}{N} \sum_i \frac{1}{S} \sum_{s=1}^S g_{is} g_{is}^\top, \qquad
    \mathbb{E}_{y_s}[\delta^L(y_s) \delta^L(y_s)^\top] = H_i, \]

    with g_is the output error delta^L(y_s) of a target y_s drawn from the model's
    predictive distribution (as in `diag_ggn_mc`), backpropagated to layer l (eq 96).
    Each sample's G is an unbiased estimate of `kfac_factors`' G, from ``samples``
    backward passes instead of n_L. Sampled and computed in at least float32, returned
    in the params' dtype.

    Args:
      key: a `jax.random` key for the targets.
      params: a list of `Layer`.
      xs: shape (batch, n_in).
      ys: shape (batch, n_out), or integer class labels of shape (batch,); used for
        shapes and checks, the targets are sampled.
      samples: sampled targets per example, an int >= 1.
      net: the `Network`.

    Returns:
      A list of `KFACFactors`, one per layer, layer 1 first.

    Examples:
      >>> params = init_mlp(jax.random.key(0), [3, 4, 2])
      >>> xs, ys = jnp.ones((5, 3)), jnp.zeros((5, 2))
      >>> factors = fbp.curvature.kfac_factors_mc(jax.random.key(1), params, xs, ys, samples=2)
      >>> [(f.A.shape, f.G.shape) for f in factors]
      [((4, 4), (4, 4)), ((5, 5), (2, 2))]
    """
    core.check(net, params, xs, ys)
    sample = _sampler(net, "kfac_factors_mc", "kfac_factors")
    dtype, (params, xs, ys) = core.working_precision(params, xs, ys)
    cache, weights, columns = _sampled_factor_columns(key, net, params, xs, samples, sample)
    return _cast(_kfac(cache, weights, columns, xs.shape[0]), dtype)


# A diagonal Gauss-Newton preconditioner for optax.


class CurvatureTransformation(optax.GradientTransformationExtraArgs):
    """An optax transformation whose ``update`` takes ``diag_ggn=`` (the diagonal GGN of
    the mini-batch, structure of params). It declares that input in ``extra_inputs``,
    so `training.train_step` and `training.epoch` compute it in the same step and pass
    it; for a network with `functional_bp.layers.Dropout`, of ``net.deterministic()``
    (the curvature of the network dropout averages over, not of one draw of its masks),
    while the gradient it preconditions draws them. Wrap an `optax.chain` that contains
    `scale_by_diag_ggn` in it to keep that: ``CurvatureTransformation(*optax.chain(...))``.

    Examples:
      >>> optimizer = fbp.curvature.diag_ggn_descent(0.1)
      >>> isinstance(optimizer, fbp.curvature.CurvatureTransformation), optimizer.extra_inputs[0][0]
      (True, 'diag_ggn')
    """

    extra_inputs = (("diag_ggn", mean_diag_ggn),)


class DiagGGNState(NamedTuple):
    """The running average of the diagonal GGN and the number of updates.

    Examples:
      >>> params = init_mlp(jax.random.key(0), [3, 2])
      >>> state = fbp.curvature.scale_by_diag_ggn().init(params)
      >>> type(state).__name__, state.curvature[0].w.shape, int(state.count)
      ('DiagGGNState', (2, 3), 0)
    """

    curvature: Any
    count: Array


def scale_by_diag_ggn(damping: float = 0.1, decay: float = 0.9) -> CurvatureTransformation:
    r"""g -> g / (max(c, 0) + damping), with c the diagonal GGN of the mini-batch, or with
    ``decay`` > 0 its running average c <- decay c + (1 - decay) diag_ggn (bias-corrected,
    as Adam's second moment): a Newton step in the Gauss-Newton metric, one parameter at
    a time:

    \[ c_t = \beta c_{t-1} + (1 - \beta) \operatorname{diag} G_t, \qquad g \mapsto
    \frac{g}{\max\left(c_t / (1 - \beta^t), 0\right) + \lambda}, \]

    with \( \beta \) = ``decay`` and \( \lambda \) = ``damping``.

    The curvature is clamped at 0 before the damping. For the built-in costs (convex in
    the network's output) the GGN is positive semi-definite, c >= 0 and the clamp changes
    nothing. For a cost whose Hessian in the output is indefinite (a `Cost` of your own,
    e.g. one with negative curvature somewhere), c can be negative: c + damping < 0 would
    flip the sign of the step (gradient ascent) and c + damping ~ 0 would blow it up.
    With the clamp the preconditioner is >= damping > 0 in every entry, so the step
    -eta g / (max(c, 0) + lambda) of `diag_ggn_descent` has
    \( \langle -\eta\, g / (\max(c, 0) + \lambda), g \rangle = -\eta \sum_j g_j^2 /
    (\max(c_j, 0) + \lambda) \le 0 \): a descent direction. The state keeps the
    unclamped average.

    Computed in at least float32 (the state's running average is kept so); the updates
    come back in the gradient's dtype.

    Args:
      damping: added to the curvature; it bounds the step where the curvature is ~0.
        On the digits (sigmoid/softmax/log-likelihood, batch 10), 1e-3 and 1e-2 diverged
        and 0.1 trained well: the scale follows the cost's curvature.
      decay: the running average's decay, in [0, 1); 0 uses each mini-batch's alone.

    Examples:
      >>> params = init_mlp(jax.random.key(0), [3, 4, 2])
      >>> xs, ys = jnp.ones((5, 3)), jnp.zeros((5, 2))
      >>> optimizer = fbp.curvature.scale_by_diag_ggn(damping=0.1)
      >>> curvature = fbp.curvature.diag_ggn(params, xs, ys)
      >>> g = grad(params, xs, ys)
      >>> updates, _ = optimizer.update(g, optimizer.init(params), params, diag_ggn=curvature)
      >>> [u.w.shape for u in updates]
      [(4, 3), (2, 4)]
    """
    check_number(damping, "damping", minimum=0, inclusive=False)
    check_number(decay, "decay", minimum=0)
    if decay >= 1:
        raise ValueError(f"Expected decay in [0, 1), got {decay} instead")

    def init(params):
        def zeros(p):
            return jnp.zeros(jnp.shape(p), jnp.promote_types(jnp.result_type(p), jnp.float32))

        return DiagGGNState(jax.tree.map(zeros, params), jnp.zeros([], jnp.int32))

    def update(updates, state, params=None, *, diag_ggn=None, **extra):
        if diag_ggn is None:
            raise ValueError(
                "scale_by_diag_ggn needs diag_ggn=...: drive it with training.train_step or "
                "training.epoch, or pass the mini-batch's diag_ggn to update yourself"
            )
        count = state.count + 1
        curvature = jax.tree.map(
            lambda c, d: (decay * c + (1 - decay) * d.astype(c.dtype)).astype(c.dtype),
            state.curvature,
            diag_ggn,
        )
        correction = 1 - decay**count

        def precondition(g, c):
            work = jnp.promote_types(jnp.result_type(g), c.dtype)
            c = c.astype(work) / correction.astype(work)
            # max(c, 0): an indefinite cost's GGN can be negative; the step stays descent.
            return (g.astype(work) / (jnp.maximum(c, 0) + damping)).astype(jnp.result_type(g))

        return jax.tree.map(precondition, updates, curvature), DiagGGNState(curvature, count)

    return CurvatureTransformation(init, update)


def diag_ggn_descent(
    learning_rate: float, damping: float = 0.1, decay: float = 0.9
) -> CurvatureTransformation:
    r"""theta <- theta - learning_rate * g / (max(diag GGN, 0) + damping):
    `scale_by_diag_ggn` then `optax.scale(-learning_rate)`,
    \( \theta \leftarrow \theta - \eta \, g / (\max(\operatorname{diag} G, 0) +
    \lambda) \): a descent direction whatever the sign of the curvature (see
    `scale_by_diag_ggn`).
    Use it as any optax optimizer with `training.train_step` or `training.epoch` (the
    CLI: ``train --optimizer diag_ggn --damping ...``).

    Examples:
      >>> params = init_mlp(jax.random.key(0), [3, 2])
      >>> optimizer = fbp.curvature.diag_ggn_descent(0.1, damping=0.1)
      >>> len(optimizer.init(params))  # scale_by_diag_ggn's state and optax.scale's
      2
    """
    check_number(learning_rate, "learning_rate", minimum=0, inclusive=False)
    chained = optax.chain(scale_by_diag_ggn(damping, decay), optax.scale(-learning_rate))
    return CurvatureTransformation(*chained)

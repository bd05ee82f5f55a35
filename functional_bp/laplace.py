r"""Laplace approximations of the posterior over a trained network's parameters, from
the library's own Gauss-Newton curvature (Daxberger et al., "Laplace Redux - Effortless
Bayesian Deep Learning", NeurIPS 2021; Ritter, Botev and Barber, "A Scalable Laplace
Approximation for Neural Networks", ICLR 2018, for the Kronecker-factored one).

With the likelihood the sum of the per-example costs (the cost is a negative
log-likelihood) and an isotropic Gaussian prior N(0, tau^{-1} I), the posterior at the
MAP theta* is approximated by N(theta*, P^{-1}) with the posterior precision

\[ P = N \, G + \tau I, \qquad G = \frac{1}{N} \sum_{i=1}^{N} J_i^\top H_i J_i, \]

G the mean generalized Gauss-Newton matrix over the N training examples (what
`curvature.diag_ggn` and `curvature.kfac_factors` return, accumulated over the training
set in mini-batches by `fit`). Three structures of G:

- ``"diag"``: its diagonal, \( P = N \operatorname{diag} G + \tau \).
- ``"kron"``: per layer, the Kronecker factors (A, G^l) of `curvature.kfac_factors`,
  \( P_l = N \, (G^l \otimes A) + \tau I \), inverted and sampled through the
  eigendecompositions \( A = U_A \Lambda_A U_A^\top \), \( G^l = U_G \Lambda_G
  U_G^\top \): the eigenvalues of \( P_l \) are \( N \lambda_{G,i} \lambda_{A,j} +
  \tau \) (laplace-torch's ``KronLaplace``).
- ``"last_layer"``: the exact, full GGN block of the last layer's w and b, every other
  layer fixed at the MAP; the Jacobian of z^L in [w^L | b^L] is
  \( I \otimes \bar a^\top \), so the block is \( \frac{1}{N}\sum_i H_i \otimes \bar a_i
  \bar a_i^\top \) with \( \bar a = [a^{L-1}; 1] \).

Parameter order. Where a flat vector of a layer's parameters appears (`dense_precision`,
the ``"last_layer"`` block), it is the row-major flattening of the augmented matrix
[w^l | b^l] of shape (n_l, n_{l-1} + 1), layer 1 first: the order of
`curvature.KFACFactors`.

The predictive (`predict`, classification with softmax and log-likelihood) is the
linearised (GLM) one: \( f(x) \approx f_{\theta^*}(x) + J(x)(\theta - \theta^*) \), so
the logits are Gaussian, \( \mathcal N(f_{\theta^*}(x), J(x) P^{-1} J(x)^\top) \).
J(x) is never formed: the n_L rows of the Jacobian of z^L in z^l come from n_L backward
passes (eq 96 from delta^L = e_j), and the Jacobian in w^l is their outer product with
a^{l-1} (eq 99), which each structure of P^{-1} contracts directly.
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from functional_bp import core, curvature, gradients
from functional_bp._validation import check_int, check_key, check_number
from functional_bp.network import Network, check_network
from functional_bp.params import Layer, Params

Array = jax.Array

__all__ = [
    "METHODS",
    "STRUCTURES",
    "Posterior",
    "dense_precision",
    "fit",
    "log_marginal_likelihood",
    "logit_distribution",
    "optimize_prior_precision",
    "predict",
    "sample",
]

STRUCTURES = ("diag", "kron", "last_layer")
METHODS = ("glm_probit", "glm_mc", "nn_mc")


class Posterior(NamedTuple):
    r"""A Laplace posterior N(theta*, P^{-1}), \( P = N G + \tau I \).

    Attributes:
      params: the MAP params theta*, a list of `Layer`.
      curvature: the mean GGN G over the training set: for ``"diag"`` a list of `Layer`
        (its diagonal in the structure of params); for ``"kron"`` a list of
        `curvature.KFACFactors`; for ``"last_layer"`` the full block of the last layer,
        shape (p, p) with p = n_L (n_{L-1} + 1).
      n: N, the number of training examples.
      prior_precision: tau, a scalar.
      log_likelihood: \( \log p(D \mid \theta^*) = -\sum_i C_i(\theta^*) \), the
        negative summed cost over the training set.
      structure: ``"diag"``, ``"kron"`` or ``"last_layer"``.
      eigen: the eigendecompositions `fit` computes once for the inverse, the sampling
        and the log-determinant: for ``"kron"`` per layer (eigenvalues of A,
        eigenvectors of A, eigenvalues of G, eigenvectors of G); for ``"last_layer"``
        (eigenvalues, eigenvectors) of the block; None for ``"diag"`` (and where None,
        they are computed when needed). Eigenvalues are clipped at 0 (G is positive
        semi-definite up to rounding). Replace it with None if you replace curvature.
      net: the `Network` it was fitted with; the predictives use it and refuse another.
        Curvature, prior and log-likelihood are held in at least float32 (float16 and
        bfloat16 params keep their dtype; their curvature is computed and decomposed in
        float32).

    Examples:
      >>> from functional_bp import laplace
      >>> params = init_mlp(jax.random.key(0), [3, 4, 2])
      >>> net = Network("tanh", "softmax", "log_likelihood")
      >>> xs, ys = jnp.ones((5, 3)), jnp.array([0, 1, 0, 1, 1])
      >>> posterior = laplace.fit(params, xs, ys, structure="diag", net=net)
      >>> posterior.structure, posterior.n, [c.w.shape for c in posterior.curvature]
      ('diag', 5, [(4, 3), (2, 4)])
    """

    params: Any
    curvature: Any
    n: int
    prior_precision: Array
    log_likelihood: Array
    structure: str
    eigen: Any = None
    net: Optional[Network] = None


def _check_structure(structure: Any) -> str:
    if not isinstance(structure, str) or structure not in STRUCTURES:
        raise ValueError(f"Unknown structure {structure!r}; expected one of {list(STRUCTURES)}")
    return structure


def _check_posterior(posterior: Any) -> Posterior:
    if not isinstance(posterior, Posterior):
        raise TypeError(
            f"Expected posterior to be a laplace.Posterior (from laplace.fit), got "
            f"{type(posterior).__name__} instead"
        )
    _check_structure(posterior.structure)
    return posterior


def _augmented(layer: Layer) -> Array:
    """[w | b], shape (n_out, n_in + 1)."""
    return jnp.concatenate([layer.w, layer.b[:, None]], axis=1)


def _split(augmented: Array) -> Layer:
    return Layer(augmented[..., :-1], augmented[..., -1])


def _with_ones(a: Array) -> Array:
    return jnp.concatenate([a, jnp.ones_like(a[..., :1])], axis=-1)


def _output_hessian(net: Network, z_L: Array, a_L: Array, y: Array) -> Array:
    """H of one example in z^L: the cost's closed form in z^L where it has one, else the
    Gauss-Newton J_sigma^T H_a J_sigma (sigma' applied to both sides by its backward)."""
    form = net.cost.closed_form(net.output_activation)
    if form is not None:
        return jax.hessian(form.fn)(z_L, y)
    backward = jax.vmap(functools.partial(net.output_activation.backward, z_L, a_L))
    hessian_a = jax.hessian(net.cost.fn)(a_L, y)
    return backward(backward(hessian_a).T)


def _jacobian_rows(net: Network, params: Params, cache: core.Cache) -> list[Array]:
    """Row j of the Jacobian of z^L in z^l for every layer l, each (batch, n_L, n_l):
    eq 96 from delta^L = e_j, j = 1..n_L."""
    batch, n_out = cache.zs[-1].shape
    columns = jnp.broadcast_to(jnp.eye(n_out, dtype=cache.zs[-1].dtype), (batch, n_out, n_out))
    return jax.vmap(
        lambda delta_L: core.backward_pass(net, params, cache, delta_L), in_axes=1, out_axes=1
    )(columns)


@functools.partial(jax.jit, static_argnames=("net",))
def _last_layer_sums(params, xs, ys, *, net):
    """sum_i H_i ⊗ abar_i abar_i^T over a batch (p, p), and the summed cost."""
    _, (params, xs, ys) = core.working_precision(params, xs, ys)
    cache = core.forward_pass(net, params, xs)
    ys = core.targets(ys, cache.activations[-1])
    hessian = functools.partial(_output_hessian, net)
    hessians = jax.vmap(hessian)(cache.zs[-1], cache.activations[-1], ys)  # H_i in z^L
    a_bar = _with_ones(cache.activations[-2])
    n_out, m = hessians.shape[1], a_bar.shape[1]
    block = jnp.einsum("ijl,im,in->jmln", hessians, a_bar, a_bar).reshape(n_out * m, n_out * m)
    return block, core.example_costs(net, cache, ys).sum()


def fit(
    params: Params,
    xs: Array,
    ys: Array,
    *,
    structure: str = "diag",
    prior_precision: float = 1.0,
    batch_size: int = 1000,
    net: Network = Network(),
) -> Posterior:
    r"""The Laplace posterior at the MAP ``params``, its curvature accumulated over the
    training set (xs, ys) in mini-batches of ``batch_size``.

    The mean GGN of the training set is the batch-size-weighted mean of the mini-batches'
    means, \( G = \frac{1}{N} \sum_b B_b G_b \) (exact for each structure: the
    diagonal, the factors A and G^l, and the last layer's block are all means over
    examples). The posterior precision is then \( P = N G + \tau I \) in the structure
    chosen (module docstring); the log-likelihood at the MAP is \( -\sum_i C_i \).

    Args:
      params: the MAP params, a list of `Layer`.
      xs: the training inputs, shape (N, n_in).
      ys: their targets, shape (N, n_out), or integer class labels of shape (N,).
      structure: ``"diag"``, ``"kron"`` or ``"last_layer"``.
      prior_precision: tau, > 0; `optimize_prior_precision` picks it.
      batch_size: examples per call of the curvature.
      net: the `Network`; its cost is the negative log-likelihood.

    Returns:
      A `Posterior`.

    Examples:
      >>> from functional_bp import laplace
      >>> params = init_mlp(jax.random.key(0), [3, 4, 2])
      >>> net = Network("tanh", "softmax", "log_likelihood")
      >>> xs, ys = jnp.ones((5, 3)), jnp.array([0, 1, 0, 1, 1])
      >>> posterior = laplace.fit(params, xs, ys, structure="kron", batch_size=2, net=net)
      >>> [(f.A.shape, f.G.shape) for f in posterior.curvature]
      [((4, 4), (4, 4)), ((5, 5), (2, 2))]
      >>> laplace.fit(params, xs, ys, structure="last_layer", net=net).curvature.shape
      (10, 10)
    """
    structure = _check_structure(structure)
    check_number(prior_precision, "prior_precision", minimum=0, inclusive=False)
    batch_size = check_int(batch_size, "batch_size")
    if not isinstance(net, Network):
        raise TypeError(f"Expected net to be a Network, got {type(net).__name__} instead")
    core.check(net, params, xs, ys, name="laplace.fit")
    xs, ys = jnp.asarray(xs), jnp.asarray(ys)
    n = xs.shape[0]
    # Half-precision params: the curvature and its eigendecompositions in float32.
    dtype = jnp.promote_types(jnp.result_type(params[0].w), jnp.float32)
    total, log_likelihood = None, 0.0
    for start in range(0, n, batch_size):
        xb, yb = xs[start : start + batch_size], ys[start : start + batch_size]
        weight = xb.shape[0]
        if structure == "last_layer":
            part, cost = _last_layer_sums(params, xb, yb, net=net)
        else:
            if structure == "diag":
                part = curvature.diag_ggn(params, xb, yb, net=net)
            else:
                part = curvature.kfac_factors(params, xb, yb, net=net)
            part = jax.tree.map(functools.partial(jnp.multiply, weight), part)
            cost = gradients.loss(params, xb, yb, net=net) * weight
        total = part if total is None else jax.tree.map(jnp.add, total, part)
        log_likelihood = log_likelihood - cost
    mean = jax.tree.map(lambda leaf: (leaf / n).astype(dtype), total)
    posterior = Posterior(
        params=list(params),
        curvature=mean,
        n=int(n),
        prior_precision=jnp.asarray(prior_precision, dtype),
        log_likelihood=jnp.asarray(log_likelihood, dtype),
        structure=structure,
        net=net,
    )
    return posterior._replace(eigen=_decompose(posterior))


# The structures' eigenvalues, inverses and square roots.


class _KronEigen(NamedTuple):
    values_a: Array
    vectors_a: Array
    values_g: Array
    vectors_g: Array


def _decompose(posterior: Posterior):
    """The eigendecompositions of `Posterior.eigen` (computed in NumPy: LAPACK's, once)."""
    if posterior.structure == "diag":
        return None
    if posterior.structure == "last_layer":
        block = np.asarray(posterior.curvature)
        values, vectors = np.linalg.eigh(block)
        return jnp.asarray(np.maximum(values, 0)), jnp.asarray(vectors)
    out = []
    for factors in posterior.curvature:
        values_a, vectors_a = np.linalg.eigh(np.asarray(factors.A))
        values_g, vectors_g = np.linalg.eigh(np.asarray(factors.G))
        out.append(
            _KronEigen(
                *(jnp.asarray(v) for v in (np.maximum(values_a, 0), vectors_a)),
                *(jnp.asarray(v) for v in (np.maximum(values_g, 0), vectors_g)),
            )
        )
    return out


def _eigen(posterior: Posterior):
    return posterior.eigen if posterior.eigen is not None else _decompose(posterior)


def _kron_eigen(posterior: Posterior) -> list[_KronEigen]:
    """eigh of every layer's A and G (eigenvalues clipped at 0: PSD up to rounding)."""
    if posterior.eigen is not None:
        return [_KronEigen(*e) for e in posterior.eigen]
    out = []
    for factors in posterior.curvature:
        values_a, vectors_a = jnp.linalg.eigh(factors.A)
        values_g, vectors_g = jnp.linalg.eigh(factors.G)
        out.append(
            _KronEigen(jnp.maximum(values_a, 0), vectors_a, jnp.maximum(values_g, 0), vectors_g)
        )
    return out


def _kron_precision_values(eigen: _KronEigen, n: int, tau: Array) -> Array:
    """N lambda_G_i lambda_A_j + tau, shape (n_l, n_{l-1} + 1)."""
    return n * jnp.outer(eigen.values_g, eigen.values_a) + tau


def _last_layer_precision(posterior: Posterior, tau: Array) -> Array:
    block = posterior.curvature
    return posterior.n * block + tau * jnp.eye(block.shape[0], dtype=block.dtype)


def _curvature_eigenvalues(posterior: Posterior) -> np.ndarray:
    """The eigenvalues of G (flat, float64 NumPy, clipped at 0), over the parameters the
    posterior covers."""
    if posterior.structure == "diag":
        values = [np.ravel(leaf) for leaf in jax.tree.leaves(posterior.curvature)]
    elif posterior.structure == "kron":
        values = [np.ravel(np.outer(e.values_g, e.values_a)) for e in _kron_eigen(posterior)]
    else:
        values = [np.asarray(_eigen(posterior)[0], np.float64)]
    return np.maximum(np.concatenate(values).astype(np.float64), 0.0)


def _covered(posterior: Posterior) -> list[Layer]:
    """The layers the posterior covers: all of them, or the last one."""
    params = posterior.params
    return [params[-1]] if posterior.structure == "last_layer" else list(params)


def dense_precision(posterior: Posterior) -> Array:
    r"""The posterior precision \( P = N G + \tau I \) as a dense matrix, over the
    parameters the posterior covers (all layers, or the last one for ``"last_layer"``),
    in the order of the module docstring; block-diagonal across layers for ``"kron"``.
    For small networks and tests: it has (number of parameters)^2 entries.

    Examples:
      >>> from functional_bp import laplace
      >>> params = init_mlp(jax.random.key(0), [3, 4, 2])
      >>> net = Network("tanh", "softmax", "log_likelihood")
      >>> posterior = laplace.fit(params, jnp.ones((5, 3)), jnp.zeros(5, int), net=net)
      >>> laplace.dense_precision(posterior).shape
      (26, 26)
    """
    posterior = _check_posterior(posterior)
    tau, n = posterior.prior_precision, posterior.n
    if posterior.structure == "diag":
        diagonal = jnp.concatenate([_augmented(c).ravel() for c in posterior.curvature])
        return jnp.diag(n * diagonal + tau)
    if posterior.structure == "last_layer":
        return _last_layer_precision(posterior, tau)
    blocks = []
    for factors in posterior.curvature:
        block = n * jnp.kron(factors.G, factors.A)
        blocks.append(block + tau * jnp.eye(block.shape[0], dtype=block.dtype))
    return jax.scipy.linalg.block_diag(*blocks)


# The marginal likelihood.


def _marglik_terms(posterior: Posterior) -> tuple[float, float, int, np.ndarray]:
    """(log-likelihood, ||theta*||^2, number of parameters, N * eigenvalues of G)."""
    leaves = jax.tree.leaves(_covered(posterior))
    squared = float(sum(np.sum(np.asarray(leaf, np.float64) ** 2) for leaf in leaves))
    count = int(sum(np.size(leaf) for leaf in leaves))
    values = posterior.n * _curvature_eigenvalues(posterior)
    return float(posterior.log_likelihood), squared, count, values


def _objective(log_lik, squared, count, values, tau):
    return (
        log_lik
        - 0.5 * tau * squared
        + 0.5 * count * np.log(tau)
        - 0.5 * np.sum(np.log(values + tau))
    )


def log_marginal_likelihood(
    posterior: Posterior, prior_precision: Optional[float] = None
) -> np.float64:
    r"""The Laplace approximation of the log marginal likelihood (the evidence),

    \[ \log p(D \mid \tau) \approx \log p(D \mid \theta^*) - \frac{\tau}{2}
    \|\theta^*\|^2 + \frac{P}{2} \log \tau - \frac{1}{2} \log \det (N G + \tau I), \]

    with P the number of parameters the posterior covers (the 2 pi of the prior's and
    the posterior's normalisers cancel). The log-determinant is the sum of the logs of
    the precision's eigenvalues, \( N \lambda_k + \tau \): the diagonal, the products
    of the Kronecker factors' eigenvalues, or the eigenvalues of the last layer's block.

    Args:
      posterior: a `Posterior`.
      prior_precision: tau; the posterior's own when None.

    Returns:
      A float64 NumPy scalar.

    Examples:
      >>> from functional_bp import laplace
      >>> params = init_mlp(jax.random.key(0), [3, 4, 2])
      >>> net = Network("tanh", "softmax", "log_likelihood")
      >>> posterior = laplace.fit(params, jnp.ones((5, 3)), jnp.zeros(5, int), net=net)
      >>> bool(laplace.log_marginal_likelihood(posterior, 2.0) < 0)
      True
    """
    posterior = _check_posterior(posterior)
    tau = posterior.prior_precision if prior_precision is None else prior_precision
    check_number(tau, "prior_precision", minimum=0, inclusive=False)
    return np.float64(_objective(*_marglik_terms(posterior), float(tau)))


def optimize_prior_precision(
    posterior: Posterior, *, bounds: tuple[float, float] = (1e-8, 1e8), iterations: int = 200
) -> Posterior:
    r"""The posterior with the prior precision tau that maximises
    `log_marginal_likelihood` (laplace-torch's ``optimize_prior_precision(method=
    "marglik")``).

    In t = log tau the objective is concave,

    \[ \frac{d^2}{dt^2} = -\frac{\tau}{2} \|\theta^*\|^2 - \frac{1}{2} \sum_k
    \frac{N \lambda_k \tau}{(N \lambda_k + \tau)^2} < 0, \]

    so its maximiser is the root of the derivative \( \frac{P}{2} - \frac{\tau}{2}
    \|\theta^*\|^2 - \frac{1}{2} \sum_k \frac{\tau}{N\lambda_k + \tau} \), found by
    bisection in t (exact to float64, where gradient steps on log tau stop near it).
    Where the derivative has one sign over the bounds, the bound it points to is
    returned.

    Args:
      posterior: a `Posterior`.
      bounds: (low, high), 0 < low < high: the interval of tau searched.
      iterations: bisection steps; 200 halve the interval in t to rounding.

    Examples:
      >>> from functional_bp import laplace
      >>> params = init_mlp(jax.random.key(0), [3, 4, 2])
      >>> net = Network("tanh", "softmax", "log_likelihood")
      >>> posterior = laplace.fit(params, jnp.ones((5, 3)), jnp.zeros(5, int), net=net)
      >>> tuned = laplace.optimize_prior_precision(posterior)
      >>> best = laplace.log_marginal_likelihood(tuned)
      >>> bool(best >= laplace.log_marginal_likelihood(tuned, float(tuned.prior_precision) * 2))
      True
    """
    posterior = _check_posterior(posterior)
    if not isinstance(bounds, (tuple, list)) or len(bounds) != 2:
        raise TypeError(f"Expected bounds to be a (low, high) pair, got {bounds!r} instead")
    for value in bounds:
        check_number(value, "bounds", minimum=0, inclusive=False)
    low, high = (math.log(float(b)) for b in bounds)
    if not low < high:
        raise ValueError(f"Expected bounds with low < high, got {bounds!r} instead")
    iterations = check_int(iterations, "iterations")
    _, squared, count, values = _marglik_terms(posterior)

    def slope(t):
        tau = math.exp(t)
        return 0.5 * count - 0.5 * tau * squared - 0.5 * np.sum(tau / (values + tau))

    if slope(high) >= 0:
        t = high
    elif slope(low) <= 0:
        t = low
    else:
        for _ in range(iterations):
            middle = 0.5 * (low + high)
            if slope(middle) > 0:
                low = middle
            else:
                high = middle
        t = 0.5 * (low + high)
    dtype = jnp.result_type(posterior.prior_precision)
    return posterior._replace(prior_precision=jnp.asarray(math.exp(t), dtype))


# Sampling.


def sample(posterior: Posterior, key: Array, n: int) -> list[Layer]:
    r"""n draws of the parameters from the posterior N(theta*, P^{-1}).

    ``"diag"``: \( \theta = \theta^* + \epsilon / \sqrt{N \operatorname{diag} G + \tau}
    \). ``"kron"``: per layer, \( [w|b] = [w^*|b^*] + U_G (E \oslash \sqrt{D}) U_A^\top
    \) with \( D_{ij} = N \lambda_{G,i} \lambda_{A,j} + \tau \) and E standard normal
    (\( (U_G \otimes U_A) \operatorname{vec}(X) = \operatorname{vec}(U_G X U_A^\top) \)
    row-major). ``"last_layer"``: \( \theta_L = \theta_L^* + V (\epsilon \oslash
    \sqrt{N \lambda + \tau}) \) with \( G = V \Lambda V^\top \), the other layers at
    the MAP.

    Args:
      posterior: a `Posterior`.
      key: a `jax.random` key.
      n: the number of draws, >= 1.

    Returns:
      The params' structure, each leaf with a leading axis of size n.

    Examples:
      >>> from functional_bp import laplace
      >>> params = init_mlp(jax.random.key(0), [3, 4, 2])
      >>> net = Network("tanh", "softmax", "log_likelihood")
      >>> posterior = laplace.fit(params, jnp.ones((5, 3)), jnp.zeros(5, int), net=net)
      >>> [d.w.shape for d in laplace.sample(posterior, jax.random.key(1), 7)]
      [(7, 4, 3), (7, 2, 4)]
    """
    posterior = _check_posterior(posterior)
    check_key(key)
    n = check_int(n, "n")
    params, tau = posterior.params, posterior.prior_precision
    keys = jax.random.split(key, len(params))
    if posterior.structure == "diag":
        out = []
        for layer, c, k in zip(params, posterior.curvature, keys):
            k_w, k_b = jax.random.split(k)

            def draw(key, mean, diagonal):
                noise = jax.random.normal(key, (n, *mean.shape), mean.dtype)
                return mean[None] + noise / jnp.sqrt(posterior.n * diagonal + tau)[None]

            out.append(Layer(draw(k_w, layer.w, c.w), draw(k_b, layer.b, c.b)))
        return out
    if posterior.structure == "kron":
        out = []
        for layer, eigen, k in zip(params, _kron_eigen(posterior), keys):
            mean = _augmented(layer)
            scale = 1 / jnp.sqrt(_kron_precision_values(eigen, posterior.n, tau))
            noise = jax.random.normal(k, (n, *mean.shape), mean.dtype) * scale[None]
            draws = mean[None] + jnp.einsum(
                "ij,sjk,lk->sil", eigen.vectors_g, noise, eigen.vectors_a
            )
            out.append(_split(draws))
        return out
    values, vectors = _eigen(posterior)
    last = _augmented(params[-1])
    noise = jax.random.normal(keys[-1], (n, last.size), last.dtype)
    deltas = (noise / jnp.sqrt(posterior.n * values + tau)[None]) @ vectors.T
    draws = _split(last[None] + deltas.reshape(n, *last.shape))
    fixed = [
        jax.tree.map(lambda leaf: jnp.broadcast_to(leaf, (n, *leaf.shape)), p) for p in params[:-1]
    ]
    return fixed + [draws]


# The linearised (GLM) predictive.


@functools.partial(jax.jit, static_argnames=("net", "structure"))
def _logit_moments(params, inverse, xs, *, net, structure):
    """Mean z^L and covariance J P^{-1} J^T of a batch, (batch, n_L) and
    (batch, n_L, n_L). ``inverse``: per layer the variances (diag), the eigenvectors and
    1/eigenvalues of P_l (kron), or P^{-1} of the last layer (last_layer)."""
    cache = core.forward_pass(net, params, xs)
    mean = cache.zs[-1]
    batch, n_out = mean.shape
    if structure == "last_layer":
        a_bar = _with_ones(cache.activations[-2])
        m = a_bar.shape[1]
        blocks = inverse.reshape(n_out, m, n_out, m)
        return mean, jnp.einsum("im,jmkn,in->ijk", a_bar, blocks, a_bar)
    rows = _jacobian_rows(net, params, cache)  # each (batch, n_L, n_l)
    covariance = jnp.zeros((batch, n_out, n_out), mean.dtype)
    for b, a, layer_inverse in zip(rows, cache.activations, inverse):
        a_bar = _with_ones(a)
        if structure == "diag":
            # J_j = b_j abar^T: sum_{m,n} b_jm b_km abar_n^2 V_mn.
            weights = a_bar**2 @ layer_inverse.T  # (batch, n_l)
            covariance = covariance + jnp.einsum("ijm,im,ikm->ijk", b, weights, b)
        else:
            vectors_g, vectors_a, inverse_values = layer_inverse
            b_rotated = b @ vectors_g  # (batch, n_L, n_l)
            a_rotated = a_bar @ vectors_a  # (batch, m)
            weights = a_rotated**2 @ inverse_values.T  # (batch, n_l)
            covariance = covariance + jnp.einsum("ijm,im,ikm->ijk", b_rotated, weights, b_rotated)
    return mean, covariance


def _inverse(posterior: Posterior):
    tau, n = posterior.prior_precision, posterior.n
    if posterior.structure == "diag":
        return [1 / (n * _augmented(c) + tau) for c in posterior.curvature]
    if posterior.structure == "kron":
        return [
            (e.vectors_g, e.vectors_a, 1 / _kron_precision_values(e, n, tau))
            for e in _kron_eigen(posterior)
        ]
    values, vectors = _eigen(posterior)
    return (vectors / (n * values + tau)[None]) @ vectors.T


def _network_of(posterior: Posterior, net: Any, name: str) -> Network:
    """The posterior's own network; ``net``, when given, must be it."""
    if net is None:
        if posterior.net is None:
            raise ValueError(
                f"{name}: the posterior records no network (it was not made by laplace.fit): "
                f"pass net="
            )
        return posterior.net
    check_network(net)
    if posterior.net is not None and net != posterior.net:
        raise ValueError(
            f"{name}: expected the network the posterior was fitted with, {posterior.net!r}, "
            f"got net={net!r}: a posterior's curvature is that of its own network (leave "
            f"net out to use it)"
        )
    return net


def _check_inputs(posterior: Posterior, xs: Any, net: Network) -> None:
    core.check(net, posterior.params, xs, name="laplace's predictive")


def logit_distribution(
    posterior: Posterior, xs: Array, *, batch_size: int = 1000, net: Optional[Network] = None
) -> tuple[Array, Array]:
    r"""The linearised (GLM) predictive of the pre-activations z^L:
    \( z^L(x) \sim \mathcal N(f_{\theta^*}(x), J(x) P^{-1} J(x)^\top) \).

    J(x) is the Jacobian of z^L in the parameters the posterior covers; its rows in w^l
    are \( b_j^l \bar a^\top \) with \( b_j^l \) the backward pass from \( \delta^L = e_j
    \), so for ``"diag"`` \( \Sigma_{jk} = \sum_m b_{jm} b_{km} \sum_n \bar a_n^2
    V_{mn} \) (V = 1/P entrywise), for ``"kron"`` the same with b and abar rotated by
    \( U_G \) and \( U_A \) and \( V_{mn} = 1/(N\lambda_{G,m}\lambda_{A,n} + \tau) \),
    and for ``"last_layer"`` \( \Sigma_{jk} = \bar a^\top (P^{-1})_{jk} \bar a \).

    Args:
      posterior: a `Posterior`.
      xs: inputs, shape (batch, n_in).
      batch_size: examples per computation.
      net: None (the default) for the `Network` the posterior was fitted with
        (`Posterior.net`); another is refused.

    Returns:
      ``(mean, covariance)``: shapes (batch, n_L) and (batch, n_L, n_L).

    Examples:
      >>> from functional_bp import laplace
      >>> params = init_mlp(jax.random.key(0), [3, 4, 2])
      >>> net = Network("tanh", "softmax", "log_likelihood")
      >>> posterior = laplace.fit(params, jnp.ones((5, 3)), jnp.zeros(5, int), net=net)
      >>> mean, cov = laplace.logit_distribution(posterior, jnp.ones((6, 3)), net=net)
      >>> mean.shape, cov.shape
      ((6, 2), (6, 2, 2))
    """
    posterior = _check_posterior(posterior)
    batch_size = check_int(batch_size, "batch_size")
    net = _network_of(posterior, net, "logit_distribution")
    _check_inputs(posterior, xs, net)
    xs = jnp.asarray(xs)
    inverse = _inverse(posterior)
    means, covariances = [], []
    for start in range(0, xs.shape[0], batch_size):
        mean, cov = _logit_moments(
            posterior.params,
            inverse,
            xs[start : start + batch_size],
            net=net,
            structure=posterior.structure,
        )
        means.append(mean)
        covariances.append(cov)
    return jnp.concatenate(means), jnp.concatenate(covariances)


@functools.partial(jax.jit, static_argnames=("samples",))
def _glm_mc(key, mean, covariance, *, samples):
    values, vectors = jnp.linalg.eigh(covariance)
    roots = vectors * jnp.sqrt(jnp.maximum(values, 0))[:, None, :]  # (batch, n, n)
    noise = jax.random.normal(key, (samples, *mean.shape), mean.dtype)
    logits = mean[None] + jnp.einsum("ijk,sik->sij", roots, noise)
    return jax.nn.softmax(logits, axis=-1).mean(axis=0)


@functools.partial(jax.jit, static_argnames=("net",))
def _network_probabilities(draws, xs, *, net):
    def one(params):
        return core.forward_pass(net, params, xs).activations[-1]

    return jax.lax.map(one, draws).mean(axis=0)


def predict(
    posterior: Posterior,
    xs: Array,
    *,
    method: str = "glm_probit",
    samples: int = 100,
    key: Optional[Array] = None,
    batch_size: int = 1000,
    net: Optional[Network] = None,
) -> Array:
    r"""The posterior predictive class probabilities of a softmax network with the
    log-likelihood cost.

    - ``"glm_probit"``: the probit approximation of the linearised predictive (Laplace
      Redux's), \( \operatorname{softmax}\left(\mu / \sqrt{1 + \frac{\pi}{8}
      \operatorname{diag} \Sigma}\right) \), with \( (\mu, \Sigma) \) from
      `logit_distribution`; deterministic.
    - ``"glm_mc"``: \( \frac{1}{S} \sum_s \operatorname{softmax}(f_s) \), \( f_s \sim
      \mathcal N(\mu, \Sigma) \).
    - ``"nn_mc"``: \( \frac{1}{S} \sum_s \operatorname{softmax}(z^L(x; \theta_s)) \),
      \( \theta_s \) from `sample`: the network itself, not linearised.

    Args:
      posterior: a `Posterior`.
      xs: inputs, shape (batch, n_in).
      method: ``"glm_probit"``, ``"glm_mc"`` or ``"nn_mc"``.
      samples: S, for the Monte-Carlo methods.
      key: a `jax.random` key, needed by the Monte-Carlo methods.
      batch_size: examples per computation.
      net: None (the default) for the `Network` the posterior was fitted with
        (`Posterior.net`), which has a softmax output and the log-likelihood cost; another
        is refused.

    Returns:
      Probabilities, shape (batch, n_L); each row sums to 1.

    Examples:
      >>> from functional_bp import laplace
      >>> params = init_mlp(jax.random.key(0), [3, 4, 2])
      >>> net = Network("tanh", "softmax", "log_likelihood")
      >>> posterior = laplace.fit(params, jnp.ones((5, 3)), jnp.zeros(5, int), net=net)
      >>> probabilities = laplace.predict(posterior, jnp.ones((6, 3)), net=net)
      >>> probabilities.shape, bool(jnp.allclose(probabilities.sum(axis=1), 1))
      ((6, 2), True)
    """
    posterior = _check_posterior(posterior)
    if not isinstance(method, str) or method not in METHODS:
        raise ValueError(f"Unknown method {method!r}; expected one of {list(METHODS)}")
    samples = check_int(samples, "samples")
    batch_size = check_int(batch_size, "batch_size")
    net = _network_of(posterior, net, "predict")
    if net.output_activation.name != "softmax" or net.cost.name != "log_likelihood":
        raise ValueError(
            "predict is for classification: expected net with a softmax output and the "
            f"log_likelihood cost, got {net!r} instead (use logit_distribution)"
        )
    if method != "glm_probit":
        if key is None:
            raise ValueError(f"method {method!r} samples: pass key=jax.random.key(...)")
        check_key(key)
    _check_inputs(posterior, xs, net)
    xs = jnp.asarray(xs)
    if method == "nn_mc":
        draws = sample(posterior, key, samples)
        parts = [
            _network_probabilities(draws, xs[start : start + batch_size], net=net)
            for start in range(0, xs.shape[0], batch_size)
        ]
        return jnp.concatenate(parts)
    mean, covariance = logit_distribution(posterior, xs, batch_size=batch_size, net=net)
    if method == "glm_probit":
        variances = jnp.diagonal(covariance, axis1=1, axis2=2)
        return jax.nn.softmax(mean / jnp.sqrt(1 + jnp.pi / 8 * variances), axis=-1)
    keys = jax.random.split(key, -(-xs.shape[0] // batch_size))
    parts = [
        _glm_mc(
            k,
            mean[start : start + batch_size],
            covariance[start : start + batch_size],
            samples=samples,
        )
        for k, start in zip(keys, range(0, xs.shape[0], batch_size))
    ]
    return jnp.concatenate(parts)

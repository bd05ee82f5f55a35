r"""Second order: the Gauss-Newton and Hessian products and the exact Hessian diagonal,
from the hand-written backward pass.

- `ggn_vector_product`: G v with G = (1/N) sum_i J_i^T H_i J_i (the GGN of
  `functional_bp.curvature.diag_ggn`), without forming a matrix: a forward-mode sweep
  of the forward pass gives J_i v (Pearlmutter's R-operator), H_i acts on it in the
  output, and the backward pass (eq 96) with eq 99 maps it back, J_i^T (H_i J_i v).
- `hessian_vector_product`: H v, forward mode over the hand-written gradient.
- `diag_hessian`: the exact diagonal of the Hessian, by backpropagating the Hessian of
  the cost in each pre-activation z^l (BackPACK's DiagHessian):

\[ H_{z^l} = J_\sigma^\top (w^{l+1})^\top H_{z^{l+1}} w^{l+1} J_\sigma
   + \sum_m \left((w^{l+1})^\top \delta^{l+1}\right)_m \nabla^2_{z^l} \sigma_m(z^l). \]

All three take the tangent or return the result in the structure of params, mean the
cost over the batch like `functional_bp.loss`, run under `jax.jit` and `jax.vmap`
(vmap over several tangents), and compute in at least float32 (results in the params'
dtype). A concrete xs or ys holding NaN or inf is refused before any computation.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from functional_bp import core
from functional_bp._validation import check_values, finite_array
from functional_bp.network import Network, jit_with_net
from functional_bp.params import Layer, Params

Array = jax.Array

__all__ = ["diag_hessian", "ggn_vector_product", "hessian_vector_product"]


def _cast(tree, dtype):
    return jax.tree.map(lambda leaf: leaf.astype(dtype), tree)


def check_tangent(params: Params, v, name: str = "v") -> None:
    """Raises unless ``v`` is a list of `Layer` with the shapes and dtype of ``params``,
    naming the layer (layer 1 is params[0])."""
    if not isinstance(v, (list, tuple)) or len(v) != len(params):
        got = f"{len(v)} entries" if isinstance(v, (list, tuple)) else type(v).__name__
        raise TypeError(
            f"Expected {name} to be a list of {len(params)} Layer(w, b) in the structure of "
            f"params, got {got} instead"
        )
    for l, (layer, tangent) in enumerate(zip(params, v), start=1):
        where = f"{name} layer {l} ({name}[{l - 1}])"
        if not isinstance(tangent, tuple) or len(tangent) != 2:
            raise TypeError(f"Expected {where} to be a Layer(w, b), got {type(tangent).__name__}")
        for field, p, t in zip(("w", "b"), layer, tangent):
            if not hasattr(t, "shape") or not hasattr(t, "dtype"):
                raise TypeError(f"Expected {where} {field} to be an array, got {type(t).__name__}")
            if np.shape(t) != np.shape(p):
                raise ValueError(
                    f"Expected {where} {field} to have shape {np.shape(p)} (that of params), "
                    f"got {np.shape(t)} instead"
                )
            dtype, expected = jnp.result_type(t), jnp.result_type(p)
            if dtype != expected:
                raise TypeError(
                    f"Expected {where} {field} to have the params' dtype {expected}, got "
                    f"{dtype} instead"
                )


def _output_hessian_product(net: Network, z_L: Array, a_L: Array, y: Array, dz: Array, da: Array):
    """delta^L for the GGN of one example: H (J v) in z^L where the cost has a closed form
    there, else sigma'^T (H_a (J_a v)) in a^L (diag_ggn's split)."""
    form = net.cost.closed_form(net.output_activation)
    if form is not None:
        return jax.jvp(lambda z: jax.grad(form.fn)(z, y), (z_L,), (dz,))[1]
    h = jax.jvp(lambda a: jax.grad(net.cost.fn)(a, y), (a_L,), (da,))[1]
    return net.output_activation.backward(z_L, a_L, h)


@check_values(xs=finite_array, ys=finite_array)
@jit_with_net
def ggn_vector_product(
    params: Params, v: Params, xs: Array, ys: Array, *, net: Network = Network()
) -> list[Layer]:
    r"""G v, the generalized Gauss-Newton matrix of the mean cost times a tangent v, without
    forming G: \( G v = \frac{1}{N} \sum_i J_i^\top H_i J_i v \).

    J_i v is a forward-mode sweep of the forward pass along v (`jax.jvp`, the R-operator
    of Pearlmutter 1994). H_i is the Hessian of the one-example cost in z^L where the
    cost has a closed form there (log-likelihood after softmax: diag(a) - a a^T), else in
    a^L followed by sigma'(z^L)^T, exactly as `functional_bp.curvature.diag_ggn` splits
    it (its diagonal is diag_ggn). H_i J_i v / N is then delta^L of the hand-written
    backward pass (eq 96), and eq 99 sums delta^l (a^{l-1})^T over the batch: J^T.
    Costs about two forward passes and one backward pass.

    Args:
      params: a list of `Layer`.
      v: a tangent in the structure, shapes and dtype of params.
      xs: shape (batch, n_in).
      ys: shape (batch, n_out), or integer class labels (batch,).
      net: the `Network`.

    Returns:
      G v, a list of `Layer` in the structure of params.

    Examples:
      >>> params = init_mlp(jax.random.key(0), [3, 4, 2])
      >>> xs, ys = jnp.ones((5, 3)), jnp.zeros((5, 2))
      >>> [g.w.shape for g in fbp.curvature.ggn_vector_product(params, params, xs, ys)]
      [(4, 3), (2, 4)]
    """
    core.check(net, params, xs, ys)
    check_tangent(params, v)
    dtype, (params, xs, ys) = core.working_precision(params, xs, ys)
    v = _cast(v, params[0].w.dtype)
    cache, tangents = jax.jvp(lambda p: core.forward_pass(net, p, xs), (params,), (v,))
    ys = core.targets(ys, cache.activations[-1])
    product = functools.partial(_output_hessian_product, net)
    delta_L = jax.vmap(product)(
        cache.zs[-1], cache.activations[-1], ys, tangents.zs[-1], tangents.activations[-1]
    )
    deltas = core.backward_pass(net, params, cache, delta_L / xs.shape[0])
    return _cast(core.summed_gradients(deltas, cache), dtype)


@check_values(xs=finite_array, ys=finite_array)
@jit_with_net
def hessian_vector_product(
    params: Params, v: Params, xs: Array, ys: Array, *, net: Network = Network()
) -> list[Layer]:
    r"""H v, the Hessian of the mean cost times a tangent v:
    \( H v = \frac{d}{d\epsilon} \nabla C(\theta + \epsilon v) \big|_{\epsilon=0} \).

    Forward mode over the hand-written reverse mode: `jax.jvp` of the backprop gradient
    (`functional_bp.grad`'s core) along v. Exact, including the sigma'' terms the GGN
    leaves out; costs about two gradients.

    Args:
      params: a list of `Layer`.
      v: a tangent in the structure, shapes and dtype of params.
      xs: shape (batch, n_in).
      ys: shape (batch, n_out), or integer class labels (batch,).
      net: the `Network`.

    Returns:
      H v, a list of `Layer` in the structure of params.

    Examples:
      >>> params = init_mlp(jax.random.key(0), [3, 4, 2])
      >>> xs, ys = jnp.ones((5, 3)), jnp.zeros((5, 2))
      >>> [h.b.shape for h in fbp.curvature.hessian_vector_product(params, params, xs, ys)]
      [(4,), (2,)]
    """
    core.check(net, params, xs, ys)
    check_tangent(params, v)
    dtype, (params, xs, ys) = core.working_precision(params, xs, ys)
    v = _cast(v, params[0].w.dtype)

    def gradient(p):
        return core.mean_value_and_grad(net, p, xs, ys)[1]

    return _cast(jax.jvp(gradient, (params,), (v,))[1], dtype)


def _output_hessian(net: Network, z_L: Array, y: Array) -> Array:
    """The Hessian of one example's cost in z^L, (n_L, n_L): of the closed form, or of
    C(sigma(z), y)."""
    form = net.cost.closed_form(net.output_activation)
    if form is not None:
        return jax.hessian(form.fn)(z_L, y)
    return jax.hessian(lambda z: net.cost.fn(net.output_activation.fn(z), y))(z_L)


def _second_derivative(activation, z: Array) -> Array:
    """sigma''(z) of an elementwise sigma: the Activation's own ``second_derivative``,
    or `jax.jvp` of its derivative."""
    if activation.second_derivative is not None:
        return activation.second_derivative(z)

    def prime(u):
        return activation.prime(u, activation.fn(u))

    return jax.jvp(prime, (z,), (jnp.ones_like(z),))[1]


def _residual(activation, z: Array, g: Array) -> Array:
    """sum_m g_m nabla^2 sigma_m(z), (n, n): the derivative in z of J_sigma(z)^T g with g
    held. Elementwise sigma: diag(g sigma''(z)); otherwise `jax.jacfwd` of its vjp."""
    if activation.vjp is None:
        return jnp.diag(g * _second_derivative(activation, z))
    return jax.jacfwd(lambda u: activation.backward(u, activation.fn(u), g))(z)


def _sandwich(activation, z: Array, a: Array, m: Array) -> Array:
    """J_sigma^T m J_sigma for symmetric m, by the Activation's backward (its VJP) on the
    rows and then the columns: no Jacobian is formed."""
    backward = jax.vmap(lambda row: activation.backward(z, a, row))
    return backward(backward(m).T)


def _general_step(activation, w: Array, h: Array, z: Array, a: Array, g: Array) -> Array:
    """H_{z^l} of one example from H_{z^{l+1}} for any sigma: the VJP sandwich plus
    `jax.jacfwd` of the VJP (a sigma that mixes neurons)."""
    return _sandwich(activation, z, a, w.T @ h @ w) + _residual(activation, z, g)


def _pre_activation_diagonals(net, params, cache, deltas, ys) -> list[Array]:
    """diag H_{z^l} of every example, (batch, n_l) per layer, by the recursion from H_{z^L}.
    For an elementwise sigma each step is two matrix products over the whole batch (w is
    shared), J_sigma a scaling of rows and columns and the residual a diagonal; at layer 1
    only the diagonal is formed."""
    num_layers = len(params)
    h = jax.vmap(functools.partial(_output_hessian, net))(cache.zs[-1], ys)
    diagonals = [jnp.diagonal(h, axis1=1, axis2=2)]
    for l in range(num_layers - 1, 0, -1):  # layer l, params[l] is w^{l+1}
        w = params[l].w
        activation = net.layer_activation(l, num_layers)
        z, a = cache.zs[l - 1], cache.activations[l]
        g = core.Dense.transport(w, deltas[l])  # dC/da^l, (batch, n_l)
        if activation.vjp is not None:
            step = functools.partial(_general_step, activation, w)
            h = jax.vmap(step)(h, z, a, g)
            diagonals.insert(0, jnp.diagonal(h, axis1=1, axis2=2))
            continue
        prime = jax.vmap(activation.prime)(z, a)
        residual = g * jax.vmap(functools.partial(_second_derivative, activation))(z)
        hw = jnp.einsum("imn,nk->imk", h, w)  # H_{z^{l+1}} w^{l+1}, one product
        if l == 1:  # only the diagonal is needed
            diagonals.insert(0, jnp.einsum("mk,imk->ik", w, hw) * prime**2 + residual)
            break
        m = jnp.einsum("mk,imj->ikj", w, hw)  # (w^{l+1})^T H w^{l+1}
        eye = jnp.eye(m.shape[-1], dtype=m.dtype)
        h = prime[:, :, None] * m * prime[:, None, :] + residual[:, :, None] * eye[None]
        diagonals.insert(0, jnp.diagonal(h, axis1=1, axis2=2))
    return diagonals


@check_values(xs=finite_array, ys=finite_array)
@jit_with_net
def diag_hessian(params: Params, xs: Array, ys: Array, *, net: Network = Network()) -> list[Layer]:
    r"""The exact diagonal of the Hessian of the mean cost, in the structure of params.

    z^l_j = sum_k w_jk a_k^{l-1} + b_j is linear in w_jk, and w^l does not change
    a^{l-1}, so \( \partial^2 C / \partial (w^l_{jk})^2 = (a^{l-1}_k)^2 \,
    [H_{z^l}]_{jj} \) and \( \partial^2 C / \partial (b^l_j)^2 = [H_{z^l}]_{jj} \):
    eq 99 with delta^l replaced by diag H_{z^l} and a^{l-1} by its square. H_{z^l},
    the Hessian of one example's cost in z^l, is backpropagated from the output's
    (the cost's Hessian in z^L: of its closed form, or of C(sigma(z^L), y)):

    \[ H_{z^l} = J_\sigma^\top (w^{l+1})^\top H_{z^{l+1}} w^{l+1} J_\sigma
       + \sum_m \left((w^{l+1})^\top \delta^{l+1}\right)_m \nabla^2 \sigma_m(z^l), \]

    the GGN part plus the residual of sigma'' weighted by the backpropagated error.
    For an elementwise sigma J_sigma scales rows and columns by sigma'(z^l) and the
    residual is diag(((w^{l+1})^T delta^{l+1}) sigma''(z^l)); a sigma that mixes neurons
    (softmax) acts through its backward (its VJP). sigma'' is the `Activation`'s own
    ``second_derivative`` when it has one; otherwise it comes from JAX, `jax.jvp` of
    ``derivative`` for an elementwise sigma, `jax.jacfwd` of ``vjp`` for one that mixes
    neurons. The H_{z^l} of layers
    2..L-1 are full (n_l, n_l) matrices per example (layer 1's only its diagonal):
    memory O(N n_l^2), time O(N sum_l n_l n_{l+1} (n_l + n_{l+1})); use it for
    moderate widths (at [784, 256, 256, 10], batch 256, tens of gradients on a CPU).

    Args:
      params: a list of `Layer`.
      xs: shape (batch, n_in).
      ys: shape (batch, n_out), or integer class labels (batch,).
      net: the `Network`.

    Returns:
      A list of `Layer` in the structure of params.

    Examples:
      >>> params = init_mlp(jax.random.key(0), [3, 4, 2])
      >>> xs, ys = jnp.ones((5, 3)), jnp.zeros((5, 2))
      >>> [d.w.shape for d in fbp.curvature.diag_hessian(params, xs, ys)]
      [(4, 3), (2, 4)]
    """
    core.check(net, params, xs, ys)
    dtype, (params, xs, ys) = core.working_precision(params, xs, ys)
    record = core.backprop_batch(net, params, xs, ys)
    cache = record.cache
    diagonals = _pre_activation_diagonals(net, params, cache, record.deltas, record.ys)
    n = xs.shape[0]
    result = [
        jax.tree.map(lambda g: g / n, core.Dense.gradient(d, a**2))
        for d, a in zip(diagonals, cache.activations)
    ]
    return _cast(result, dtype)

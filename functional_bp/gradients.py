"""The book's functions: the forward pass, the cost, and its gradient by the hand-written
backward pass; each one `core.check` and a call into the core."""

from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp

from functional_bp import core
from functional_bp._validation import check_values, optional_key
from functional_bp.network import Network, jit_with_net
from functional_bp.params import Layer, Params

Array = jax.Array


@check_values(key=optional_key)
@jit_with_net(half_in_float32=True)
def forward(
    params: Params, x: Array, *, net: Network = Network(), key: Optional[Array] = None
) -> tuple[Array, core.Cache]:
    r"""The output a^L and the `Cache` of z^l and a^l that backprop needs (001 notes eqs
    1-2: z^l = w^l a^{l-1} + b^l, a^l = sigma(z^l)).

    \[ z^l = w^l a^{l-1} + b^l, \qquad a^l = \sigma(z^l) \]

    Args:
      params: a list of `Layer`.
      x: one example of shape (n_in,) or a batch of shape (batch, n_in).
      net: the `Network` (its cost is not used).
      key: draws the masks of a `functional_bp.layers.Dropout`; without it (evaluation)
        dropout is the identity.

    Returns:
      ``(a_L, cache)``; with a batch, every array has a leading batch axis.

    Examples:
      >>> params = init_mlp(jax.random.key(0), [3, 2])
      >>> forward(params, jnp.ones(3))[0].shape
      (2,)
    """
    core.check(net, params, x, batched=None, layered=True)
    one = x.ndim == core.example_ndim(net)  # one example, not a batch
    cache = core.forward_pass(net, params, x[None] if one else x, key=key)
    if one:
        cache = jax.tree.map(lambda leaf: leaf[0], cache)
    return cache.activations[-1], cache


@check_values(key=optional_key)
@jit_with_net(half_in_float32=True)
def loss(
    params: Params, xs: Array, ys: Array, *, net: Network = Network(), key: Optional[Array] = None
) -> Array:
    """The mean per-example cost of a mini-batch, (1/B) sum_i C(a_i^L, y_i): what
    ``jax.grad`` differentiates when it is compared with `grad`.

    Args:
      params: a list of `Layer`.
      xs: shape (batch, n_in).
      ys: shape (batch, n_out).
      net: the `Network`.
      key: draws the masks of a `functional_bp.layers.Dropout` (each example its own);
        without it dropout is the identity. Ignored by a network without dropout.

    Examples:
      >>> params = init_mlp(jax.random.key(0), [3, 2])
      >>> loss(params, jnp.ones((4, 3)), jnp.zeros((4, 2))).shape
      ()
    """
    core.check(net, params, xs, ys, layered=True)
    cache = core.forward_pass(net, params, xs, key=key)
    return jnp.mean(core.example_costs(net, cache, core.targets(ys, cache.activations[-1])))


@check_values(key=optional_key)
@jit_with_net(half_in_float32=True)
def value_and_grad(
    params: Params, xs: Array, ys: Array, *, net: Network = Network(), key: Optional[Array] = None
) -> tuple[Array, list[Layer]]:
    """``(loss, grad)`` of a mini-batch from one forward and one backward pass.

    Args:
      params: a list of `Layer`.
      xs: shape (batch, n_in).
      ys: shape (batch, n_out).
      net: the `Network`.
      key: draws the masks of a `functional_bp.layers.Dropout` (each example its own);
        without it dropout is the identity. Ignored by a network without dropout.

    Returns:
      The mean cost and the mean of the per-example gradients.

    Examples:
      >>> params = init_mlp(jax.random.key(0), [3, 2])
      >>> value, g = value_and_grad(params, jnp.ones((4, 3)), jnp.zeros((4, 2)))
      >>> value.shape, g[0].w.shape, g[0].b.shape
      ((), (2, 3), (2,))
    """
    core.check(net, params, xs, ys, layered=True)
    return core.mean_value_and_grad(net, params, xs, ys, key=key)


@check_values(key=optional_key)
@jit_with_net(half_in_float32=True)
def grad(
    params: Params, xs: Array, ys: Array, *, net: Network = Network(), key: Optional[Array] = None
) -> list[Layer]:
    r"""The mean over the mini-batch of the per-example gradients of `backprop`.

    Error terms are computed for every example (eqs 90-91, then eq 96 as one matrix
    product per layer); eq 99 is then summed over the batch as one matrix product per
    layer, sum_i delta_i a_i^T = Delta^T A, with the 1/batch folded into delta^L: the
    gradient network.py's ``update_mini_batch`` averages.

    \[ \frac{\partial C}{\partial w^l} = \frac{1}{B} \sum_{i=1}^{B} \delta^l_i
    (a^{l-1}_i)^T \]

    Args:
      params: a list of `Layer`.
      xs: shape (batch, n_in).
      ys: shape (batch, n_out).
      net: the `Network`.
      key: draws the masks of a `functional_bp.layers.Dropout` (each example its own);
        without it dropout is the identity. Ignored by a network without dropout.

    Returns:
      A list of `Layer`, the structure of ``params``.

    Examples:
      >>> params = init_mlp(jax.random.key(0), [3, 4, 2])
      >>> xs, ys = jnp.ones((5, 3)), jnp.zeros((5, 2))
      >>> [g.w.shape for g in grad(params, xs, ys)]
      [(4, 3), (2, 4)]
    """
    core.check(net, params, xs, ys, layered=True)
    return core.mean_value_and_grad(net, params, xs, ys, key=key)[1]


@check_values(key=optional_key)
@jit_with_net(half_in_float32=True)
def error_terms(
    params: Params, x: Array, y: Array, *, net: Network = Network(), key: Optional[Array] = None
) -> list[Array]:
    r"""The error terms delta^l = dC/dz^l of every layer, for one example.

    delta^L = dC/da^L ⊙ sigma'(z^L) (chapter 10 eqs 90-91, `output_error`), then,
    backwards, delta^l = (w^{l+1})^T delta^{l+1} ⊙ sigma'(z^l) (eq 96, `hidden_error`):

    \[ \delta^L = \nabla_a C \odot \sigma'(z^L), \qquad
    \delta^l = (w^{l+1})^T \delta^{l+1} \odot \sigma'(z^l) \]

    Args:
      params: a list of `Layer`.
      x: one example, shape (n_in,).
      y: its target, shape (n_out,).
      net: the `Network`.
      key: draws the masks of a `functional_bp.layers.Dropout` (each example its own);
        without it dropout is the identity. Ignored by a network without dropout.

    Returns:
      ``[delta^1, ..., delta^L]``, delta^l of shape (n_l,).

    Examples:
      >>> params = init_mlp(jax.random.key(0), [3, 4, 2])
      >>> [delta.shape for delta in error_terms(params, jnp.ones(3), jnp.zeros(2))]
      [(4,), (2,)]
    """
    core.check(net, params, x, y, batched=False, layered=True)
    record = core.backprop_batch(net, params, x[None], y[None], key=key)
    return [delta[0] for delta in record.deltas]


@check_values(key=optional_key)
@jit_with_net(half_in_float32=True)
def backprop(
    params: Params, x: Array, y: Array, *, net: Network = Network(), key: Optional[Array] = None
) -> list[Layer]:
    r"""The gradient of the cost of one example: network.py's ``backprop``.

    dC/dw^l = delta^l (a^{l-1})^T (chapter 10 eq 99, 001 notes eq 6, `layer_gradient`)
    and dC/db^l = delta^l (001 notes eq 7), with the delta^l of `error_terms`:

    \[ \frac{\partial C}{\partial w^l} = \delta^l (a^{l-1})^T, \qquad
    \frac{\partial C}{\partial b^l} = \delta^l \]

    Args:
      params: a list of `Layer`.
      x: one example, shape (n_in,).
      y: its target, shape (n_out,).
      net: the `Network`.
      key: draws the masks of a `functional_bp.layers.Dropout` (each example its own);
        without it dropout is the identity. Ignored by a network without dropout.

    Returns:
      A list of `Layer(dC/dw, dC/db)`, the structure of ``params``.

    Examples:
      >>> params = init_mlp(jax.random.key(0), [3, 4, 2])
      >>> x, y = jnp.ones(3), jnp.zeros(2)
      >>> bool(jnp.allclose(backprop(params, x, y)[0].w, grad(params, x[None], y[None])[0].w))
      True
    """
    core.check(net, params, x, y, batched=False, layered=True)
    return core.mean_value_and_grad(net, params, x[None], y[None], key=key)[1]


# `mlp`: the network as a JAX function whose VJP is the hand-written backward pass.


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _network(net: Network, params: Params, xs: Array) -> Array:
    return core.forward_pass(net, params, xs).activations[-1]


def _network_fwd(net, params, xs):
    cache = core.forward_pass(net, params, xs)
    return cache.activations[-1], (params, cache)


def _network_bwd(net, residuals, cotangent):
    """The hand-written backward pass for any cotangent g = dL/da^L of shape (batch, n_L)."""
    params, cache = residuals
    # Eq 91 with the caller's dL/da^L in place of dC/da^L, one example at a time.
    delta_L = jax.vmap(net.output_activation.backward)(
        cache.zs[-1], cache.activations[-1], cotangent
    )
    deltas = core.backward_pass(net, params, cache, delta_L)  # eq 96
    grads = core.summed_gradients(deltas, cache, net=net)  # eqs 99 and 7, summed
    return grads, core.input_error(net, params, cache, deltas[0])  # 001 notes eq 8: dL/dx


_network.defvjp(_network_fwd, _network_bwd)


@jit_with_net(half_in_float32=True)
def mlp(params: Params, x: Array, *, net: Network = Network()) -> Array:
    """The output a^L of the network (network.py's ``feedforward``), differentiated by the
    hand-written backprop.

    ``jax.grad``/``jax.vjp`` of any loss built on it (with respect to ``params`` and
    ``x``) run the hand-written backward pass, registered with `jax.custom_vjp`: eq 91
    with the caller's dL/da^L, eq 96, eqs 99 and 7, and eq 8 for dL/dx. Forward mode
    (``jax.jvp``, ``jax.jacfwd``) is not defined for a custom VJP and raises JAX's
    TypeError; use ``jax.jacrev``.

    Args:
      params: a list of `Layer`.
      x: one example (n_in,) or a batch (batch, n_in).
      net: the `Network` (its cost is not used).

    Examples:
      >>> params = init_mlp(jax.random.key(0), [3, 2])
      >>> g = jax.grad(lambda p: jnp.sum(mlp(p, jnp.ones(3)) ** 2))(params)
      >>> g[0].w.shape
      (2, 3)
    """
    core.check(net, params, x, batched=None, layered=True)
    # Cast outside the custom VJP, so that autodiff returns dL/dx in x's own dtype.
    xs = x.astype(params[0].w.dtype)
    if x.ndim == core.example_ndim(net):  # one example
        return _network(net, params, xs[None])[0]
    return _network(net, params, xs)

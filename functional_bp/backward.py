"""The backward pass: the documents' three equations and the one batched core built on them.

Chapter 10 (000) eqs 88-99 and the 001 notes eqs 3-8, in the w_jk convention of the 001
notes: ``w[j, k]`` connects neuron k of layer l-1 to neuron j of layer l.

- `output_error` (eqs 90-91), `hidden_error` (eq 96) and `layer_gradient` (eq 99) are
  each written once, for one example, as the documents write them.
- `backprop_batch` is the core every public gradient function is built on: the forward
  pass of a batch, delta^L for every example (so a user's `Cost` and `Activation` see
  exactly one example), then eq 96 from layer L back to layer 1 with `jax.vmap` adding
  the batch, which turns each (w^{l+1})^T delta^{l+1} into one matrix product.
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from functional_bp._options import ActivationArg, CostArg, Options
from functional_bp.activations import get_activation
from functional_bp.costs import get_cost
from functional_bp.forward import Cache, forward_pass, layer_activation
from functional_bp.params import Layer, Params

Array = jax.Array


def output_error(
    z_L: Array,
    a_L: Array,
    y: Array,
    *,
    output_activation: ActivationArg = "sigmoid",
    cost: CostArg = "quadratic",
) -> Array:
    """delta^L = dC/da^L ⊙ sigma'(z^L): chapter 10 eqs 90-91 (001 notes eqs 4-5).

    For one example: z_L, a_L = sigma(z_L) and y of shape (n_L,). A non-elementwise
    sigma (softmax) replaces "⊙ sigma'(z^L)" by its vector-Jacobian product. Where the
    cost has a closed form for the output activation (cross-entropy after a sigmoid:
    delta^L = a - y; log-likelihood after a softmax), that form is used: the same value
    without the 0/0 of dC/da ⊙ sigma'(z) when sigma(z) rounds to 0 or 1.
    """
    sigma, cost = get_activation(output_activation), get_cost(cost)
    form = cost.closed_form(sigma)
    if form is not None:
        return form.delta(z_L, a_L, y)
    return sigma.backward(z_L, a_L, cost.derivative(a_L, y))


def weighted_error(w_next: Array, delta_next: Array) -> Array:
    """dC/da^l = (w^{l+1})^T delta^{l+1}: eq 8 of the 001 notes, dC/da_k = sum_j w_jk delta_j.

    Written as ``delta @ w``: (w^T delta) for one example, and the same row by row (one
    matrix product) for a leading batch axis.
    """
    return delta_next @ w_next


def hidden_error(
    w_next: Array, delta_next: Array, z: Array, a: Array, *, activation: ActivationArg = "sigmoid"
) -> Array:
    """delta^l = (w^{l+1})^T delta^{l+1} ⊙ sigma'(z^l): chapter 10 eq 96 (and eqs 92-95, 97).

    For one example: delta_next of shape (n_{l+1},), z = z^l and a = sigma(z^l) of shape
    (n_l,). In the w_jk convention the sum of eq 8 runs over the neurons j of layer l+1,
    which is the transpose (w^{l+1})^T. Chapter 10 writes "w^(N) · delta^(N)" in eq 96
    and prints the matrix of eq 95 with entries w_kj (and the index typos w_23 for w_22
    and w_32); that matrix is exactly our (w^{l+1})^T. A non-elementwise sigma replaces
    "⊙ sigma'(z^l)" by its vector-Jacobian product.
    """
    return get_activation(activation).backward(z, a, weighted_error(w_next, delta_next))


def layer_gradient(delta: Array, a_prev: Array) -> Layer:
    """dC/dw_jk = delta_j a_k^{l-1} (chapter 10 eqs 98-99; 001 notes eq 6) and dC/db = delta
    (001 notes eq 7): the outer product delta (a^{l-1})^T, network.py's nabla_w.

    For one example delta (n_l,) and a_prev (n_{l-1},). Leading batch axes, if present,
    are summed: sum_i delta_i a_i^T as one matrix product.
    """
    batch_axes = tuple(range(delta.ndim - 1))
    return Layer(
        jnp.tensordot(delta, a_prev, axes=(batch_axes, batch_axes)),
        jnp.sum(delta, axis=batch_axes),
    )


class Backprop(NamedTuple):
    """The core's result for a batch.

    Attributes:
      cache: the forward `Cache`, every array (batch, n_l).
      ys: the targets in the params' dtype.
      deltas: [delta^1, ..., delta^L], each (batch, n_l).
    """

    cache: Cache
    ys: Array
    deltas: list[Array]


def example_cost(opts: Options, z_L: Array, a_L: Array, y: Array) -> Array:
    """C of one example: ``cost.fn(a^L, y)``, or its closed form in z^L."""
    form = opts.cost.closed_form(opts.output_activation)
    return opts.cost.fn(a_L, y) if form is None else form.fn(z_L, y)


def example_costs(opts: Options, cache: Cache, ys: Array) -> Array:
    """C of every example, shape (batch,)."""
    return jax.vmap(functools.partial(example_cost, opts))(cache.zs[-1], cache.activations[-1], ys)


def batch_hidden_error(
    matrix: Array, delta_next: Array, cache: Cache, opts: Options, l: int, num_layers: int
) -> Array:
    """`hidden_error` (eq 96) at hidden layer l for every example: delta_next (batch, n)
    sent back through ``matrix``, then ⊙ sigma'(z^l) of layer l's activation."""
    one_example = functools.partial(
        hidden_error, matrix, activation=layer_activation(opts, l, num_layers)
    )
    return jax.vmap(one_example)(delta_next, cache.zs[l - 1], cache.activations[l])


def backward_pass(
    params: Params,
    cache: Cache,
    delta_L: Array,
    opts: Options,
    *,
    matrices: Optional[list[Array]] = None,
) -> list[Array]:
    """[delta^1, ..., delta^L] from delta^L (batch, n_L): eq 96 from layer L-1 down to 1.

    ``matrices``, when given, replaces w^{l+1} in eq 96 layer by layer (entry l-1 for
    layer l, each of the shape of w^{l+1}): the backward pass of feedback alignment.
    """
    num_layers = len(params)
    matrices = [layer.w for layer in params[1:]] if matrices is None else matrices
    deltas = [delta_L]
    for l in range(num_layers - 1, 0, -1):  # params[l] is layer l+1
        deltas.insert(0, batch_hidden_error(matrices[l - 1], deltas[0], cache, opts, l, num_layers))
    return deltas


def output_errors(
    params: Params, xs: Array, ys: Array, opts: Options, *, scale: Optional[Array] = None
) -> tuple[Cache, Array, Array]:
    """The forward pass of a batch and delta^L of every example (eqs 90-91, vmapped):
    ``(cache, ys in the params' dtype, delta^L)``.

    ``scale``, when given, multiplies delta^L; eq 96 is linear in delta, so every
    delta^l carries it (the mean gradient's 1/batch goes into the smallest array).
    """
    cache = forward_pass(params, xs, opts)
    ys = ys.astype(cache.activations[-1].dtype)
    one_example = functools.partial(
        output_error, output_activation=opts.output_activation, cost=opts.cost
    )
    delta_L = jax.vmap(one_example)(cache.zs[-1], cache.activations[-1], ys)
    if scale is not None:
        delta_L = delta_L * scale
    return cache, ys, delta_L


def backprop_batch(
    params: Params, xs: Array, ys: Array, opts: Options, *, scale: Optional[Array] = None
) -> Backprop:
    """The core: forward pass, eqs 90-91 per example (`output_errors`), eq 96 back to
    layer 1 (`backward_pass`)."""
    cache, ys, delta_L = output_errors(params, xs, ys, opts, scale=scale)
    return Backprop(cache, ys, backward_pass(params, cache, delta_L, opts))


def summed_gradients(deltas: list[Array], cache: Cache) -> list[Layer]:
    """Eq 99 and eq 7 for every layer, summed over the batch: sum_i delta_i^l (a_i^{l-1})^T."""
    return [layer_gradient(delta, a_prev) for delta, a_prev in zip(deltas, cache.activations)]


def mean_value_and_grad(
    params: Params, xs: Array, ys: Array, opts: Options
) -> tuple[Array, list[Layer]]:
    """The mean cost and the mean gradient of a batch, with 1/batch folded into delta^L."""
    result = backprop_batch(params, xs, ys, opts, scale=1.0 / xs.shape[0])
    value = jnp.mean(example_costs(opts, result.cache, result.ys))
    return value, summed_gradients(result.deltas, result.cache)


def mean_cost(params: Params, xs: Array, ys: Array, opts: Options) -> Array:
    """The mean cost of a batch, from the forward pass alone."""
    cache = forward_pass(params, xs, opts)
    return jnp.mean(example_costs(opts, cache, ys.astype(cache.activations[-1].dtype)))

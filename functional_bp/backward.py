"""The backward pass, equation by equation, and the gradients built on it.

Chapter 10 (000) eqs 88-99 and the 001 notes eqs 3-8, in the w_jk convention of the 001
notes: ``w[j, k]`` connects neuron k of layer l-1 to neuron j of layer l. Each equation
is written once, for one example; the same code acts row by row on arrays with a leading
batch axis. `per_example_grads` is `jax.vmap` of `backprop`, and the mean gradient sums
eq 99 over the batch as one matrix product per layer (tested equal to the mean of
`per_example_grads`).
"""

from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp

from functional_bp._options import STATIC, Options, prepare
from functional_bp.activations import SIGMOID, Activation
from functional_bp.costs import Cost
from functional_bp.forward import Cache, forward_any, forward_one, layer_activation
from functional_bp.params import Layer, Params

Array = jax.Array


def _has_sigmoid_closed_form(opts: Options, form: str) -> bool:
    return opts.output_activation == SIGMOID and getattr(opts.cost, form) is not None


def example_cost(opts: Options, cache: Cache, y: Array) -> Array:
    """C for one example: ``cost.fn(a^L, y)``, or its stable form in z^L for a sigmoid output."""
    if _has_sigmoid_closed_form(opts, "sigmoid_fn"):
        return opts.cost.sigmoid_fn(cache.zs[-1], y)
    return opts.cost.fn(cache.activations[-1], y)


def output_error(opts: Options, z_L: Array, a_L: Array, y: Array) -> Array:
    """delta^L = dC/da^L ⊙ sigma'(z^L): chapter 10 eqs 90-91 (001 notes eqs 4-5).

    With a sigmoid output and a cost that provides ``sigmoid_delta`` (cross-entropy:
    delta^L = a - y), that closed form is used: the same value, computed without the
    0/0 of dC/da ⊙ sigma'(z) when sigma(z) rounds to 0 or 1.
    """
    if _has_sigmoid_closed_form(opts, "sigmoid_delta"):
        return opts.cost.sigmoid_delta(z_L, a_L, y)
    return opts.cost.derivative(a_L, y) * opts.output_activation.prime(z_L, a_L)


def hidden_error(w_next: Array, delta_next: Array, sigma_prime: Array) -> Array:
    """delta^l = (w^{l+1})^T delta^{l+1} ⊙ sigma'(z^l): chapter 10 eq 96 (and eqs 92-95, 97).

    In the w_jk convention, eq 8 of the 001 notes sums over the neurons j of layer l+1:
    dC/da_k^l = sum_j w_jk^{l+1} delta_j^{l+1}, which is the transpose (w^{l+1})^T times
    delta^{l+1}. Chapter 10 writes "w^(N) · delta^(N)" in eq 96 and prints the matrix of
    eq 95 with entries w_kj (and the index typos w_23 for w_22 and w_32); that matrix is
    exactly our (w^{l+1})^T. Written as ``delta @ w``, which is (w^T delta) for one
    example and the same row by row for a leading batch axis.
    """
    return (delta_next @ w_next) * sigma_prime


def layer_gradient(delta: Array, a_prev: Array) -> Layer:
    """dC/dw_jk = delta_j a_k^{l-1} (chapter 10 eqs 98-99; 001 notes eq 6) and dC/db = delta
    (001 notes eq 7): the outer product delta (a^{l-1})^T, network.py's nabla_w.

    Leading batch axes, if present, are summed: sum_i delta_i a_i^T as one matrix product.
    """
    batch_axes = tuple(range(delta.ndim - 1))
    return Layer(
        jnp.tensordot(delta, a_prev, axes=(batch_axes, batch_axes)),
        jnp.sum(delta, axis=batch_axes),
    )


def _example_costs(opts: Options, cache: Cache, ys: Array) -> Array:
    return jax.vmap(lambda c, y: example_cost(opts, c, y))(cache, ys)


def backpropagate(params: Params, cache: Cache, delta_L: Array, opts: Options) -> list[Array]:
    """[delta^1, ..., delta^L] from delta^L, by eq 96 from the output layer backwards."""
    num_layers = len(params)
    zs, activations = cache
    deltas = [delta_L]
    for l in range(num_layers - 1, 0, -1):  # l = L-1, ..., 1; params[l] is layer l+1
        sigma = layer_activation(opts, l, num_layers)
        sigma_prime = sigma.prime(zs[l - 1], activations[l])
        deltas.insert(0, hidden_error(params[l].w, deltas[0], sigma_prime))
    return deltas


def error_terms_from_cache(params: Params, cache: Cache, y: Array, opts: Options) -> list[Array]:
    """[delta^1, ..., delta^L]: eqs 90-91, then eq 96; for one example, or row by row
    for a cache and y with a leading batch axis."""
    delta_L = output_error(opts, cache.zs[-1], cache.activations[-1], y)
    return backpropagate(params, cache, delta_L, opts)


def gradients_from_error_terms(deltas: list[Array], cache: Cache) -> list[Layer]:
    """Eq 99 and eq 7 for every layer: a^{l-1} is ``cache.activations[l-1]``."""
    return [layer_gradient(delta, a_prev) for delta, a_prev in zip(deltas, cache.activations)]


def _backprop_one(params: Params, x: Array, y: Array, opts: Options) -> tuple[Array, list[Layer]]:
    """(C, dC/dparams) for one example: network.py's ``backprop``."""
    cache = forward_one(params, x, opts)
    y = y.astype(cache.activations[-1].dtype)
    deltas = error_terms_from_cache(params, cache, y, opts)
    return example_cost(opts, cache, y), gradients_from_error_terms(deltas, cache)


def _mean_value_and_grad(params: Params, xs: Array, ys: Array, opts: Options):
    """Mean cost and mean gradient over a batch.

    The per-example equations run on (batch, n_l) arrays: eqs 90-91 and 96 act row by
    row, and eq 99 then sums delta_i a_i^T over the batch as one product per layer. The
    mean's 1/batch is folded into delta^L, the smallest array it can go in; every other
    delta^l inherits it, since eq 96 is linear.
    """
    cache = forward_any(params, xs, opts)
    ys = ys.astype(cache.activations[-1].dtype)
    delta_L = output_error(opts, cache.zs[-1], cache.activations[-1], ys) / xs.shape[0]
    deltas = backpropagate(params, cache, delta_L, opts)
    return jnp.mean(_example_costs(opts, cache, ys)), gradients_from_error_terms(deltas, cache)


_OPTIONS_DOC = """
      activation: sigma of the hidden layers: "sigmoid", "tanh", "relu", "identity"
        or an `Activation(fn, derivative)`.
      output_activation: sigma of the output layer; defaults to ``activation``.
      cost: "quadratic" (1/2 ||a - y||^2), "squared_error" (sum_j (a_j - y_j)^2),
        "cross_entropy", or a `Cost(fn, derivative)`."""


def _with_options_doc(fn):
    fn.__doc__ = fn.__doc__.replace("      {options}", _OPTIONS_DOC.strip("\n"))
    return fn


@functools.partial(jax.jit, static_argnames=STATIC)
@_with_options_doc
def error_terms(
    params: Params,
    x: Array,
    y: Array,
    *,
    activation: str | Activation = "sigmoid",
    output_activation: Optional[str | Activation] = None,
    cost: str | Cost = "quadratic",
) -> list[Array]:
    """The error terms delta^l = dC/dz^l of every layer, for one example.

    delta^L = dC/da^L ⊙ sigma'(z^L) (chapter 10 eqs 90-91), then, backwards,
    delta^l = (w^{l+1})^T delta^{l+1} ⊙ sigma'(z^l) (eq 96). Chapter 10 prints the matrix
    of eq 95 transposed with respect to its eq 96 and with index typos; here ``w[j, k]``
    is w_jk of the 001 notes (from neuron k of layer l-1 to neuron j of layer l), so the
    backward matrix is ``w.T``.

    Args:
      params: a list of `Layer`.
      x: one example, shape (n_in,).
      y: its target, shape (n_out,).
      {options}

    Returns:
      ``[delta^1, ..., delta^L]``, delta^l of shape (n_l,).
    """
    opts = prepare(params, x, y, activation, output_activation, cost, batched=False)
    cache = forward_one(params, x, opts)
    return error_terms_from_cache(params, cache, y.astype(cache.activations[-1].dtype), opts)


@functools.partial(jax.jit, static_argnames=STATIC)
@_with_options_doc
def backprop(
    params: Params,
    x: Array,
    y: Array,
    *,
    activation: str | Activation = "sigmoid",
    output_activation: Optional[str | Activation] = None,
    cost: str | Cost = "quadratic",
) -> list[Layer]:
    """The gradient of the cost of one example: network.py's ``backprop``.

    dC/dw^l = delta^l (a^{l-1})^T (chapter 10 eq 99, 001 notes eq 6) and
    dC/db^l = delta^l (001 notes eq 7), with the delta^l of `error_terms`.

    Args:
      params: a list of `Layer`.
      x: one example, shape (n_in,).
      y: its target, shape (n_out,).
      {options}

    Returns:
      A list of `Layer(dC/dw, dC/db)`, the structure of ``params``.
    """
    opts = prepare(params, x, y, activation, output_activation, cost, batched=False)
    return _backprop_one(params, x, y, opts)[1]


@functools.partial(jax.jit, static_argnames=STATIC)
@_with_options_doc
def per_example_grads(
    params: Params,
    xs: Array,
    ys: Array,
    *,
    activation: str | Activation = "sigmoid",
    output_activation: Optional[str | Activation] = None,
    cost: str | Cost = "quadratic",
) -> list[Layer]:
    """`backprop` of every example in a batch, by `jax.vmap`.

    Args:
      params: a list of `Layer`.
      xs: shape (batch, n_in).
      ys: shape (batch, n_out).
      {options}

    Returns:
      A list of `Layer`; every leaf has a leading batch axis: w is (batch, n_out, n_in).
    """
    opts = prepare(params, xs, ys, activation, output_activation, cost, batched=True)
    return jax.vmap(lambda x, y: _backprop_one(params, x, y, opts)[1])(xs, ys)


@functools.partial(jax.jit, static_argnames=STATIC)
@_with_options_doc
def value_and_grad(
    params: Params,
    xs: Array,
    ys: Array,
    *,
    activation: str | Activation = "sigmoid",
    output_activation: Optional[str | Activation] = None,
    cost: str | Cost = "quadratic",
) -> tuple[Array, list[Layer]]:
    """``(loss, grad)`` of a mini-batch from one forward and one backward pass.

    Args:
      params: a list of `Layer`.
      xs: shape (batch, n_in).
      ys: shape (batch, n_out).
      {options}

    Returns:
      The mean cost and the mean of the per-example gradients.
    """
    opts = prepare(params, xs, ys, activation, output_activation, cost, batched=True)
    return _mean_value_and_grad(params, xs, ys, opts)


@functools.partial(jax.jit, static_argnames=STATIC)
@_with_options_doc
def grad(
    params: Params,
    xs: Array,
    ys: Array,
    *,
    activation: str | Activation = "sigmoid",
    output_activation: Optional[str | Activation] = None,
    cost: str | Cost = "quadratic",
) -> list[Layer]:
    """The mean over the mini-batch of the per-example gradients of `backprop`.

    Error terms are computed for every example at once (eqs 90-91 and 96, row by row);
    eq 99 is then summed over the batch as one matrix product per layer,
    sum_i delta_i a_i^T = Delta^T A, with the 1/batch folded into delta^L: the gradient
    network.py's ``update_mini_batch`` averages.

    Args:
      params: a list of `Layer`.
      xs: shape (batch, n_in).
      ys: shape (batch, n_out).
      {options}

    Returns:
      A list of `Layer`, the structure of ``params``.
    """
    opts = prepare(params, xs, ys, activation, output_activation, cost, batched=True)
    return _mean_value_and_grad(params, xs, ys, opts)[1]


@functools.partial(jax.jit, static_argnames=STATIC)
@_with_options_doc
def loss(
    params: Params,
    xs: Array,
    ys: Array,
    *,
    activation: str | Activation = "sigmoid",
    output_activation: Optional[str | Activation] = None,
    cost: str | Cost = "quadratic",
) -> Array:
    """The mean per-example cost of a mini-batch: what ``jax.grad`` differentiates when
    it is compared with `grad`.

    Args:
      params: a list of `Layer`.
      xs: shape (batch, n_in).
      ys: shape (batch, n_out).
      {options}
    """
    opts = prepare(params, xs, ys, activation, output_activation, cost, batched=True)
    cache = forward_any(params, xs, opts)
    return jnp.mean(_example_costs(opts, cache, ys.astype(cache.activations[-1].dtype)))

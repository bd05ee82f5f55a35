"""The feedforward pass: z^l = w^l a^{l-1} + b^l, a^l = sigma(z^l).

001 notes eqs 1-2 (the chapter's h = w a, eq 75-77, with a bias). Written for one
example; `forward_pass`, the batched core every gradient starts from, is `jax.vmap` of it.
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Optional

import jax

from functional_bp._options import ActivationArg, Options, prepare
from functional_bp.activations import Activation
from functional_bp.params import Params

Array = jax.Array


class Cache(NamedTuple):
    """What the backward pass needs, layer by layer (network.py's ``zs``, ``activations``).

    Attributes:
      zs: [z^1, ..., z^L], the weighted inputs (the chapter's h^(l)).
      activations: [a^0 = x, a^1, ..., a^L].
    """

    zs: list[Array]
    activations: list[Array]


def layer_activation(opts: Options, l: int, num_layers: int) -> Activation:
    """sigma of layer l (1-based): the output activation for l = L."""
    return opts.output_activation if l == num_layers else opts.activation


def _forward_one(params: Params, x: Array, opts: Options) -> Cache:
    """Eqs 1-2 of the 001 notes, layer by layer, for one example x of shape (n_in,)."""
    a = x.astype(params[0].w.dtype)
    zs, activations = [], [a]
    for l, (w, b) in enumerate(params, start=1):
        z = w @ a + b  # z_j = sum_k w_jk a_k + b_j
        a = layer_activation(opts, l, len(params)).fn(z)
        zs.append(z)
        activations.append(a)
    return Cache(zs, activations)


def forward_pass(params: Params, xs: Array, opts: Options) -> Cache:
    """The core's forward pass: `_forward_one` for every row of xs (batch, n_in)."""
    return jax.vmap(lambda x: _forward_one(params, x, opts))(xs)


def _one_or_batch(params: Params, x: Array, opts: Options) -> Cache:
    if x.ndim == 1:
        return jax.tree.map(lambda leaf: leaf[0], forward_pass(params, x[None], opts))
    return forward_pass(params, x, opts)


@functools.partial(jax.jit, static_argnames=("activation", "output_activation"))
def forward(
    params: Params,
    x: Array,
    *,
    activation: ActivationArg = "sigmoid",
    output_activation: Optional[ActivationArg] = None,
) -> tuple[Array, Cache]:
    """The output a^L and the `Cache` of z^l and a^l that backprop needs.

    Args:
      params: a list of `Layer`.
      x: one example of shape (n_in,) or a batch of shape (batch, n_in).
      activation: sigma of the hidden layers, by name or an `Activation`.
      output_activation: sigma of the output layer; defaults to ``activation``.

    Returns:
      ``(a_L, cache)``; with a batch, every array has a leading batch axis.
    """
    opts = prepare(params, x, None, activation, output_activation, None, batched=None)
    cache = _one_or_batch(params, x, opts)
    return cache.activations[-1], cache


@functools.partial(jax.jit, static_argnames=("activation", "output_activation"))
def feedforward(
    params: Params,
    x: Array,
    *,
    activation: ActivationArg = "sigmoid",
    output_activation: Optional[ActivationArg] = None,
) -> Array:
    """network.py's ``feedforward``: the output a^L for x of shape (n_in,) or (batch, n_in)."""
    opts = prepare(params, x, None, activation, output_activation, None, batched=None)
    return _one_or_batch(params, x, opts).activations[-1]

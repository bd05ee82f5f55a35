"""The params pytree: a list of `Layer(w, b)`, and network.py's initialisations."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp

from functional_bp._validation import check_float_dtype, check_int, check_key

Array = jax.Array

__all__ = ["Layer", "Params", "init_layer", "init_mlp", "layer_sizes"]

INITS = ("normal", "scaled_normal")


class Layer(NamedTuple):
    """The weights and biases of layer l.

    Attributes:
      w: shape (n_out, n_in); ``w[j, k]`` is the weight from neuron k of layer l-1 to
        neuron j of layer l (the w_jk of the 001 notes).
      b: shape (n_out,); ``b[j]`` is the bias of neuron j of layer l.

    Examples:
      >>> layer = Layer(w=jnp.zeros((2, 3)), b=jnp.zeros(2))
      >>> layer.w.shape, layer.b.shape
      ((2, 3), (2,))
    """

    w: Array
    b: Array


Params = Sequence[Layer]
"""The params of a network: a list of `Layer`, layer 1 first."""


def init_mlp(
    key: Array,
    sizes: Sequence[int],
    *,
    init: str = "normal",
    dtype=jnp.float32,
) -> list[Layer]:
    """Random params for a fully connected network with layer sizes ``sizes``.

    Args:
      key: a `jax.random` key.
      sizes: neurons per layer, input first: ``[784, 30, 10]`` has two `Layer`s.
      init: ``"normal"``: network.py's N(0, 1) for weights and biases;
        ``"scaled_normal"``: network2.py's weights N(0, 1/n_in), biases N(0, 1).
      dtype: a floating dtype.

    Returns:
      A list of ``len(sizes) - 1`` `Layer`s.

    Examples:
      >>> params = init_mlp(jax.random.key(0), [3, 4, 2], init="scaled_normal")
      >>> [(layer.w.shape, layer.b.shape) for layer in params]
      [((4, 3), (4,)), ((2, 4), (2,))]
    """
    check_key(key)
    sizes = [check_int(n, f"sizes[{i}]") for i, n in enumerate(sizes)]
    if len(sizes) < 2:
        raise ValueError(f"Expected at least two layer sizes (input and output), got {sizes}")
    check_init(init, dtype)
    keys = jax.random.split(key, len(sizes) - 1)
    return [
        init_layer(k, (n_out, n_in), init, dtype) for n_in, n_out, k in zip(sizes, sizes[1:], keys)
    ]


def check_init(init: str, dtype) -> None:
    """An initialisation in `INITS` and a floating dtype JAX can hold."""
    if init not in INITS:
        raise ValueError(f"Unknown init {init!r}; expected one of {list(INITS)}")
    check_float_dtype(dtype, "dtype")
    if jnp.dtype(dtype).itemsize == 8 and not jax.config.jax_enable_x64:
        raise ValueError(
            f"Expected a dtype JAX can hold: {jnp.dtype(dtype)} needs "
            'jax.config.update("jax_enable_x64", True) first (without it JAX makes float32)'
        )


def init_layer(key: Array, w_shape: tuple[int, ...], init: str, dtype) -> Layer:
    """One `Layer`: w of ``w_shape`` N(0, 1) ("normal") or N(0, 1/fan_in) ("scaled_normal",
    fan_in = the product of w_shape[1:]), b of shape (w_shape[0],) N(0, 1).

    Examples:
      >>> layer = fbp.params.init_layer(jax.random.key(0), (4, 3), "normal", jnp.float32)
      >>> layer.w.shape, layer.b.shape
      ((4, 3), (4,))
    """
    w_key, b_key = jax.random.split(key)
    w = jax.random.normal(w_key, w_shape, dtype)
    if init == "scaled_normal":
        w = w / jnp.sqrt(jnp.asarray(math.prod(w_shape[1:]), dtype))
    return Layer(w, jax.random.normal(b_key, w_shape[:1], dtype))


def layer_sizes(params: Params) -> list[int]:
    """The ``sizes`` list that `init_mlp` would take for these params.

    Examples:
      >>> fbp.params.layer_sizes(init_mlp(jax.random.key(0), [3, 4, 2]))
      [3, 4, 2]
    """
    return [params[0].w.shape[1]] + [layer.w.shape[0] for layer in params]

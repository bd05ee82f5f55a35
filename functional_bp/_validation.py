"""Input checks, run in Python at trace time, before any maths.

Layers are numbered as in the documents: layer 1 is ``params[0]``, layer 0 is the input.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np


def check_float_dtype(dtype: Any, what: str) -> None:
    """Raises TypeError unless ``dtype`` is a real floating dtype."""
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"Expected {what} to be a floating dtype, got {dtype!r} instead") from None
    if not jnp.issubdtype(dt, jnp.floating):
        raise TypeError(
            f"Expected {what} to have a real floating dtype (float32, float64, ...), "
            f"got {dt} instead"
        )


def check_params(params: Any) -> list[int]:
    """Checks that params is a chain of `Layer(w, b)`; returns the layer sizes."""
    if not isinstance(params, (list, tuple)) or len(params) == 0:
        raise TypeError(
            "Expected params to be a non-empty list of Layer(w, b), "
            f"got {type(params).__name__} instead"
        )
    sizes: list[int] = []
    first_dtype = None
    for l, layer in enumerate(params, start=1):
        where = f"layer {l} (params[{l - 1}])"
        if not isinstance(layer, tuple) or len(layer) != 2:
            raise TypeError(f"Expected {where} to be a Layer(w, b), got {type(layer).__name__}")
        w, b = layer
        w_shape, b_shape = np.shape(w), np.shape(b)
        if len(w_shape) != 2:
            raise ValueError(
                f"Expected {where} w to have rank 2 (n_out, n_in), got shape {w_shape} instead"
            )
        if b_shape != (w_shape[0],):
            raise ValueError(
                f"Expected {where} b to have shape ({w_shape[0]},) to match w of shape "
                f"{w_shape}, got {b_shape} instead"
            )
        if sizes and w_shape[1] != sizes[-1]:
            raise ValueError(
                f"Layers don't chain: {where} w has shape {w_shape}, so it takes "
                f"{w_shape[1]} inputs, but layer {l - 1} has {sizes[-1]} neurons "
                f"(w of shape {np.shape(params[l - 2][0])})"
            )
        for name, leaf in (("w", w), ("b", b)):
            dtype = jnp.result_type(leaf)
            check_float_dtype(dtype, f"{where} {name}")
            if first_dtype is None:
                first_dtype = dtype
            elif dtype != first_dtype:
                raise TypeError(
                    f"Expected all params to share one dtype: {where} {name} is {dtype}, "
                    f"layer 1 w is {first_dtype}"
                )
        if not sizes:
            sizes.append(w_shape[1])
        sizes.append(w_shape[0])
    return sizes


def check_data(sizes: list[int], x: Any, y: Any | None, *, batched: bool | None) -> None:
    """Checks x (and y) against the network's input (and output) size.

    Args:
      batched: True: x is (batch, n_in); False: x is (n_in,); None: either.
    """
    n_in, n_out = sizes[0], sizes[-1]
    shapes = {True: f"(batch, {n_in})", False: f"({n_in},)", None: f"({n_in},) or (batch, {n_in})"}
    if not hasattr(x, "shape"):
        raise TypeError(f"Expected x to be an array, got {type(x).__name__} instead")
    x_shape = np.shape(x)
    ranks = {True: (2,), False: (1,), None: (1, 2)}[batched]
    if len(x_shape) not in ranks or x_shape[-1] != n_in:
        raise ValueError(
            f"Expected x to have shape {shapes[batched]} for a network of sizes {sizes}, "
            f"got {x_shape} instead"
        )
    check_float_dtype(jnp.result_type(x), "x")
    if y is None:
        return
    if not hasattr(y, "shape"):
        raise TypeError(f"Expected y to be an array, got {type(y).__name__} instead")
    y_shape = np.shape(y)
    expected = x_shape[:-1] + (n_out,)
    if y_shape != expected:
        raise ValueError(
            f"Expected y to have shape {expected} (x is {x_shape}, the output layer has "
            f"{n_out} neurons), got {y_shape} instead"
        )
    check_float_dtype(jnp.result_type(y), "y")

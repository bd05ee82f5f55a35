"""Input checks, run in Python at trace time, before any maths.

Layers are numbered as in the documents: layer 1 is ``params[0]``, layer 0 is the input.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import jax
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
        first_dtype = check_shared_dtype(((f"{where} w", w), (f"{where} b", b)), first_dtype)
        if not sizes:
            sizes.append(w_shape[1])
        sizes.append(w_shape[0])
    return sizes


def check_shared_dtype(named_leaves, first_dtype=None):
    """Each leaf of a real floating dtype, all that of the first (``first_dtype``, when
    given, is an earlier layer's); returns that dtype."""
    for what, leaf in named_leaves:
        dtype = jnp.result_type(leaf)
        check_float_dtype(dtype, what)
        if first_dtype is None:
            first_dtype = dtype
        elif dtype != first_dtype:
            raise TypeError(
                f"Expected all params to share one dtype: {what} is {dtype}, layer 1 w is "
                f"{first_dtype}"
            )
    return first_dtype


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
    if y is not None:
        check_targets(y, x_shape[:-1], n_out, x_shape)


def check_targets(y: Any, lead: tuple, n_out: int, x_shape: tuple) -> None:
    """y as targets for examples of leading shape ``lead`` (() for one example): one-hot
    or real of shape lead + (n_out,), or integer class labels of shape ``lead``."""
    if not hasattr(y, "shape"):
        raise TypeError(f"Expected y to be an array, got {type(y).__name__} instead")
    y_shape = np.shape(y)
    expected = tuple(lead) + (n_out,)
    if jnp.issubdtype(jnp.result_type(y), jnp.integer):
        check_labels(y, tuple(lead), n_out, expected)
        return
    if y_shape != expected:
        raise ValueError(
            f"Expected y to have shape {expected} (x is {x_shape}, the output layer has "
            f"{n_out} neurons), got {y_shape} instead"
        )
    check_float_dtype(jnp.result_type(y), "y")


def check_labels(y: Any, shape: tuple, n_out: int, one_hot_shape: tuple) -> None:
    """Integer class labels in place of one-hot targets: one per example, in [0, n_out)
    (checked where the values can be seen)."""
    if np.shape(y) != shape:
        raise ValueError(
            f"Expected integer class labels y to have shape {shape} (one per example), or "
            f"one-hot targets of shape {one_hot_shape}; got {np.shape(y)} instead"
        )
    check_label_range(y, n_out, "y")


def check_label_range(labels: Any, n_out: int, name: str) -> None:
    """Raises unless every class label is in [0, n_out); a traced array is left alone."""
    if is_traced(labels) or np.size(labels) == 0:
        return
    values = np.asarray(labels)
    low, high = values.min(), values.max()
    if low < 0 or high >= n_out:
        raise ValueError(
            f"Expected {name} to be class labels in [0, {n_out}) (the output layer has {n_out} "
            f"neurons), got labels from {low} to {high}"
        )


# Values. A Python number, a NumPy number and a concrete JAX array are checked; a value
# traced under jit or vmap is not (only its shape and dtype can be seen).


def is_traced(value: Any) -> bool:
    """True for a value traced under `jax.jit`, `jax.vmap`, ... (its value is unknown)."""
    return isinstance(value, jax.core.Tracer)


def check_int(value: Any, name: str, *, minimum: int = 1) -> int:
    """Returns ``value`` as an int; Python and NumPy integers are accepted, bools not."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"Expected {name} to be an int >= {minimum}, got {value!r} instead")
    if value < minimum:
        raise ValueError(f"Expected {name} to be an int >= {minimum}, got {value} instead")
    return int(value)


def check_number(
    value: Any, name: str, *, minimum: float, inclusive: bool = True, optional: bool = False
) -> None:
    """Raises unless ``value`` is a finite real number >= ``minimum`` (> if not
    ``inclusive``), or None when ``optional``.

    A real scalar JAX or NumPy array counts as a number: a concrete one is checked like a
    Python number, a traced one only for its shape and dtype."""
    bound = f"{'>=' if inclusive else '>'} {minimum}"
    if value is None and optional:
        return
    if isinstance(value, (jax.Array, np.ndarray)):
        real = jnp.issubdtype(value.dtype, jnp.integer) or jnp.issubdtype(value.dtype, jnp.floating)
        if value.shape != () or not real:
            raise TypeError(
                f"Expected {name} to be a real scalar, got an array of {value.dtype} with "
                f"shape {value.shape} instead"
            )
        if is_traced(value):
            return
        value = np.asarray(value).item()
    if isinstance(value, (bool, np.bool_)) or not isinstance(
        value, (int, float, np.integer, np.floating)
    ):
        raise TypeError(
            f"Expected {name} to be a number {bound}, got {type(value).__name__} {value!r} instead"
        )
    value = float(value)
    if not np.isfinite(value) or value < minimum or (not inclusive and value == minimum):
        raise ValueError(f"Expected {name} to be a finite number {bound}, got {value} instead")


def check_key(key: Any, name: str = "key") -> None:
    """Raises TypeError unless ``key`` is one `jax.random` key: ``jax.random.key(seed)``
    (a typed key) or ``jax.random.PRNGKey(seed)`` (uint32 of shape (2,))."""
    dtype = getattr(key, "dtype", None)
    shape = np.shape(key) if dtype is not None else None
    typed = dtype is not None and jnp.issubdtype(dtype, jax.dtypes.prng_key)
    raw = dtype == np.uint32 and shape == (2,)
    if (typed and shape == ()) or raw:
        return
    got = f"{dtype} of shape {shape}" if dtype is not None else f"{type(key).__name__} {key!r}"
    raise TypeError(
        f"Expected {name} to be a jax.random key (jax.random.key(0) or "
        f"jax.random.PRNGKey(0)), got {got} instead"
    )


def optional_key(key: Any, name: str = "key") -> None:
    """`check_key` unless ``key`` is None."""
    if key is not None:
        check_key(key, name)


def check_nonempty(x: Any, name: str = "xs") -> None:
    """A mean over no examples is undefined: refuse it rather than return NaN or zeros."""
    if np.shape(x)[0] == 0:
        raise ValueError(
            f"Expected {name} to hold at least one example, got shape {np.shape(x)} instead"
        )


def check_values(**rules: Callable[[Any, str], Any]):
    """Decorates a jitted function: ``rules[name](value, name)`` runs on each named
    argument before the call, where a Python number can still be seen (inside jit it is a
    tracer). The jitted function's ``lower``, ``trace`` and ``_cache_size`` stay reachable."""

    def decorate(jitted):
        names = list(inspect.signature(jitted).parameters)
        positions = {name: names.index(name) for name in rules}

        check_call = getattr(jitted, "check_call", None)

        @functools.wraps(jitted)
        def checked(*args, **kwargs):
            if check_call is not None:  # the call's shape before its values
                check_call(args, kwargs)
            for name, rule in rules.items():
                if name in kwargs:
                    rule(kwargs[name], name)
                elif positions[name] < len(args):
                    rule(args[positions[name]], name)
            return jitted(*args, **kwargs)

        for attribute in ("lower", "trace", "eval_shape", "_cache_size", "clear_cache"):
            if hasattr(jitted, attribute):
                setattr(checked, attribute, getattr(jitted, attribute))
        if check_call is not None:
            checked.check_call = check_call
        # `training.many` applies them to each run's values before its vmap.
        checked.value_checks = {**getattr(jitted, "value_checks", {}), **rules}
        return checked

    return decorate


def positive(value: Any, name: str) -> None:
    check_number(value, name, minimum=0, inclusive=False)


def non_negative(value: Any, name: str) -> None:
    check_number(value, name, minimum=0)


def optional_non_negative(value: Any, name: str) -> None:
    check_number(value, name, minimum=0, optional=True)


def optional_count(value: Any, name: str) -> None:
    check_number(value, name, minimum=1, optional=True)


def finite_array(value: Any, name: str) -> None:
    """A `check_values` rule: refuses a concrete float array holding NaN or inf, naming
    it (one reduction on the device). Tracers (your own jit or vmap), non-arrays and
    integer arrays are left to the shape and dtype checks."""
    if is_traced(value) or not hasattr(value, "dtype"):
        return
    if not jnp.issubdtype(value.dtype, jnp.inexact):
        return
    try:
        xp = np if isinstance(value, np.ndarray) else jnp
        bad = int(xp.sum(~xp.isfinite(value)))
    except jax.errors.ConcretizationTypeError:  # a constant inside the caller's jit
        bad = int(np.sum(~np.isfinite(np.asarray(value))))
    if bad:
        raise ValueError(
            f"Expected {name} to be finite, got {bad} NaN or infinite entries of "
            f"{np.size(value)} (shape {np.shape(value)}) instead"
        )

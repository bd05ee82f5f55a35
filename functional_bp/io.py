"""Saving and loading params as ``.npz``: arrays and plain metadata, never pickle."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any, Optional

import jax.numpy as jnp
import numpy as np

from functional_bp._files import atomic_write
from functional_bp._validation import check_params
from functional_bp.params import Layer, Params

__all__ = ["load_feedback", "load_params", "save_params"]

_FORMAT = "functional_bp.params/1"
_RESERVED = ("format", "sizes", "dtype")


def _stored(array: np.ndarray) -> np.ndarray:
    """numpy's own dtypes as they are; others (bfloat16, float8 from ml_dtypes, which
    ``.npz`` would store as opaque void) as their bits, unsigned ints of the same width."""
    if array.dtype.type.__module__ == "numpy":
        return array
    return array.view(f"u{array.dtype.itemsize}")


def save_params(path: str | os.PathLike, params: Params, *, feedback=None, **metadata: Any) -> Path:
    """Writes params and JSON-able metadata (activation, cost, ...) to ``path`` (.npz).

    The sizes and the dtype are stored with them; params of a dtype numpy lacks
    (bfloat16) are stored as their bits and come back exactly. The write is atomic: a
    temporary file in the same directory, renamed over ``path`` only once complete, so a
    failed save leaves any earlier file intact and nothing half-written. ``feedback``,
    the matrices of a feedback-alignment rule, are stored with the params
    (`load_feedback` reads them).

    Raises (before anything is written):
      ValueError: a metadata key is reserved ("format", "sizes", "dtype") or its values
        are not strict JSON (NaN included).
      TypeError: a metadata value is not JSON-able, or params are not a list of `Layer`.
      OSError: ``path`` cannot be written (named in the message).

    Examples:
      >>> import os, tempfile
      >>> path = os.path.join(tempfile.mkdtemp(), "params.npz")
      >>> params = init_mlp(jax.random.key(0), [3, 2])
      >>> fbp.io.save_params(path, params, activation="sigmoid").name
      'params.npz'
    """
    sizes = check_params(params)
    reserved = sorted(set(metadata) & set(_RESERVED))
    if reserved:
        raise ValueError(f"Metadata keys {reserved} are reserved by save_params; rename them")
    dtype = np.dtype(params[0].w.dtype)
    try:
        header = json.dumps(
            {"format": _FORMAT, "sizes": sizes, "dtype": dtype.name, **metadata}, allow_nan=False
        )
    except (TypeError, ValueError) as error:
        raise type(error)(f"Expected metadata that is strict JSON: {error}") from None
    arrays = {"header": np.array(header)}
    for l, layer in enumerate(params, start=1):
        arrays[f"w{l}"] = _stored(np.asarray(layer.w))
        arrays[f"b{l}"] = _stored(np.asarray(layer.b))
    for l, matrix in enumerate(feedback or [], start=1):
        arrays[f"feedback{l}"] = _stored(np.asarray(matrix))
    return atomic_write(path, lambda f: np.savez(f, **arrays), "params")


def _restored(array: np.ndarray, dtype: np.dtype, path: Path) -> np.ndarray:
    if array.dtype == dtype:
        return array
    if array.dtype == np.dtype(f"u{dtype.itemsize}"):  # stored as bits by `_stored`
        return array.view(dtype)
    raise ValueError(f"{path}: an array of {array.dtype} where the header says {dtype}")


def load_feedback(path: str | os.PathLike) -> Optional[list[np.ndarray]]:
    """The feedback matrices `save_params` stored with the params, or None.

    Examples:
      >>> import os, tempfile
      >>> path = os.path.join(tempfile.mkdtemp(), "params.npz")
      >>> params = init_mlp(jax.random.key(0), [3, 2])
      >>> _ = fbp.io.save_params(path, params, feedback=[jnp.ones_like(params[0].w)])
      >>> [matrix.shape for matrix in fbp.io.load_feedback(path)]
      [(2, 3)]
    """
    return load_params(path)[1].get("feedback")


def load_params(path: str | os.PathLike) -> tuple[list[Layer], dict[str, Any]]:
    """Reads a file written by `save_params`; returns ``(params, metadata)``.

    Raises:
      FileNotFoundError: no such file.
      ValueError: not such a file, or its arrays don't match its recorded sizes.

    Examples:
      >>> import os, tempfile
      >>> path = os.path.join(tempfile.mkdtemp(), "params.npz")
      >>> _ = fbp.io.save_params(path, init_mlp(jax.random.key(0), [3, 2]), cost="quadratic")
      >>> params, metadata = fbp.io.load_params(path)
      >>> params[0].w.shape, metadata
      ((2, 3), {'sizes': [3, 2], 'cost': 'quadratic'})
    """
    path = Path(path)
    try:
        with open(path, "rb") as f, np.load(f, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except FileNotFoundError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as error:
        raise ValueError(f"{path}: not a functional_bp params file ({error})") from None
    try:
        meta = json.loads(str(arrays.pop("header")))
    except (KeyError, ValueError):
        meta = None
    if not isinstance(meta, dict) or meta.pop("format", None) != _FORMAT:
        raise ValueError(f"{path}: not a functional_bp params file (no valid header)")
    sizes = meta.get("sizes")
    if not isinstance(sizes, list) or len(sizes) < 2:
        raise ValueError(f"{path}: the header's sizes {sizes!r} are not a list of layer sizes")
    feedback = {name for name in arrays if name.startswith("feedback")}
    expected = {f"{leaf}{l}" for l in range(1, len(sizes)) for leaf in "wb"} | feedback
    if set(arrays) != expected:
        raise ValueError(f"{path}: expected arrays {sorted(expected)}, found {sorted(arrays)}")
    dtype = meta.pop("dtype", None)  # absent from files of earlier versions
    if dtype is not None:
        try:
            dtype = jnp.dtype(dtype)
        except TypeError:
            raise ValueError(f"{path}: unknown dtype {dtype!r} in the header") from None
        arrays = {name: _restored(array, dtype, path) for name, array in arrays.items()}
    params = [Layer(arrays[f"w{l}"], arrays[f"b{l}"]) for l in range(1, len(sizes))]
    if feedback:
        meta["feedback"] = [arrays[f"feedback{l}"] for l in range(1, len(feedback) + 1)]
    try:
        found = check_params(params)
    except (ValueError, TypeError) as error:
        raise ValueError(f"{path}: {error}") from None
    if found != sizes:
        raise ValueError(f"{path}: arrays have sizes {found}, the header says {sizes}")
    return params, meta

"""Saving and loading params as ``.npz``: arrays and plain metadata, never pickle.

A file holds the entries ``header`` (JSON: format, sizes, dtype and the metadata; for the
params of a network with `functional_bp.layers`, whose w may have rank 4, the shapes of
every layer's w and b instead of the sizes),
``w1``, ``b1``, ..., ``wL``, ``bL`` and, with a rule's feedback matrices,
``feedback1``, ..., ``feedbackK``. `save_params` writes nothing `load_params` would refuse,
and `load_params` refuses a file whose entries don't agree with its header, naming the
file and the entry.
"""

from __future__ import annotations

import json
import os
import re
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from functional_bp._files import atomic_write, check_writable, open_regular
from functional_bp._validation import check_float_dtype, check_params, check_shared_dtype
from functional_bp.feedback import RULES, init_feedback
from functional_bp.params import Layer, Params

__all__ = ["load_feedback", "load_params", "save_params"]

_FORMAT = "functional_bp.params/1"
_RESERVED = ("format", "sizes", "shapes", "dtype")
_FEEDBACK = re.compile(r"feedback[1-9][0-9]*")
# What reading an entry of a damaged archive raises: CRC and header errors, truncation,
# pickled (object) arrays refused by allow_pickle=False.
_READ_ERRORS = (OSError, ValueError, EOFError, SyntaxError, zipfile.BadZipFile, zlib.error)


def _stored(array: np.ndarray) -> np.ndarray:
    """numpy's own dtypes as they are; others (bfloat16, float8 from ml_dtypes, which
    ``.npz`` would store as opaque void) as their bits, unsigned ints of the same width."""
    if array.dtype.type.__module__ == "numpy":
        return array
    return array.view(f"u{array.dtype.itemsize}")


def _check_feedback(
    matrices: Any,
    params: Params,
    dtype: np.dtype,
    rule: Any,
    name: Callable[[int], str],
    every: str,
) -> list:
    """Raises unless ``matrices`` are feedback matrices `load_params` reads back: rank-2
    arrays of the params' ``dtype``, one per hidden layer; when ``rule`` is one of
    `feedback.RULES`, as many and of the shapes as `feedback.init_feedback` makes for it
    (none for a rule that draws none, "sign" or "bp"). ``name(i)`` names
    matrix i in the messages, ``every`` all of them. Returns them as a list.

    Raises:
      TypeError: not a list or tuple of arrays, or an array of another dtype.
      ValueError: a matrix of another rank or (under a rule) shape, or another count.
    """
    if not isinstance(matrices, (list, tuple)):
        raise TypeError(
            f"Expected {every} to be a list of matrices, one per hidden layer, or None, "
            f"got {type(matrices).__name__} instead"
        )
    for i, matrix in enumerate(matrices):
        if not (hasattr(matrix, "shape") and hasattr(matrix, "dtype")):
            raise TypeError(f"Expected {name(i)} to be an array, got {type(matrix).__name__}")
        got = np.dtype(matrix.dtype)
        if got != dtype or not jnp.issubdtype(got, jnp.floating):
            raise TypeError(
                f"Expected {name(i)} to have the params' dtype {dtype}, got {got} of shape "
                f"{tuple(np.shape(matrix))} instead"
            )
        if np.ndim(matrix) != 2:
            raise ValueError(
                f"Expected {name(i)} to have rank 2 (a matrix), got shape "
                f"{tuple(np.shape(matrix))} instead"
            )
    sizes = check_params(params)
    shapes, why = None, "one per hidden layer"
    if rule in RULES:  # the shapes the rule's own init_feedback makes, without computing it
        made = jax.eval_shape(lambda: init_feedback(jax.random.key(0), params, rule))
        shapes = [tuple(m.shape) for m in made or []]
        why = f"rule {rule!r} has none" if made is None else f"{why} for rule {rule!r}"
    count = len(params) - 1 if shapes is None else len(shapes)
    if len(matrices) != count:
        raise ValueError(
            f"Expected {every} to hold {count} feedback matrices ({why}, params of sizes "
            f"{sizes}), got {len(matrices)} instead"
        )
    for i, (matrix, shape) in enumerate(zip(matrices, shapes or [])):
        if tuple(np.shape(matrix)) != shape:
            what = "(n_L, n_l)" if rule == "dfa" else f"w{i + 2}'s"
            raise ValueError(
                f"Expected {name(i)} to have shape {shape}, {what} for rule {rule!r} with "
                f"params of sizes {sizes}, got {tuple(np.shape(matrix))} instead"
            )
    return list(matrices)


def _is_layered(params) -> bool:
    """Params of a network with `functional_bp.layers`: some w of rank 4 (a Conv2D's)."""
    return isinstance(params, (list, tuple)) and any(
        isinstance(layer, tuple) and len(layer) == 2 and np.ndim(layer[0]) == 4 for layer in params
    )


def _check_layered_params(params) -> list[list[list[int]]]:
    """Params of layer types: Layer(w, b), w of rank 2 or 4, b of shape (w.shape[0],),
    one real floating dtype; returns their shapes, as the header stores them."""
    shapes, first = [], None
    for l, layer in enumerate(params, start=1):
        where = f"layer {l} (params[{l - 1}])"
        if not isinstance(layer, tuple) or len(layer) != 2:
            raise TypeError(f"Expected {where} to be a Layer(w, b), got {type(layer).__name__}")
        w_shape, b_shape = tuple(np.shape(layer[0])), tuple(np.shape(layer[1]))
        if len(w_shape) not in (2, 4) or b_shape != w_shape[:1]:
            raise ValueError(
                f"Expected {where} to have w of rank 2 (dense) or 4 (Conv2D) and b of shape "
                f"(w.shape[0],), got w {w_shape} and b {b_shape}"
            )
        first = check_shared_dtype(((f"{where} w", layer[0]), (f"{where} b", layer[1])), first)
        shapes.append([list(w_shape), list(b_shape)])
    return shapes


def save_params(path: str | os.PathLike, params: Params, *, feedback=None, **metadata: Any) -> Path:
    """Writes params and JSON-able metadata (activation, cost, ...) to ``path`` (.npz).

    The sizes and the dtype are stored with them; params of a dtype numpy lacks
    (bfloat16) are stored as their bits and come back exactly. The write is atomic: a
    temporary file in the same directory, renamed over ``path`` only once complete, so a
    failed save leaves any earlier file intact and nothing half-written. Only a regular
    file is replaced: a symlink to one is written through (the file it leads to gets the
    new contents, the symlink stays); a device node (``/dev/null``), FIFO, socket,
    directory, a symlink to one of them, or a dangling symlink is refused.

    ``feedback``, the matrices of a feedback-alignment rule, are stored with the params
    (`load_feedback` reads them): None, or a list of rank-2 arrays of the params' dtype,
    one per hidden layer (``len(params) - 1``). With a metadata ``rule`` that is one of
    `functional_bp.feedback.RULES`, their count and shapes must be those
    `feedback.init_feedback` makes for it: (n_{l+1}, n_l) for "fa" and "kp", (n_L, n_l)
    for "dfa", and none (feedback None or []) for a rule that draws none, such as "sign".
    Another ``rule`` is plain metadata. Nothing is written that `load_params` would
    refuse.

    Raises (before anything is written; an earlier file at ``path`` stays intact):
      ValueError: a metadata key is reserved ("format", "sizes", "dtype") or its values
        are not strict JSON (NaN included); a feedback matrix is not of rank 2, or there
        are not as many as hidden layers, or not of the shapes of the metadata's rule
        ("feedback[i]" named); ``path`` exists and is, or is a symlink to, a device node,
        FIFO or socket ("Cannot write params PATH: it is a character device, not a
        regular file").
      TypeError: a metadata value is not JSON-able, params are not a list of `Layer`,
        or ``feedback`` is not a list of arrays of the params' dtype.
      IsADirectoryError: ``path`` is, or is a symlink to, a directory.
      FileNotFoundError: the directory of ``path`` does not exist, or ``path`` is a
        dangling symlink (refused: its target is not created).
      OSError: ``path`` cannot be written (named in the message).

    Examples:
      >>> import os, tempfile
      >>> path = os.path.join(tempfile.mkdtemp(), "params.npz")
      >>> params = init_mlp(jax.random.key(0), [3, 2])
      >>> fbp.io.save_params(path, params, activation="sigmoid").name
      'params.npz'
    """
    layered = _is_layered(params)
    if layered:
        described = {"shapes": _check_layered_params(params)}
    else:
        described = {"sizes": check_params(params)}
    reserved = sorted(set(metadata) & set(_RESERVED))
    if reserved:
        raise ValueError(f"Metadata keys {reserved} are reserved by save_params; rename them")
    if layered and feedback is not None:
        raise ValueError(
            "save_params stores feedback matrices with the params of dense layers only; these "
            "params have a Conv2D's w (rank 4)"
        )
    dtype = np.dtype(params[0].w.dtype)
    try:
        header = json.dumps(
            {"format": _FORMAT, **described, "dtype": dtype.name, **metadata}, allow_nan=False
        )
    except (TypeError, ValueError) as error:
        raise type(error)(f"Expected metadata that is strict JSON: {error}") from None
    if feedback is not None:
        feedback = _check_feedback(
            feedback,
            params,
            dtype,
            metadata.get("rule"),
            lambda i: f"feedback[{i}] (the feedback matrix of hidden layer {i + 1})",
            "feedback",
        )
    check_writable(path, "params")
    arrays = {"header": np.array(header)}
    for l, layer in enumerate(params, start=1):
        arrays[f"w{l}"] = _stored(np.asarray(layer.w))
        arrays[f"b{l}"] = _stored(np.asarray(layer.b))
    for l, matrix in enumerate(feedback or [], start=1):
        arrays[f"feedback{l}"] = _stored(np.asarray(matrix))
    return atomic_write(path, lambda f: np.savez(f, **arrays), "params")


def _restored(array: np.ndarray, dtype: np.dtype, path: Path, name: str) -> np.ndarray:
    """Entry ``name`` as ``dtype``: as stored, or from the bits `_stored` stores."""
    if array.dtype == dtype:
        return array
    if dtype.type.__module__ != "numpy" and array.dtype == np.dtype(f"u{dtype.itemsize}"):
        return array.view(dtype)
    raise ValueError(f"{path}: entry {name!r} is {array.dtype}, the header says {dtype}")


def load_feedback(path: str | os.PathLike) -> Optional[list[np.ndarray]]:
    """The feedback matrices `save_params` stored with the params, or None.

    Raises:
      FileNotFoundError: no such file.
      ValueError: as `load_params`: not such a file, or an entry or the header does not
        match (named in the message).

    Examples:
      >>> import os, tempfile
      >>> path = os.path.join(tempfile.mkdtemp(), "params.npz")
      >>> params = init_mlp(jax.random.key(0), [3, 4, 2])
      >>> _ = fbp.io.save_params(path, params, feedback=[jnp.ones_like(params[1].w)])
      >>> [matrix.shape for matrix in fbp.io.load_feedback(path)]
      [(2, 4)]
    """
    return load_params(path)[1].get("feedback")


def _no_constant(name: str):
    raise ValueError(f"{name} is not strict JSON")


def _header(path: Path, data: np.lib.npyio.NpzFile) -> dict[str, Any]:
    """The header's metadata, its sizes checked; "format" removed."""
    if "header" not in data.files:
        raise ValueError(f"{path}: not a functional_bp params file (no entry 'header')")
    text = _entry(path, data, "header")
    if text.ndim != 0 or text.dtype.kind != "U":
        raise ValueError(
            f"{path}: entry 'header' is not a JSON string (a {text.dtype} array of shape "
            f"{text.shape})"
        )
    try:
        meta = json.loads(str(text), parse_constant=_no_constant)
    except ValueError as error:
        raise ValueError(f"{path}: entry 'header' is not JSON ({error})") from None
    if not isinstance(meta, dict) or meta.pop("format", None) != _FORMAT:
        raise ValueError(
            f"{path}: not a functional_bp params file (entry 'header' is not a JSON object "
            f"with format {_FORMAT!r})"
        )
    if "shapes" in meta and "sizes" not in meta:
        _check_header_shapes(path, meta["shapes"])
        if "feedback" in meta:
            raise ValueError(f"{path}: entry 'header' has the key 'feedback', which is reserved")
        return meta
    sizes = meta.get("sizes")
    if (
        not isinstance(sizes, list)
        or len(sizes) < 2
        or not all(type(n) is int and n >= 0 for n in sizes)
    ):
        raise ValueError(
            f"{path}: entry 'header': expected sizes to be a list of at least 2 layer sizes "
            f"(ints >= 0), got {sizes!r} instead"
        )
    if "feedback" in meta:
        raise ValueError(f"{path}: entry 'header' has the key 'feedback', which is reserved")
    return meta


def _check_header_shapes(path: Path, shapes: Any) -> None:
    """The header of params of layer types: [[w shape, b shape], ...], w of rank 2 or 4."""

    def is_shape(value, ranks) -> bool:
        return (
            isinstance(value, list)
            and len(value) in ranks
            and all(type(n) is int and n >= 0 for n in value)
        )

    if (
        not isinstance(shapes, list)
        or not shapes
        or not all(
            isinstance(pair, list)
            and len(pair) == 2
            and is_shape(pair[0], (2, 4))
            and is_shape(pair[1], (1,))
            and pair[1] == pair[0][:1]
            for pair in shapes
        )
    ):
        raise ValueError(
            f"{path}: entry 'header': expected shapes to be a list of [w shape, b shape] "
            f"per layer (w of rank 2 or 4, b of w's first size), got {shapes!r} instead"
        )


def _entry(path: Path, data: np.lib.npyio.NpzFile, name: str) -> np.ndarray:
    """One entry read, any damage reported as a ValueError naming the file and the entry."""
    try:
        array = data[name]
    except _READ_ERRORS as error:
        raise ValueError(f"{path}: entry {name!r} cannot be read ({error})") from None
    if not isinstance(array, np.ndarray):
        raise ValueError(f"{path}: entry {name!r} is not an .npy array")
    return array


def _dtype(path: Path, meta: dict[str, Any], first: np.ndarray) -> np.dtype:
    """The params' dtype: the header's, or in files of earlier versions w1's."""
    name = meta.pop("dtype", None)
    if name is None:
        dtype = first.dtype
    else:
        try:
            dtype = jnp.dtype(name) if isinstance(name, str) else None
        except TypeError:
            dtype = None
        if dtype is None:
            raise ValueError(f"{path}: entry 'header' has an unknown dtype {name!r}")
    try:
        check_float_dtype(dtype, "the params' dtype")
    except TypeError as error:
        where = "entry 'w1'" if name is None else "entry 'header'"
        raise ValueError(f"{path}: {where}: {error}") from None
    return np.dtype(dtype)


def load_params(path: str | os.PathLike) -> tuple[list[Layer], dict[str, Any]]:
    """Reads a file written by `save_params`; returns ``(params, metadata)``, the
    metadata with ``"sizes"`` and, if stored, ``"feedback"``, the list of matrices.

    Every entry is checked against the header before the params are returned, and any
    disagreement is a ValueError naming the file and the entry: ``header`` that is not a
    JSON object of this format, or whose ``sizes`` are not a list of ints >= 0, or whose
    dtype is not a real floating dtype; a missing or unexpected entry; ``w{l}`` or
    ``b{l}`` of another shape than the sizes give or another dtype than the header's;
    ``feedback{k}`` not numbered 1..K, not of rank 2 and the params' dtype, not one per
    hidden layer, or (with a metadata ``rule``) not of the rule's shapes; an entry that
    cannot be read (pickled object arrays are refused, never unpickled); a truncated or
    corrupt archive.

    Raises:
      FileNotFoundError: no such file.
      ValueError: not such a file, or its entries don't match its header (as above).

    Examples:
      >>> import os, tempfile
      >>> path = os.path.join(tempfile.mkdtemp(), "params.npz")
      >>> _ = fbp.io.save_params(path, init_mlp(jax.random.key(0), [3, 2]), cost="quadratic")
      >>> params, metadata = fbp.io.load_params(path)
      >>> params[0].w.shape, metadata
      ((2, 3), {'sizes': [3, 2], 'cost': 'quadratic'})
    """
    path = Path(path)
    f = open_regular(path, "a functional_bp params file")
    with f:
        try:
            data = np.load(f, allow_pickle=False)
        except zipfile.BadZipFile as error:
            raise ValueError(
                f"{path}: not a functional_bp params file (a truncated or damaged archive: {error})"
            ) from None
        except _READ_ERRORS as error:
            raise ValueError(f"{path}: not a functional_bp params file ({error})") from None
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise ValueError(
                f"{path}: not a functional_bp params file (a single .npy array, not an .npz "
                "archive)"
            )
        with data:
            return _read(path, data)


def _read(path: Path, data: np.lib.npyio.NpzFile) -> tuple[list[Layer], dict[str, Any]]:
    meta = _header(path, data)
    if "sizes" not in meta:
        return _read_layered(path, data, meta)
    sizes = meta["sizes"]
    layers = range(1, len(sizes))
    names = set(data.files) - {"header"}
    feedback = sorted((n for n in names if _FEEDBACK.fullmatch(n)), key=lambda n: int(n[8:]))
    numbered = [f"feedback{k}" for k in range(1, len(feedback) + 1)]
    if feedback != numbered:
        raise ValueError(
            f"{path}: feedback entries {feedback} are not numbered feedback1..feedback"
            f"{len(feedback)}"
        )
    expected = {f"{leaf}{l}" for l in layers for leaf in "wb"}
    unexpected = sorted(names - expected - set(feedback))
    if unexpected:
        raise ValueError(
            f"{path}: unexpected entries {unexpected} (a params file of sizes {sizes} holds "
            f"header, w1..w{len(sizes) - 1}, b1..b{len(sizes) - 1} and feedback1..)"
        )
    missing = sorted(expected - names, key=lambda n: (int(n[1:]), n[0]))
    if missing:
        raise ValueError(
            f"{path}: missing entries {missing} (the header's sizes {sizes} need "
            f"w1..w{len(sizes) - 1} and b1..b{len(sizes) - 1})"
        )
    dtype = _dtype(path, meta, _entry(path, data, "w1"))
    shapes = [((sizes[l], sizes[l - 1]), (sizes[l],)) for l in layers]
    params = _layers(path, data, dtype, shapes, f"sizes {sizes}")
    try:
        check_params(params)
    except (ValueError, TypeError) as error:
        raise ValueError(f"{path}: {error}") from None
    if feedback:
        matrices = [_restored(_entry(path, data, n), dtype, path, n) for n in feedback]
        try:
            meta["feedback"] = _check_feedback(
                matrices,
                params,
                dtype,
                meta.get("rule"),
                lambda i: f"entry 'feedback{i + 1}'",
                f"entries feedback1..feedback{len(feedback)}",
            )
        except (ValueError, TypeError) as error:
            raise ValueError(f"{path}: {error}") from None
    return params, meta


def _read_layered(path: Path, data: np.lib.npyio.NpzFile, meta: dict) -> tuple[list[Layer], dict]:
    """Params of layer types: entries w1, b1, ... of the header's shapes, no feedback."""
    shapes = meta["shapes"]
    expected = {f"{leaf}{l}" for l in range(1, len(shapes) + 1) for leaf in "wb"}
    names = set(data.files) - {"header"}
    if names != expected:
        raise ValueError(
            f"{path}: entries {sorted(names)} do not match the header's {len(shapes)} layers "
            f"(w1..w{len(shapes)}, b1..b{len(shapes)}; missing {sorted(expected - names)}, "
            f"unexpected {sorted(names - expected)})"
        )
    dtype = _dtype(path, meta, _entry(path, data, "w1"))
    return _layers(path, data, dtype, shapes, "shapes"), meta


def _layers(path: Path, data, dtype: np.dtype, shapes, described: str) -> list[Layer]:
    """Entries w1, b1, ... of the (w shape, b shape) of each layer the header gives."""
    params = []
    for l, (w_shape, b_shape) in enumerate(shapes, start=1):
        leaves = []
        for leaf, shape in (("w", tuple(w_shape)), ("b", tuple(b_shape))):
            name = f"{leaf}{l}"
            array = _restored(_entry(path, data, name), dtype, path, name)
            if array.shape != shape:
                raise ValueError(
                    f"{path}: entry {name!r} has shape {array.shape}, the header's {described} "
                    f"give {shape}"
                )
            leaves.append(array)
        params.append(Layer(*leaves))
    return params

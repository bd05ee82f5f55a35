"""Saving and loading params as ``.npz``: arrays and plain metadata, never pickle."""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from functional_bp._validation import check_params
from functional_bp.params import Layer, Params

_FORMAT = "functional_bp.params/1"


def save_params(path: str | os.PathLike, params: Params, **metadata: Any) -> Path:
    """Writes params and JSON-able metadata (activation, cost, ...) to ``path`` (.npz).

    The sizes are stored with them. The write is atomic: a temporary file in the same
    directory, renamed over ``path`` only once complete, so a failed save leaves any
    earlier file intact and nothing half-written.
    """
    sizes = check_params(params)
    path = Path(path)
    header = json.dumps({"format": _FORMAT, "sizes": sizes, **metadata})
    arrays = {"header": np.array(header)}
    for l, layer in enumerate(params, start=1):
        arrays[f"w{l}"] = np.asarray(layer.w)
        arrays[f"b{l}"] = np.asarray(layer.b)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return path


def load_params(path: str | os.PathLike) -> tuple[list[Layer], dict[str, Any]]:
    """Reads a file written by `save_params`; returns ``(params, metadata)``.

    Raises:
      FileNotFoundError: no such file.
      ValueError: not such a file, or its arrays don't match its recorded sizes.
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
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
    expected = {f"{leaf}{l}" for l in range(1, len(sizes)) for leaf in "wb"}
    if set(arrays) != expected:
        raise ValueError(f"{path}: expected arrays {sorted(expected)}, found {sorted(arrays)}")
    params = [Layer(arrays[f"w{l}"], arrays[f"b{l}"]) for l in range(1, len(sizes))]
    try:
        found = check_params(params)
    except (ValueError, TypeError) as error:
        raise ValueError(f"{path}: {error}") from None
    if found != sizes:
        raise ValueError(f"{path}: arrays have sizes {found}, the header says {sizes}")
    return params, meta

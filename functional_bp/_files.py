"""Writing files so that nothing is half-written and every error names the target."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def check_writable(path: str | os.PathLike, what: str) -> Path:
    """Raises before any work unless ``path`` can be created or replaced: its directory
    exists and is writable, and ``path`` itself is not a directory."""
    path = Path(path)
    directory = path.parent
    if path.name in ("", ".", ".."):
        raise ValueError(f"Expected {what} to be a file name, got {str(path)!r}")
    if not directory.is_dir():
        raise FileNotFoundError(
            f"Cannot write {what} {path}: the directory {directory} does not exist"
        )
    if path.is_dir():
        raise IsADirectoryError(f"Cannot write {what} {path}: it is a directory")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise PermissionError(
            f"Cannot write {what} {path}: the directory {directory} is not writable"
        )
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(
    path: str | os.PathLike, write: Callable[[BinaryIO], None], what: str = "file"
) -> Path:
    """Calls ``write(f)`` on a temporary file beside ``path``, then renames it over
    ``path``. If anything fails (``write`` raising included) the temporary file is
    removed and any earlier ``path`` is left intact. The file gets the permissions the
    user's umask gives a new file; an `OSError` names ``path``, never the temporary."""
    path = check_writable(path, what)
    # A short temporary name: a target name near the 255-byte limit still works.
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".fbp-", suffix=".tmp")
    except OSError as error:
        raise OSError(error.errno, f"Cannot write {what} {path}: {error.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except OSError as error:
        Path(tmp).unlink(missing_ok=True)
        reason = error.strerror or error
        raise OSError(error.errno, f"Cannot write {what} {path}: {reason}") from error
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path

"""Writing files so that nothing is half-written and every error names the target.

Only a regular file is ever replaced. A write to a symlink goes through it: the file it
leads to is replaced and the symlink kept. Device nodes, FIFOs, sockets, directories,
symlinks to any of them and dangling symlinks are refused before any work.
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

_KINDS = (
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
)


def _kind(mode: int) -> str:
    """What a file that is neither a regular file nor a directory is, in words."""
    return next((kind for test, kind in _KINDS if test(mode)), "a special file")


def _target(path: Path, what: str) -> Path:
    """The file a write to ``path`` replaces or creates: ``path`` itself, or for a symlink
    the file it leads to. Raises (the exceptions of `check_writable`) unless that file is
    absent or a regular file."""
    try:
        mode = os.stat(path).st_mode  # follows symlinks
    except FileNotFoundError:
        if os.path.islink(path):
            raise FileNotFoundError(
                f"Cannot write {what} {path}: it is a symlink to {os.path.realpath(path)}, "
                "which does not exist (a dangling symlink is refused, not followed)"
            ) from None
        return path
    except PermissionError as error:
        raise PermissionError(f"Cannot write {what} {path}: {error.strerror}") from None
    except OSError as error:  # a symlink loop (ELOOP), a name too long, ...
        reason = error.strerror or error
        if os.path.islink(path):
            reason = f"it is a symlink that cannot be followed ({reason})"
        raise ValueError(f"Cannot write {what} {path}: {reason}, not a regular file") from None
    link = os.path.islink(path)
    target = Path(os.path.realpath(path)) if link else path
    through = f"a symlink to {target}, " if link else ""
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(f"Cannot write {what} {path}: it is {through}a directory")
    if not stat.S_ISREG(mode):
        raise ValueError(
            f"Cannot write {what} {path}: it is {through}{_kind(mode)}, not a regular file"
        )
    return target


def open_regular(path: str | os.PathLike, what: str):
    """``path`` opened for reading in binary, refused at once unless it is (or a symlink
    leads to) a regular file: a FIFO would block until a writer came, a device could
    stream forever. Opened without blocking, then checked with ``fstat`` (no race
    between the check and the open).

    Raises:
      FileNotFoundError: nothing is there.
      ValueError: ``"{path}: not {what} (it is a FIFO (named pipe), not a regular
        file)"``: a directory, a FIFO, a socket, a device, or a file that cannot be
        opened (the reason named).
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise
    except OSError as error:  # a directory on some systems, permissions, a socket, ...
        mode = _mode_or_none(path)
        reason = error.strerror or error
        if mode is not None and not stat.S_ISREG(mode):
            reason = _not_regular(mode)
        raise ValueError(f"{path}: not {what} ({reason})") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise ValueError(f"{path}: not {what} ({_not_regular(mode)})")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def _not_regular(mode: int) -> str:
    return "it is a directory" if stat.S_ISDIR(mode) else f"it is {_kind(mode)}, not a regular file"


def _mode_or_none(path) -> int | None:
    try:
        return os.stat(path).st_mode
    except OSError:
        return None


def check_writable(path: str | os.PathLike, what: str) -> Path:
    """Raises before any work unless ``path`` can be created or replaced; returns it as a
    `Path`.

    ``path`` may name a new file, a regular file, or a symlink that leads to a regular
    file: a write goes through the symlink (it replaces the file the symlink leads to and
    keeps the symlink). Anything else is refused, never replaced: a device node
    (``/dev/null``, ``/dev/full``), a FIFO, a socket, a directory, a symlink to any of
    them, and a dangling symlink (its target is not created).

    Raises:
      ValueError: ``path`` is not a file name (``""``, ``"."``, ``".."``); or it, or what
        its symlinks lead to, exists and is neither a regular file nor a directory (the
        message names ``path`` and what it is: "Cannot write params /dev/full: it is a
        character device, not a regular file"); or its symlinks loop.
      IsADirectoryError: ``path`` is, or is a symlink to, a directory.
      FileNotFoundError: the directory of ``path`` does not exist, or ``path`` is a
        dangling symlink.
      PermissionError: the directory the file is written in is not writable.
    """
    path = Path(path)
    directory = path.parent
    if path.name in ("", ".", ".."):
        raise ValueError(f"Expected {what} to be a file name, got {str(path)!r}")
    if not directory.is_dir():
        raise FileNotFoundError(
            f"Cannot write {what} {path}: the directory {directory} does not exist"
        )
    directory = _target(path, what).parent
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
    ``path``; returns ``path`` as a `Path`. If anything fails (``write`` raising included)
    the temporary file is removed and any earlier ``path`` is left intact. The file gets
    the permissions the user's umask gives a new file; an `OSError` names ``path``, never
    the temporary.

    Only a regular file is ever replaced: `check_writable` runs before ``write`` is called
    and again before the rename (``path`` may change while ``write`` runs). A symlink to a
    regular file is written through: the temporary file is made beside the file the
    symlink leads to and renamed over that file, so the symlink stays and leads to the new
    contents.

    Raises:
      ValueError, IsADirectoryError, FileNotFoundError, PermissionError: as
        `check_writable`, before ``write`` is called: ``path`` is (or is a symlink to) a
        device node, FIFO, socket or directory, is a dangling symlink, or cannot be
        created. ValueError also if a symlink at ``path`` changed while ``write`` ran.
      OSError: writing or renaming failed ("Cannot write WHAT PATH: reason").
      Whatever ``write`` raises, after removing the temporary file.
    """
    path = check_writable(path, what)
    target = _target(path, what)
    # A short temporary name: a target name near the 255-byte limit still works.
    try:
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".fbp-", suffix=".tmp")
    except OSError as error:
        raise OSError(error.errno, f"Cannot write {what} {path}: {error.strerror}") from None
    try:
        try:
            with os.fdopen(fd, "wb") as f:
                write(f)
            os.chmod(tmp, 0o666 & ~_umask())
        except OSError as error:
            reason = error.strerror or error
            raise OSError(error.errno, f"Cannot write {what} {path}: {reason}") from error
        # Again: a download streamed by ``write`` takes minutes, time for path to change.
        if _target(path, what) != target:
            raise ValueError(f"Cannot write {what} {path}: its symlink changed during the write")
        try:
            os.replace(tmp, target)
        except OSError as error:
            reason = error.strerror or error
            raise OSError(error.errno, f"Cannot write {what} {path}: {reason}") from error
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path

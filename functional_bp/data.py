"""Data sets as numpy arrays: scikit-learn's 8x8 digits and MNIST from its IDX files.

This module is I/O, so it works in numpy; the arrays go into the JAX functions as they are.
Labels are class indices (int32); `one_hot` turns them into the vectors the costs expect.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import urllib.error
import urllib.request
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np

from functional_bp._files import atomic_write, open_regular
from functional_bp._validation import check_int, check_number

PathLike = str | os.PathLike

__all__ = [
    "DEFAULT_MIRROR",
    "MNIST_CHECKSUMS",
    "MNIST_FILES",
    "Dataset",
    "download_mnist",
    "expand_shifts",
    "load_digits",
    "load_mnist",
    "one_hot",
    "read_idx",
]

DEFAULT_MIRROR = "https://ossci-datasets.s3.amazonaws.com/mnist/"
"""The mirror torchvision downloads MNIST from."""

MNIST_CHECKSUMS: dict[str, tuple[str, str]] = {
    "train-images-idx3-ubyte.gz": ("md5", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
    "train-labels-idx1-ubyte.gz": ("md5", "d53e105ee54ea40749a09fcbcd1e9432"),
    "t10k-images-idx3-ubyte.gz": ("md5", "9fb629c4189551a2d022fa330f9573f3"),
    "t10k-labels-idx1-ubyte.gz": ("md5", "ec29112dd5afa0611ce80d1b7f02629c"),
}
"""``{filename: (hashlib algorithm, hex digest)}`` of the gzip files on the usual mirrors
(torchvision's table); any `hashlib` algorithm works, e.g. ``("sha256", "...")``."""

MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
"""The four IDX files of MNIST, as named on the usual mirrors (without ``.gz``)."""

# IDX type byte -> numpy dtype; the multi-byte types are big-endian in the file.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_TIMEOUT_S = 60.0
_CHUNK = 1 << 16


class Dataset(NamedTuple):
    """Examples and their labels.

    Attributes:
      x: float32, shape (n, n_in): one flattened, scaled image per row.
      y: int32, shape (n,): the class index (digit) of each row.

    Examples:
      >>> data = fbp.data.Dataset(np.zeros((2, 64), np.float32), np.array([3, 1], np.int32))
      >>> data.x.shape, data.y.tolist()
      ((2, 64), [3, 1])
    """

    x: np.ndarray
    y: np.ndarray


def one_hot(labels: np.ndarray, num_classes: int = 10, dtype=np.float32) -> np.ndarray:
    """Class indices of shape (...,) to one-hot vectors of shape (..., num_classes).

    Examples:
      >>> fbp.data.one_hot(np.array([0, 2]), 3)
      array([[1., 0., 0.],
             [0., 0., 1.]], dtype=float32)
    """
    num_classes = check_int(num_classes, "num_classes")
    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"Expected labels to be integers, got dtype {labels.dtype} instead")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"Expected labels in [0, {num_classes}), got values from {labels.min()} to "
            f"{labels.max()} instead"
        )
    return np.eye(num_classes, dtype=dtype)[labels]


def expand_shifts(dataset: Dataset, image_shape: tuple[int, int]) -> Dataset:
    """The examples and their four one-pixel shifts (up, down, left, right; the pixels
    shifted in are 0), labels repeated: 5 n examples, the originals first. network3.py's
    expand_mnist.py, which took its MNIST result from 99.23 % to 99.37 %.

    Examples:
      >>> image = np.zeros((1, 9), np.float32); image[0, 4] = 1  # a 3x3 image, centre lit
      >>> wider = fbp.data.expand_shifts(fbp.data.Dataset(image, np.array([7])), (3, 3))
      >>> wider.x.reshape(5, 3, 3).sum(axis=0).astype(int).tolist(), wider.y.tolist()
      ([[0, 1, 0], [1, 1, 1], [0, 1, 0]], [7, 7, 7, 7, 7])
    """
    height, width = (check_int(n, "image_shape") for n in image_shape)
    x = np.asarray(dataset.x)
    if x.ndim != 2 or x.shape[1] != height * width:
        raise ValueError(
            f"Expected examples of {height * width} pixels (image_shape {tuple(image_shape)}), "
            f"got x of shape {x.shape}"
        )
    images = x.reshape(-1, height, width)
    shifted = [images]
    for axis, step in ((1, -1), (1, 1), (2, -1), (2, 1)):
        moved = np.roll(images, step, axis=axis)
        edge = 0 if step == 1 else -1  # the row or column that wrapped around
        if axis == 1:
            moved[:, edge, :] = 0
        else:
            moved[:, :, edge] = 0
        shifted.append(moved)
    return Dataset(
        np.concatenate(shifted).reshape(-1, height * width),
        np.tile(np.asarray(dataset.y), 5),
    )


def load_digits(*, test_fraction: float = 0.2, seed: int = 0) -> tuple[Dataset, Dataset]:
    """The 8x8 handwritten digits that scikit-learn ships (1,797 examples), split in two.

    Pixels (0..16) are scaled to value / 16 in float32, so x has 64 columns in [0, 1].
    The split is ``perm = np.random.default_rng(seed).permutation(1797)``: the last
    ``round(test_fraction * 1797)`` examples of ``perm`` are the test set, the rest (in
    ``perm`` order) the training set. The defaults give 1,438 training and 359 test
    examples.

    Args:
      test_fraction: the share of examples held out for test, in (0, 1).
      seed: seeds the permutation.

    Returns:
      ``(training, test)`` `Dataset`s.

    Examples:
      >>> training, test = fbp.data.load_digits()
      >>> training.x.shape, test.x.shape, test.y.dtype
      ((1438, 64), (359, 64), dtype('int32'))
    """
    try:
        from sklearn.datasets import load_digits as sklearn_load_digits
    except ImportError as e:
        raise ImportError('load_digits needs scikit-learn: pip install "functional_bp[cli]"') from e
    check_number(test_fraction, "test_fraction", minimum=0, inclusive=False)
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"Expected test_fraction in (0, 1), got {test_fraction} instead")
    digits = sklearn_load_digits()
    x = (np.asarray(digits.data) / 16.0).astype(np.float32)
    y = np.asarray(digits.target, dtype=np.int32)
    n = len(y)
    n_test = round(test_fraction * n)
    if not 0 < n_test < n:
        raise ValueError(
            f"Expected test_fraction to leave both sets non-empty, got {n_test} test "
            f"examples out of {n} instead"
        )
    perm = np.random.default_rng(seed).permutation(n)
    train, test = perm[: n - n_test], perm[n - n_test :]
    return Dataset(x[train], y[train]), Dataset(x[test], y[test])


def read_idx(file: PathLike) -> np.ndarray:
    """Reads an IDX file (the format of the MNIST files), gzip-compressed or not.

    The format: two zero bytes, a type byte (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32,
    0x0D float32, 0x0E float64), the number of dimensions, one big-endian int32 per
    dimension, then the data, big-endian, in C order. Gzip is recognised by its magic
    bytes, whatever the file's name.

    Returns:
      An array of the file's shape, in the file's type with native byte order.

    Examples:
      >>> import pathlib, tempfile
      >>> path = pathlib.Path(tempfile.mkdtemp()) / "tiny-idx1-ubyte"
      >>> _ = path.write_bytes(bytes([0, 0, 0x08, 1, 0, 0, 0, 3, 7, 8, 9]))  # 3 uint8
      >>> fbp.data.read_idx(path)
      array([7, 8, 9], dtype=uint8)
    """
    path = Path(file)
    with open_regular(path, "an IDX file") as f:  # a FIFO is refused, not waited on
        data = f.read()
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as e:
            raise ValueError(f"{path}: corrupt gzip data ({e})") from None
    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] not in _IDX_DTYPES:
        raise ValueError(
            f"{path}: not an IDX file: expected the magic number 00 00 <type> <ndim> with "
            f"type one of {[hex(t) for t in _IDX_DTYPES]}, got {data[:4].hex(' ')} instead"
        )
    dtype, ndim = np.dtype(_IDX_DTYPES[data[2]]), data[3]
    offset = 4 + 4 * ndim
    if len(data) < offset:
        raise ValueError(f"{path}: truncated header: {ndim} dimensions need {offset} bytes")
    shape = tuple(int(d) for d in np.frombuffer(data, ">i4", ndim, offset=4))
    expected = offset + dtype.itemsize * int(np.prod(shape))
    if len(data) < expected:
        raise ValueError(
            f"{path}: truncated data: shape {shape} needs {expected} bytes, got {len(data)}"
        )
    if len(data) > expected:
        raise ValueError(
            f"{path}: {len(data) - expected} trailing bytes after the data of shape {shape}"
        )
    array = np.frombuffer(data, dtype, offset=offset).reshape(shape)
    return array.astype(dtype.newbyteorder("="))


def _cache_dir(cache_dir: PathLike | None) -> Path:
    if cache_dir is None:
        cache_dir = os.environ.get("FUNCTIONAL_BP_CACHE") or "~/.cache/functional_bp/mnist"
    return Path(cache_dir).expanduser()


def _find(directory: Path, name: str) -> Path | None:
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _read_split(images_file: Path, labels_file: Path) -> Dataset:
    """One MNIST images/labels pair, checked and scaled as network.py does."""
    images, labels = read_idx(images_file), read_idx(labels_file)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise ValueError(
            f"{images_file}: expected uint8 images of shape (n, 28, 28), got {images.dtype} "
            f"of shape {images.shape} instead"
        )
    if labels.dtype != np.uint8 or labels.shape != images.shape[:1]:
        raise ValueError(
            f"{labels_file}: expected {images.shape[0]} uint8 labels to match {images_file}, "
            f"got {labels.dtype} of shape {labels.shape} instead"
        )
    if labels.size and labels.max() > 9:
        raise ValueError(f"{labels_file}: expected digits 0..9, got label {labels.max()}")
    x = images.reshape(len(images), 28 * 28).astype(np.float32) / np.float32(256.0)
    return Dataset(x, labels.astype(np.int32))


def load_mnist(
    path: PathLike | None = None,
    *,
    n_train: int = 50_000,
    download: bool = False,
    cache_dir: PathLike | None = None,
) -> tuple[Dataset, Dataset, Dataset]:
    """MNIST with network.py's split: training, validation and test `Dataset`s.

    Training is the first ``n_train`` images of the training file, validation the rest
    of it (the last 10,000 with the defaults), test the test file's 10,000 images. Images
    are flattened to 784 pixels scaled as value / 256.0 in float32 (the largest pixel is
    0.99609375); labels are int32 digits.

    The four files (``MNIST_FILES``, each raw or ``.gz``) are looked for in ``path``, else
    in ``$FUNCTIONAL_BP_MNIST`` if set, else in the cache: ``cache_dir``, else
    ``$FUNCTIONAL_BP_CACHE``, else ``~/.cache/functional_bp/mnist``. Loading checks the IDX
    structure, not checksums; `download_mnist` checks those.

    Args:
      path: a directory holding the four files.
      n_train: how many training images to train on; the remainder is validation.
      download: fetch missing files into the directory with `download_mnist`.
      cache_dir: the cache directory, used when neither ``path`` nor
        ``$FUNCTIONAL_BP_MNIST`` is given.

    Returns:
      ``(training, validation, test)``.

    Examples:
      >>> import tempfile
      >>> fbp.data.load_mnist(tempfile.mkdtemp())  # doctest: +IGNORE_EXCEPTION_DETAIL
      Traceback (most recent call last):
        ...
      FileNotFoundError: MNIST files missing from ...
    """
    if path is None:
        path = os.environ.get("FUNCTIONAL_BP_MNIST") or _cache_dir(cache_dir)
    directory = Path(path).expanduser()
    files = [_find(directory, name) for name in MNIST_FILES]
    if None in files and download:
        download_mnist(directory)
        files = [_find(directory, name) for name in MNIST_FILES]
    missing = [name for name, file in zip(MNIST_FILES, files, strict=True) if file is None]
    if missing:
        raise FileNotFoundError(
            f"MNIST files missing from {directory}: {', '.join(missing)} (raw or .gz). "
            "Pass the directory that holds them as path, set FUNCTIONAL_BP_MNIST to it, "
            "or call load_mnist(download=True) to download them into the cache."
        )
    train_file, test_file = _read_split(files[0], files[1]), _read_split(files[2], files[3])
    n_file = len(train_file.y)
    if (
        isinstance(n_train, (bool, np.bool_))
        or not isinstance(n_train, (int, np.integer))
        or not 0 < n_train < n_file
    ):
        raise ValueError(
            f"Expected n_train to be an int in (0, {n_file}) to leave a validation set from "
            f"the {n_file} training images, got {n_train!r} instead"
        )
    training = Dataset(train_file.x[:n_train], train_file.y[:n_train])
    validation = Dataset(train_file.x[n_train:], train_file.y[n_train:])
    return training, validation, test_file


def _hexdigest(file: Path, algorithm: str) -> str:
    digest = hashlib.new(algorithm, usedforsecurity=False)
    with open(file, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _fetch_verified(url: str, name: str, algorithm: str, expected: str):
    """A writer for `atomic_write`: streams ``url`` into the file, then raises ValueError
    unless its digest is ``expected`` (so an unverified file is never renamed in)."""

    def write(out) -> None:
        digest = hashlib.new(algorithm, usedforsecurity=False)
        try:
            with urllib.request.urlopen(url, timeout=_TIMEOUT_S) as response:
                while chunk := response.read(_CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
        except urllib.error.HTTPError as e:
            e.close()
            raise OSError(f"Could not download {name} from {url}: HTTP {e.code}") from e
        except (urllib.error.URLError, OSError) as e:
            raise OSError(f"Could not download {name} from {url}: {e}") from e
        got = digest.hexdigest()
        if got != expected:
            raise ValueError(
                f"Expected {name} from {url} to have {algorithm} {expected}, got {got} instead"
            )

    return write


def download_mnist(
    cache_dir: PathLike | None = None,
    *,
    base_url: str = DEFAULT_MIRROR,
    checksums: dict[str, tuple[str, str]] = MNIST_CHECKSUMS,
) -> Path:
    """Downloads the MNIST ``.gz`` files into ``cache_dir`` and verifies their checksums.

    Files already there with the right checksum are not fetched again. Each download is
    streamed into a temporary file next to its target, verified, then renamed with
    `os.replace`; on any failure the temporary file is removed, so the cache never holds
    a partial or unverified file.

    Args:
      cache_dir: where to put the files; default ``$FUNCTIONAL_BP_CACHE``, else
        ``~/.cache/functional_bp/mnist``.
      base_url: the mirror; each file is fetched from ``base_url/<filename>``.
      checksums: ``{filename: (hashlib algorithm, hex digest)}``, the files to fetch.

    Returns:
      The directory holding the files.

    Raises:
      OSError: a download failed (HTTP or connection error).
      ValueError: a downloaded file does not match its checksum.

    Examples:
      >>> import tempfile
      >>> directory = fbp.data.download_mnist(tempfile.mkdtemp(), checksums={})  # no files
      >>> directory.is_dir(), list(directory.iterdir())
      (True, [])
      >>> fbp.data.download_mnist()  # doctest: +SKIP
      PosixPath('/home/you/.cache/functional_bp/mnist')
    """
    directory = _cache_dir(cache_dir)
    directory.mkdir(parents=True, exist_ok=True)
    for name, (algorithm, expected) in checksums.items():
        if algorithm not in hashlib.algorithms_available:
            raise ValueError(f"Unknown hash algorithm {algorithm!r} for {name}")
        target = directory / name
        if target.is_file() and _hexdigest(target, algorithm) == expected.lower():
            continue
        url = f"{base_url.rstrip('/')}/{name}"
        atomic_write(target, _fetch_verified(url, name, algorithm, expected.lower()), "MNIST file")
    return directory

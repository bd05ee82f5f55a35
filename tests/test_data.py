"""Tests of functional_bp.data on tiny IDX files written here and a local HTTP server."""

import functools
import gzip
import hashlib
import http.server
import threading

import numpy as np
import pytest

from functional_bp import data
from functional_bp.data import (
    MNIST_FILES,
    Dataset,
    download_mnist,
    load_digits,
    load_mnist,
    one_hot,
    read_idx,
)

_IDX_CODES = {"uint8": 0x08, "int8": 0x09, "int16": 0x0B, "int32": 0x0C, "float32": 0x0D}


def idx_bytes(array):
    """An IDX file's bytes, written independently of read_idx."""
    array = np.asarray(array)
    header = bytes([0, 0, _IDX_CODES[array.dtype.name], array.ndim])
    header += b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write(path, payload, gz=False):
    path.write_bytes(gzip.compress(payload) if gz else payload)
    return path


def fake_mnist(directory, n_train=12, n_test=5, gz=True, seed=0):
    """Random uint8 MNIST files; pixel [0, 0, 0] of each set is 255. Returns the arrays."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        images[0, 0, 0] = 255
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        arrays[prefix] = images, labels
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            name = f"{prefix}-{kind}-ubyte" + (".gz" if gz else "")
            write(directory / name, idx_bytes(array), gz=gz)
    return arrays


# read_idx


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("shape", [(7,), (3, 4, 5), (0,)])
def test_read_idx_round_trip_uint8(tmp_path, shape, gz):
    array = np.random.default_rng(1).integers(0, 256, size=shape, dtype=np.uint8)
    out = read_idx(write(tmp_path / "a.idx", idx_bytes(array), gz=gz))
    assert out.shape == array.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(out, array)


@pytest.mark.parametrize("dtype", ["int8", "int16", "int32", "float32"])
def test_read_idx_round_trip_big_endian_types(tmp_path, dtype):
    array = (np.arange(-6, 6).reshape(3, 4) * 1000 // 7).astype(dtype)
    if dtype == "int8":
        array = np.arange(-6, 6, dtype=np.int8).reshape(3, 4)
    out = read_idx(write(tmp_path / "a.idx", idx_bytes(array)))
    assert out.dtype == np.dtype(dtype) and out.dtype.isnative
    np.testing.assert_array_equal(out, array)


def test_read_idx_detects_gzip_by_content_and_accepts_str(tmp_path):
    array = np.arange(6, dtype=np.uint8).reshape(2, 3)
    path = write(tmp_path / "no-suffix", idx_bytes(array), gz=True)
    np.testing.assert_array_equal(read_idx(str(path)), array)


@pytest.mark.parametrize(
    "payload, match",
    [
        (b"\x01\x00\x08\x01" + (3).to_bytes(4, "big") + b"abc", "magic number"),
        (b"\x00\x00\x07\x01" + (3).to_bytes(4, "big") + b"abc", "magic number"),
        (b"\x00\x00", "magic number"),
        (b"\x00\x00\x08\x02" + (3).to_bytes(4, "big"), "truncated header"),
        (b"\x00\x00\x08\x01" + (5).to_bytes(4, "big") + b"abc", "truncated data"),
        (b"\x00\x00\x0c\x01" + (1).to_bytes(4, "big") + b"abc", "truncated data"),
        (b"\x00\x00\x08\x01" + (3).to_bytes(4, "big") + b"abcd", "1 trailing bytes"),
    ],
)
@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_bad_files_name_the_file(tmp_path, payload, match, gz):
    path = write(tmp_path / "bad-file.idx", payload, gz=gz)
    with pytest.raises(ValueError, match=match) as info:
        read_idx(path)
    assert "bad-file.idx" in str(info.value)


@pytest.mark.parametrize("cut", ["truncated", "garbage"])
def test_read_idx_corrupt_gzip(tmp_path, cut):
    good = gzip.compress(idx_bytes(np.arange(100, dtype=np.uint8)))
    payload = good[: len(good) // 2] if cut == "truncated" else good[:10] + b"\xff" * 40
    path = write(tmp_path / "broken.gz", payload)
    with pytest.raises(ValueError, match="corrupt gzip") as info:
        read_idx(path)
    assert "broken.gz" in str(info.value)


# one_hot


def test_one_hot():
    out = one_hot(np.array([3, 0, 9]))
    assert out.shape == (3, 10) and out.dtype == np.float32
    np.testing.assert_array_equal(out.argmax(axis=1), [3, 0, 9])
    np.testing.assert_array_equal(out.sum(axis=1), [1, 1, 1])
    assert one_hot(np.array([1]), 3, dtype=np.float64).tolist() == [[0.0, 1.0, 0.0]]
    with pytest.raises(ValueError, match="labels in"):
        one_hot(np.array([10]))
    with pytest.raises(ValueError, match="integers"):
        one_hot(np.array([1.0]))


# load_mnist


@pytest.mark.parametrize("gz", [False, True])
def test_load_mnist_split_scaling_dtypes(tmp_path, gz):
    arrays = fake_mnist(tmp_path, n_train=12, n_test=5, gz=gz)
    training, validation, test = load_mnist(tmp_path, n_train=8)
    for ds, n in ((training, 8), (validation, 4), (test, 5)):
        assert isinstance(ds, Dataset)
        assert ds.x.shape == (n, 784) and ds.x.dtype == np.float32
        assert ds.y.shape == (n,) and ds.y.dtype == np.int32
    train_images, train_labels = arrays["train"]
    flat = train_images.reshape(12, 784).astype(np.float64) / 256.0
    np.testing.assert_array_equal(training.x, flat[:8])
    np.testing.assert_array_equal(validation.x, flat[8:])
    np.testing.assert_array_equal(training.y, train_labels[:8])
    np.testing.assert_array_equal(validation.y, train_labels[8:])
    np.testing.assert_array_equal(test.y, arrays["t10k"][1])
    assert training.x[0, 0] == np.float32(0.99609375) == test.x[0, 0]


def test_load_mnist_mixed_raw_and_gz(tmp_path):
    fake_mnist(tmp_path, gz=True)
    gz = tmp_path / "t10k-labels-idx1-ubyte.gz"
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(gzip.decompress(gz.read_bytes()))
    gz.unlink()
    _, _, test = load_mnist(tmp_path, n_train=8)
    assert test.y.shape == (5,)


@pytest.mark.parametrize("n_train", [0, 12, 13, -1, 8.0, True])
def test_load_mnist_rejects_bad_n_train(tmp_path, n_train):
    fake_mnist(tmp_path, n_train=12)
    with pytest.raises(ValueError, match="Expected n_train"):
        load_mnist(tmp_path, n_train=n_train)


def test_load_mnist_checks_mnist_structure(tmp_path):
    fake_mnist(tmp_path, gz=False)
    write(tmp_path / "train-images-idx3-ubyte", idx_bytes(np.zeros((12, 28, 27), np.uint8)))
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte.*\(n, 28, 28\)"):
        load_mnist(tmp_path, n_train=8)
    write(tmp_path / "train-images-idx3-ubyte", idx_bytes(np.zeros((11, 28, 28), np.uint8)))
    with pytest.raises(ValueError, match="train-labels-idx1-ubyte.*expected 11 uint8 labels"):
        load_mnist(tmp_path, n_train=8)
    fake_mnist(tmp_path, gz=False)
    write(tmp_path / "t10k-labels-idx1-ubyte", idx_bytes(np.full(5, 10, np.uint8)))
    with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte.*digits 0..9"):
        load_mnist(tmp_path, n_train=8)


def test_load_mnist_missing_files_are_named(tmp_path, monkeypatch):
    monkeypatch.delenv("FUNCTIONAL_BP_MNIST", raising=False)
    fake_mnist(tmp_path)
    (tmp_path / "t10k-images-idx3-ubyte.gz").unlink()
    (tmp_path / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError) as info:
        load_mnist(tmp_path)
    message = str(info.value)
    assert "t10k-images-idx3-ubyte" in message and "train-labels-idx1-ubyte" in message
    assert "train-images-idx3-ubyte" not in message
    assert "FUNCTIONAL_BP_MNIST" in message and "download=True" in message


def test_load_mnist_env_var_and_cache_dir(tmp_path, monkeypatch):
    fake_mnist(tmp_path / "env", n_train=12)
    fake_mnist(tmp_path / "cache", n_train=10)
    monkeypatch.setenv("FUNCTIONAL_BP_MNIST", str(tmp_path / "env"))
    assert len(load_mnist(n_train=8)[1].y) == 4
    # An explicit path wins over the environment variable.
    assert len(load_mnist(tmp_path / "cache", n_train=8)[1].y) == 2
    monkeypatch.delenv("FUNCTIONAL_BP_MNIST")
    assert len(load_mnist(n_train=8, cache_dir=tmp_path / "cache")[1].y) == 2
    monkeypatch.setenv("FUNCTIONAL_BP_CACHE", str(tmp_path / "cache"))
    assert len(load_mnist(n_train=8)[1].y) == 2
    monkeypatch.setenv("FUNCTIONAL_BP_CACHE", str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="empty"):
        load_mnist(n_train=8)


# download_mnist, against a real HTTP server on 127.0.0.1


class _Handler(http.server.SimpleHTTPRequestHandler):
    def __init__(self, *args, requests, **kwargs):
        self.requests = requests
        super().__init__(*args, **kwargs)

    def do_GET(self):
        self.requests.append(self.path)
        super().do_GET()

    def log_message(self, format, *args):
        pass


@pytest.fixture
def server(tmp_path, monkeypatch):
    """Serves tmp_path/"mirror"; yields (base_url, mirror directory, requested paths)."""
    monkeypatch.setenv("no_proxy", "*")
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    requests = []
    handler = functools.partial(_Handler, directory=str(mirror), requests=requests)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/", mirror, requests
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def _checksums(mirror, algorithm="sha256"):
    return {
        f"{name}.gz": (
            algorithm,
            hashlib.new(algorithm, (mirror / f"{name}.gz").read_bytes()).hexdigest(),
        )
        for name in MNIST_FILES
    }


@pytest.mark.parametrize("algorithm", ["sha256", "md5"])
def test_download_then_load_and_no_second_download(tmp_path, server, algorithm):
    base_url, mirror, requests = server
    fake_mnist(mirror, n_train=12, n_test=5)
    checksums = _checksums(mirror, algorithm)
    cache = tmp_path / "cache" / "nested"
    assert download_mnist(cache, base_url=base_url, checksums=checksums) == cache
    assert sorted(p.name for p in cache.iterdir()) == sorted(checksums)
    assert sorted(requests) == sorted(f"/{name}" for name in checksums)
    for name in checksums:
        assert (cache / name).read_bytes() == (mirror / name).read_bytes()
    training, validation, test = load_mnist(cache, n_train=8)
    assert (len(training.y), len(validation.y), len(test.y)) == (8, 4, 5)
    # Everything present and verified: no request at all.
    requests.clear()
    download_mnist(cache, base_url=base_url, checksums=checksums)
    assert requests == []
    # One file corrupted in the cache: only that one is fetched again.
    (cache / "t10k-labels-idx1-ubyte.gz").write_bytes(b"junk")
    download_mnist(cache, base_url=base_url, checksums=checksums)
    assert requests == ["/t10k-labels-idx1-ubyte.gz"]
    assert load_mnist(cache, n_train=8)[2].y.shape == (5,)


def test_load_mnist_download_true_uses_download_mnist(tmp_path, server, monkeypatch):
    base_url, mirror, _ = server
    fake_mnist(mirror)
    checksums = _checksums(mirror)
    monkeypatch.delenv("FUNCTIONAL_BP_MNIST", raising=False)
    real = data.download_mnist
    monkeypatch.setattr(
        data, "download_mnist", lambda d: real(d, base_url=base_url, checksums=checksums)
    )
    with pytest.raises(FileNotFoundError):
        load_mnist(cache_dir=tmp_path / "cache", n_train=8)
    training, _, _ = load_mnist(cache_dir=tmp_path / "cache", n_train=8, download=True)
    assert training.x.shape == (8, 784)


def test_download_checksum_mismatch_leaves_nothing(tmp_path, server):
    base_url, mirror, _ = server
    fake_mnist(mirror)
    name = "train-labels-idx1-ubyte.gz"
    checksums = {name: ("sha256", "0" * 64)}
    cache = tmp_path / "cache"
    with pytest.raises(ValueError, match="sha256") as info:
        download_mnist(cache, base_url=base_url, checksums=checksums)
    message = str(info.value)
    got = hashlib.sha256((mirror / name).read_bytes()).hexdigest()
    assert name in message and "0" * 64 in message and got in message
    assert list(cache.iterdir()) == []


def test_download_404_leaves_nothing(tmp_path, server):
    base_url, mirror, _ = server
    fake_mnist(mirror)
    checksums = _checksums(mirror)
    (mirror / "t10k-images-idx3-ubyte.gz").unlink()
    cache = tmp_path / "cache"
    with pytest.raises(OSError, match="t10k-images-idx3-ubyte.gz.*HTTP 404"):
        download_mnist(cache, base_url=base_url, checksums=checksums)
    # The files before the missing one were verified and kept; no temporary file is left.
    assert all(not p.name.startswith(".") for p in cache.iterdir())
    assert "t10k-images-idx3-ubyte.gz" not in {p.name for p in cache.iterdir()}


def test_download_connection_error_leaves_nothing(tmp_path, server):
    base_url, mirror, _ = server
    cache = tmp_path / "cache"
    # Port 1 on loopback: nothing listens there, the connection is refused.
    with pytest.raises(OSError, match="Could not download train-images-idx3-ubyte.gz"):
        download_mnist(cache, base_url="http://127.0.0.1:1/", checksums=data.MNIST_CHECKSUMS)
    assert list(cache.iterdir()) == []


# load_digits


def _sort_rows(a):
    return a[np.lexsort(a.T[::-1])]


def test_load_digits():
    pytest.importorskip("sklearn")
    training, test = load_digits()
    assert training.x.shape == (1438, 64) and test.x.shape == (359, 64)
    for ds in (training, test):
        assert ds.x.dtype == np.float32 and ds.y.dtype == np.int32
        assert ds.x.min() == 0.0 and ds.x.max() == 1.0
        assert set(np.unique(ds.y)) == set(range(10))
    again, _ = load_digits()
    np.testing.assert_array_equal(again.x, training.x)
    np.testing.assert_array_equal(again.y, training.y)
    other, _ = load_digits(seed=1)
    assert not np.array_equal(other.y, training.y)
    # Disjoint and complete: together the rows are exactly scikit-learn's 1,797.
    from sklearn.datasets import load_digits as sklearn_load_digits

    digits = sklearn_load_digits()
    expected = np.concatenate([digits.data / 16.0, digits.target[:, None]], axis=1)
    rows = np.concatenate(
        [np.concatenate([ds.x, ds.y[:, None]], axis=1) for ds in (training, test)]
    )
    assert rows.shape == (1797, 65)
    np.testing.assert_allclose(_sort_rows(rows), _sort_rows(expected))


def test_load_digits_split_is_the_documented_permutation():
    pytest.importorskip("sklearn")
    from sklearn.datasets import load_digits as sklearn_load_digits

    training, test = load_digits(test_fraction=0.25, seed=3)
    perm = np.random.default_rng(3).permutation(1797)
    n_test = round(0.25 * 1797)
    target = sklearn_load_digits().target
    np.testing.assert_array_equal(test.y, target[perm[-n_test:]])
    np.testing.assert_array_equal(training.y, target[perm[:-n_test]])
    with pytest.raises(ValueError, match="test_fraction"):
        load_digits(test_fraction=1.0)


# Bad input, each argument named.

LABELS = np.array([0, 1, 0, 1, 1, 0])

BAD_CASES = [
    ("one_hot classes 0", lambda: one_hot(LABELS, 0), ValueError, r"num_classes"),
    ("one_hot classes 2.0", lambda: one_hot(LABELS, 2.0), TypeError, r"num_classes to be an int"),
    ("one_hot floats", lambda: one_hot(LABELS * 1.0), ValueError, r"labels to be integers"),
    ("one_hot range", lambda: one_hot(LABELS + 9), ValueError, r"labels in \[0, 10\)"),
    ("digits fraction 0", lambda: load_digits(test_fraction=0.0), ValueError, r"test_fraction"),
    ("digits fraction 1.5", lambda: load_digits(test_fraction=1.5), ValueError, r"test_fraction"),
    (
        "digits fraction nan",
        lambda: load_digits(test_fraction=float("nan")),
        ValueError,
        r"test_fraction",
    ),
    ("digits fraction str", lambda: load_digits(test_fraction="a"), TypeError, r"test_fraction"),
]


@pytest.mark.parametrize(
    "call,error,message", [c[1:] for c in BAD_CASES], ids=[c[0] for c in BAD_CASES]
)
def test_bad_input(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_one_hot_takes_numpy_integers():
    assert one_hot(LABELS, np.int64(2)).shape == (6, 2)

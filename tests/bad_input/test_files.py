"""Files: a save never replaces what is not a regular file, never writes what
`load_params` would refuse, and `load_params` names the file and the entry of any
tampered file. Every refusal leaves an earlier file intact and no temporary behind.

Cheap: the params are made once, as numpy arrays; no test compiles a program."""

import io
import json
import os
import re
import socket
import stat
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import functional_bp as fbp
from functional_bp import _files
from functional_bp.feedback import RULES, init_feedback
from functional_bp.io import load_feedback, load_params, save_params

PARAMS = jax.device_get(fbp.init_mlp(jax.random.key(0), [3, 4, 2]))  # float32, one hidden
DEEP = [  # sizes [3, 4, 5, 2]: fa's and dfa's shapes differ
    fbp.Layer(np.full((n_out, n_in), 0.5, np.float32), np.zeros(n_out, np.float32))
    for n_in, n_out in [(3, 4), (4, 5), (5, 2)]
]
FA = [np.ones((2, 4), np.float32)]  # PARAMS' feedback under fa, kp and dfa alike


def _cast(params, dtype):
    return [fbp.Layer(layer.w.astype(dtype), layer.b.astype(dtype)) for layer in params]


def _temporaries(*directories):
    """The temporaries atomic_write left in these directories (Paths or strings)."""
    return [
        name
        for directory in directories
        for name in os.listdir(directory)
        if re.fullmatch(r"\.fbp-.*\.tmp", name)
    ]


def _earlier(path):
    """An earlier params file at ``path``; returns its bytes."""
    save_params(path, PARAMS, cost="quadratic")
    return path.read_bytes()


def _assert_kept(path, before, *directories):
    assert path.read_bytes() == before
    assert load_params(path)[1]["cost"] == "quadratic"
    assert _temporaries(path.parent, *directories) == []


# ---------------------------------------------------------------------------------------
# Targets that are not regular files


def _fifo(path):
    os.mkfifo(path)


def _socket(path):
    if not hasattr(socket, "AF_UNIX"):
        pytest.skip("no AF_UNIX sockets here")
    server = socket.socket(socket.AF_UNIX)
    try:
        server.bind(str(path))
    except OSError as error:  # a path too long for sun_path, ...
        server.close()
        pytest.skip(f"cannot bind a unix socket at {path}: {error}")
    server.close()  # the socket file stays


def _directory(path):
    path.mkdir()


def _device(name):
    def make(path):
        if not os.path.exists(name) or not stat.S_ISCHR(os.stat(name).st_mode):
            pytest.skip(f"no {name} here")
        return name

    return make


def _link_to(make):
    def link(path):
        target = path.with_name(path.name + "-target")
        made = make(target)
        os.symlink(made or target, path)

    return link


def _dangling(path):
    os.symlink(path.with_name("nowhere.npz"), path)


def _loop(path):
    os.symlink(path.with_name("other"), path)
    os.symlink(path, path.with_name("other"))


# (name, make(path) -> a path to use instead or None, exception, what the message says)
SPECIAL = [
    ("dev-null", _device("/dev/null"), ValueError, "it is a character device"),
    ("dev-full", _device("/dev/full"), ValueError, "it is a character device"),
    ("fifo", _fifo, ValueError, r"it is a FIFO \(named pipe\)"),
    ("socket", _socket, ValueError, "it is a socket"),
    ("directory", _directory, IsADirectoryError, "it is a directory"),
    ("link-to-dev-null", _link_to(_device("/dev/null")), ValueError, "/dev/null, a character"),
    ("link-to-fifo", _link_to(_fifo), ValueError, "a symlink to .*, a FIFO"),
    ("link-to-socket", _link_to(_socket), ValueError, "a symlink to .*, a socket"),
    ("link-to-directory", _link_to(_directory), IsADirectoryError, "a symlink to .*, a direc"),
    ("dangling-link", _dangling, FileNotFoundError, "a symlink to .*nowhere.npz, which does"),
    ("link-loop", _loop, ValueError, "not a regular file"),
]


def _writers():
    def atomic(path):
        def write(f):
            raise AssertionError("write was called")

        _files.atomic_write(path, write, "params")

    return [
        ("save_params", lambda path: save_params(path, PARAMS)),
        ("atomic_write", atomic),
        ("check_writable", lambda path: _files.check_writable(path, "params")),
    ]


def _snapshot(path):
    """What is at ``path``: its lstat's type, its stat's type (or None), a link's target."""
    link = os.readlink(path) if os.path.islink(path) else None
    try:
        mode = stat.S_IFMT(os.stat(path).st_mode)
    except OSError:
        mode = None
    return stat.S_IFMT(os.lstat(path).st_mode), mode, link


@pytest.mark.parametrize("writer", _writers(), ids=lambda w: w[0])
@pytest.mark.parametrize("kind", SPECIAL, ids=lambda k: k[0])
def test_refuses_to_replace_what_is_not_a_regular_file(tmp_path, kind, writer):
    _, make, error, message = kind
    path = tmp_path / "p.npz"
    path = make(path) or path
    before = _snapshot(path)
    with pytest.raises(error, match=f"Cannot write params {re.escape(str(path))}: .*{message}"):
        writer[1](path)
    assert _snapshot(path) == before  # a device stays a device, a link stays a link
    assert _temporaries(tmp_path, os.path.dirname(os.path.realpath(path))) == []
    assert not (tmp_path / "nowhere.npz").exists()  # a dangling link's target not created


@pytest.mark.parametrize("writer", _writers(), ids=lambda w: w[0])
@pytest.mark.parametrize("name", ["", ".", "..", "sub/.."])
def test_refuses_a_path_that_is_not_a_file_name(tmp_path, monkeypatch, name, writer):
    monkeypatch.chdir(tmp_path)  # relative names: should anything be written, it is here
    with pytest.raises(ValueError, match="Expected params to be a file name"):
        writer[1](name)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("writer", _writers(), ids=lambda w: w[0])
def test_refuses_a_missing_directory(tmp_path, writer):
    path = tmp_path / "missing" / "p.npz"
    with pytest.raises(FileNotFoundError, match=f"{re.escape(str(path))}: the directory"):
        writer[1](path)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------
# Symlinks to regular files are written through


@pytest.mark.parametrize("relative", [False, True], ids=["absolute", "relative"])
@pytest.mark.parametrize("elsewhere", [False, True], ids=["same-dir", "other-dir"])
def test_a_symlink_to_a_regular_file_is_written_through(tmp_path, relative, elsewhere):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    target = tmp_path / ("b" if elsewhere else "a") / "real.npz"
    old = _earlier(target)
    link = tmp_path / "a" / "link.npz"
    os.symlink(os.path.relpath(target, link.parent) if relative else target, link)
    assert save_params(link, DEEP, rule="dfa", feedback=[_f((2, 4)), _f((2, 5))]) == link
    assert os.path.islink(link) and os.path.realpath(link) == str(target)
    assert target.read_bytes() != old
    params, meta = load_params(link)
    assert [layer.w.shape for layer in params] == [(4, 3), (5, 4), (2, 5)]
    assert meta["rule"] == "dfa" and len(meta["feedback"]) == 2
    assert _temporaries(tmp_path / "a", tmp_path / "b") == []
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == sorted(
        ["link.npz"] + ([] if elsewhere else ["real.npz"])
    )


def test_a_chain_of_symlinks_is_written_through_to_its_end(tmp_path):
    target = tmp_path / "real.npz"
    old = _earlier(target)
    os.symlink(target, tmp_path / "one")
    os.symlink(tmp_path / "one", tmp_path / "two")
    save_params(tmp_path / "two", PARAMS, cost="cross_entropy")
    assert os.path.islink(tmp_path / "one") and os.path.islink(tmp_path / "two")
    assert target.read_bytes() != old
    assert load_params(target)[1]["cost"] == "cross_entropy"
    assert _temporaries(tmp_path) == []


def test_a_regular_file_is_replaced(tmp_path):
    path = tmp_path / "p.npz"
    _earlier(path)
    save_params(path, PARAMS, cost="log_likelihood")
    assert load_params(path)[1]["cost"] == "log_likelihood"
    assert [p.name for p in tmp_path.iterdir()] == ["p.npz"]


# ---------------------------------------------------------------------------------------
# Feedback matrices load_params would refuse are not saved


def _f(shape, dtype=np.float32):
    return np.ones(shape, dtype)


# (id, params, feedback, metadata, exception, message)
BAD_FEEDBACK = [
    ("int32", PARAMS, [_f((2, 4), np.int32)], {}, TypeError, r"feedback\[0\].*float32, got int32"),
    ("bfloat16", PARAMS, [_f((2, 4), jnp.bfloat16)], {}, TypeError, "float32, got bfloat16"),
    ("float64", PARAMS, [_f((2, 4), np.float64)], {}, TypeError, "float32, got float64"),
    ("float16", PARAMS, [_f((2, 4), np.float16)], {}, TypeError, "float32, got float16"),
    ("complex64", PARAMS, [_f((2, 4), np.complex64)], {}, TypeError, "float32, got complex64"),
    ("bool", PARAMS, [_f((2, 4), np.bool_)], {}, TypeError, r"feedback\[0\].*got bool"),
    ("f32-beside-f64", _cast(PARAMS, np.float64), FA, {}, TypeError, "float64, got float32"),
    ("f32-beside-bf16", _cast(PARAMS, jnp.bfloat16), FA, {}, TypeError, "bfloat16, got float32"),
    ("rank-0", PARAMS, [_f(())], {}, ValueError, r"feedback\[0\].*rank 2.*got shape \(\)"),
    ("rank-1", PARAMS, [_f((4,))], {}, ValueError, r"feedback\[0\].*rank 2.*\(4,\)"),
    ("rank-3", PARAMS, [_f((1, 2, 4))], {}, ValueError, r"feedback\[0\].*rank 2.*\(1, 2, 4\)"),
    ("none-of-one", PARAMS, [], {}, ValueError, "hold 1 feedback matrices .*got 0"),
    ("two-of-one", PARAMS, FA * 2, {}, ValueError, "hold 1 feedback matrices .*got 2"),
    ("one-of-two", DEEP, FA, {}, ValueError, "hold 2 feedback matrices .*got 1"),
    ("one-layer", [PARAMS[0]], [_f((4, 3))], {}, ValueError, "hold 0 feedback matrices"),
    ("not-a-list", PARAMS, FA[0], {}, TypeError, "Expected feedback to be a list"),
    ("a-dict", PARAMS, {"1": FA[0]}, {}, TypeError, "Expected feedback to be a list"),
    ("nested-list", PARAMS, [[[1.0] * 4] * 2], {}, TypeError, r"feedback\[0\].*to be an array"),
    ("fa-transposed", PARAMS, [_f((4, 2))], {"rule": "fa"}, ValueError, r"\(2, 4\).*got \(4, 2\)"),
    ("kp-transposed", PARAMS, [_f((4, 2))], {"rule": "kp"}, ValueError, r"feedback\[0\].*'kp'"),
    ("dfa-transposed", PARAMS, [_f((4, 2))], {"rule": "dfa"}, ValueError, r"\(n_L, n_l\)"),
    (
        "fa-shapes-under-dfa",
        DEEP,
        [_f((5, 4)), _f((2, 5))],
        {"rule": "dfa"},
        ValueError,
        r"feedback\[0\] \(the feedback matrix of hidden layer 1\) to have shape \(2, 4\)",
    ),
    (
        "dfa-shapes-under-fa",
        DEEP,
        [_f((2, 4)), _f((2, 5))],
        {"rule": "fa"},
        ValueError,
        r"feedback\[0\].*shape \(5, 4\), w2's for rule 'fa'",
    ),
    (
        "second-wrong",
        DEEP,
        [_f((5, 4)), _f((5, 2))],
        {"rule": "kp"},
        ValueError,
        r"feedback\[1\].*hidden layer 2\) to have shape \(2, 5\)",
    ),
    ("matrices-under-sign", PARAMS, FA, {"rule": "sign"}, ValueError, "rule 'sign' has none"),
]
if "bp" in RULES:  # backprop as a rule of feedback: it has no matrices
    BAD_FEEDBACK.append(("matrices-under-bp", PARAMS, FA, {"rule": "bp"}, ValueError, "has none"))


@pytest.mark.parametrize(
    "params,feedback,metadata,error,message",
    [pytest.param(*case[1:], id=case[0]) for case in BAD_FEEDBACK],
)
def test_save_refuses_feedback_that_load_would_refuse(
    tmp_path, params, feedback, metadata, error, message
):
    path = tmp_path / "p.npz"
    before = _earlier(path)
    with pytest.raises(error, match=message):
        save_params(path, params, feedback=feedback, **metadata)
    _assert_kept(path, before)


def _draws_none(rule):
    return jax.eval_shape(lambda: init_feedback(jax.random.key(0), PARAMS, rule)) is None


@pytest.mark.parametrize(
    "params,feedback,rule",
    [
        pytest.param(PARAMS, FA, "fa", id="fa"),
        pytest.param(PARAMS, FA, "kp", id="kp"),
        pytest.param(PARAMS, FA, "dfa", id="dfa"),
        pytest.param(DEEP, [_f((5, 4)), _f((2, 5))], "fa", id="fa-deep"),
        pytest.param(DEEP, [_f((2, 4)), _f((2, 5))], "dfa", id="dfa-deep"),
        pytest.param(PARAMS, None, "sign", id="sign"),
        pytest.param(PARAMS, [], "sign", id="sign-empty"),
        pytest.param(PARAMS, None, "bp", id="bp"),
        pytest.param(PARAMS, FA, "user-rule", id="other-rule"),
        pytest.param(_cast(PARAMS, jnp.bfloat16), [_f((2, 4), jnp.bfloat16)], "fa", id="bf16"),
        pytest.param(_cast(PARAMS, np.float64), [_f((2, 4), np.float64)], "fa", id="f64"),
        pytest.param([PARAMS[0]], [], "fa", id="no-hidden-layer"),
        *[  # the rules feedback.py has beside fa, dfa, sign and kp, with the matrices they draw
            pytest.param(PARAMS, None if _draws_none(rule) else FA, rule, id=rule)
            for rule in RULES
            if rule not in ("fa", "dfa", "sign", "kp", "bp")
        ],
    ],
)
def test_feedback_that_load_accepts_is_saved_and_round_trips(tmp_path, params, feedback, rule):
    path = save_params(tmp_path / "p.npz", params, feedback=feedback, rule=rule)
    loaded = load_feedback(path)
    if not feedback:
        assert loaded is None
    else:
        assert [b.shape for b in loaded] == [b.shape for b in feedback]
        assert all(b.dtype == params[0].w.dtype for b in loaded)
    assert load_params(path)[1]["rule"] == rule


# ---------------------------------------------------------------------------------------
# Tampered files: a ValueError naming the file and the entry


def _arrays(path):
    with np.load(path) as data:
        return dict(data)


def _header(arrays):
    return json.loads(str(arrays["header"]))


def _with_header(**changes):
    def tamper(arrays):
        header = {**_header(arrays), **changes}
        arrays["header"] = np.array(json.dumps(header))

    return tamper


def _without_header_key(key):
    def tamper(arrays):
        header = _header(arrays)
        del header[key]
        arrays["header"] = np.array(json.dumps(header))

    return tamper


def _set(name, value):
    def tamper(arrays):
        arrays[name] = value

    return tamper


def _drop(name):
    def tamper(arrays):
        del arrays[name]

    return tamper


def _rename(old, new):
    def tamper(arrays):
        arrays[new] = arrays.pop(old)

    return tamper


OBJECT = np.array([1, "a"], dtype=object)

# (id, saved with feedback?, tamper(arrays), entry named, the rest of the message)
TAMPERED = [
    ("w2-shape", False, _set("w2", _f((2, 5))), "w2", r"has shape \(2, 5\).*give \(2, 4\)"),
    ("w1-transposed", False, _set("w1", _f((3, 4))), "w1", r"has shape \(3, 4\)"),
    ("b1-shape", False, _set("b1", _f((4, 1))), "b1", r"has shape \(4, 1\)"),
    ("b2-rank-0", False, _set("b2", _f(())), "b2", r"has shape \(\)"),
    ("b1-float64", False, _set("b1", _f((4,), np.float64)), "b1", "is float64, the header says"),
    ("w1-int32", False, _set("w1", _f((4, 3), np.int32)), "w1", "is int32, the header says"),
    ("b2-uint32", False, _set("b2", _f((2,), np.uint32)), "b2", "is uint32, the header says"),
    ("w2-object", False, _set("w2", OBJECT), "w2", "cannot be read .*pickle"),
    ("header-object", False, _set("header", OBJECT), "header", "cannot be read"),
    ("header-not-json", False, _set("header", np.array("{not json")), "header", "is not JSON"),
    ("header-nan", False, _set("header", np.array('{"x": NaN}')), "header", "is not JSON"),
    ("header-a-number", False, _set("header", np.array(1.5)), "header", "not a JSON string"),
    ("header-a-list", False, _set("header", np.array("[1, 2]")), "header", "not a JSON object"),
    ("header-format", False, _with_header(format="other/1"), "header", "with format"),
    ("header-no-format", False, _without_header_key("format"), "header", "with format"),
    ("sizes-missing", False, _without_header_key("sizes"), "header", "got None"),
    ("sizes-strings", False, _with_header(sizes=["3", 4, 2]), "header", "sizes to be a list"),
    ("sizes-negative", False, _with_header(sizes=[3, -4, 2]), "header", r"got \[3, -4, 2\]"),
    ("sizes-floats", False, _with_header(sizes=[3, 4.0, 2]), "header", "sizes to be a list"),
    ("sizes-bools", False, _with_header(sizes=[3, True, 2]), "header", "sizes to be a list"),
    ("sizes-one", False, _with_header(sizes=[3]), "header", "at least 2"),
    ("sizes-a-dict", False, _with_header(sizes={"n": 3}), "header", "sizes to be a list"),
    ("sizes-disagree", False, _with_header(sizes=[3, 5, 2]), "w1", r"has shape \(4, 3\)"),
    ("sizes-deeper", False, _with_header(sizes=[3, 4, 2, 2]), "w3", "missing entries"),
    ("dtype-int", False, _with_header(dtype="int32"), "header", "real floating dtype"),
    ("dtype-unknown", False, _with_header(dtype="float99"), "header", "unknown dtype"),
    ("dtype-a-number", False, _with_header(dtype=32), "header", "unknown dtype"),
    ("dtype-float64", False, _with_header(dtype="float64"), "w1", "is float32, the header says"),
    ("header-feedback", False, _with_header(feedback=[1]), "header", "reserved"),
    ("header-missing", False, _drop("header"), "header", "no entry"),
    ("b2-missing", False, _drop("b2"), "b2", "missing entries"),
    ("extra-entry", False, _set("extra", _f((1,))), "extra", "unexpected entries"),
    ("extra-layer", False, _set("w3", _f((2, 2))), "w3", "unexpected entries"),
    ("extra-object", False, _set("extra", OBJECT), "extra", "unexpected entries"),
    ("feedback0", False, _set("feedback0", _f((2, 4))), "feedback0", "unexpected entries"),
    ("feedback-01", False, _set("feedback01", _f((2, 4))), "feedback01", "unexpected"),
    ("feedback1-rank-1", True, _set("feedback1", _f((8,))), "feedback1", "rank 2"),
    ("feedback1-rank-3", True, _set("feedback1", _f((1, 2, 4))), "feedback1", "rank 2"),
    ("feedback1-int32", True, _set("feedback1", _f((2, 4), np.int32)), "feedback1", "int32"),
    ("feedback1-f64", True, _set("feedback1", _f((2, 4), np.float64)), "feedback1", "float64"),
    ("feedback1-object", True, _set("feedback1", OBJECT), "feedback1", "cannot be read"),
    ("feedback-gap", True, _rename("feedback1", "feedback2"), "feedback2", "not numbered"),
    ("feedback-two", True, _set("feedback2", _f((2, 4))), "feedback1..feedback2", "hold 1"),
    ("feedback-shape", True, _set("feedback1", _f((4, 2))), "feedback1", r"shape \(2, 4\)"),
    ("feedback-sign", True, _with_header(rule="sign"), "feedback1..feedback1", "has none"),
]


@pytest.mark.parametrize(
    "feedback,tamper,entry,message", [pytest.param(*c[1:], id=c[0]) for c in TAMPERED]
)
def test_load_names_the_file_and_the_entry_of_a_tampered_file(
    tmp_path, feedback, tamper, entry, message
):
    good = save_params(tmp_path / "good.npz", PARAMS, feedback=FA if feedback else None, rule="fa")
    arrays = _arrays(good)
    tamper(arrays)
    path = tmp_path / "p.npz"
    np.savez(path, **arrays)
    before = path.read_bytes()
    # the file, then the entry and the reason in either order
    named = f"{re.escape(str(path))}: (?=.*{entry}).*{message}"
    with pytest.raises(ValueError, match=named):
        load_params(path)
    with pytest.raises(ValueError, match=re.escape(str(path))):
        load_feedback(path)
    assert path.read_bytes() == before


def _truncated(size):
    def damage(data):
        return data[: size if size > 0 else len(data) + size]

    return damage


def _flip_in(name):
    """One bit of an entry's stored bytes flipped: its CRC no longer matches."""

    def damage(data):
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            info = archive.getinfo(f"{name}.npy")
        start = info.header_offset + 30 + len(info.filename) + len(info.extra)
        at = start + info.compress_size - 1
        return data[:at] + bytes([data[at] ^ 1]) + data[at + 1 :]

    return damage


def _extra_member(data):
    buffer = io.BytesIO(data)
    with zipfile.ZipFile(buffer, "a") as archive:
        archive.writestr("notes.txt", "not an array")
    return buffer.getvalue()


def _npy(data):
    buffer = io.BytesIO(b"")
    np.save(buffer, np.ones((2, 3)))
    return buffer.getvalue()


# (id, damage(bytes) -> bytes, what the message says)
DAMAGED = [
    ("empty", lambda data: b"", "not a functional_bp params file"),
    ("truncated-half", lambda data: data[: len(data) // 2], "truncated or damaged archive"),
    ("truncated-end", _truncated(-1), "truncated or damaged archive"),
    ("truncated-10", _truncated(10), "truncated or damaged archive"),
    ("zip-magic-only", lambda data: b"PK\x03\x04junk", "not a functional_bp params file"),
    ("not-a-zip", lambda data: b"hello, world", "not a functional_bp params file"),
    ("crc-w1", _flip_in("w1"), "entry 'w1' cannot be read"),
    ("crc-header", _flip_in("header"), "entry 'header' cannot be read"),
    ("non-npy-member", _extra_member, r"unexpected entries \['notes.txt'\]"),
    ("a-npy-file", _npy, "a single .npy array"),
]


@pytest.mark.parametrize("damage,message", [pytest.param(*c[1:], id=c[0]) for c in DAMAGED])
def test_load_refuses_a_damaged_archive_naming_the_file(tmp_path, damage, message):
    good = save_params(tmp_path / "good.npz", PARAMS, feedback=FA, rule="fa")
    path = tmp_path / "p.npz"
    path.write_bytes(damage(good.read_bytes()))
    with pytest.raises(ValueError, match=f"{re.escape(str(path))}: .*{message}"):
        load_params(path)


def test_load_of_a_directory_names_it(tmp_path):
    with pytest.raises(ValueError, match=f"{re.escape(str(tmp_path))}: not a functional_bp"):
        load_params(tmp_path)


def test_load_of_a_file_of_an_earlier_version_without_dtype(tmp_path):
    arrays = _arrays(save_params(tmp_path / "good.npz", PARAMS, feedback=FA, rule="fa"))
    _without_header_key("dtype")(arrays)
    np.savez(tmp_path / "old.npz", **arrays)
    params, meta = load_params(tmp_path / "old.npz")
    assert params[0].w.dtype == np.float32 and meta["feedback"][0].shape == (2, 4)

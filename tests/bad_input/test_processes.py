"""Several processes started wrong (`functional_bp.cli.cluster`): a malformed address or
option is refused before anything starts (exit 2, the option named); a missing peer, a
coordinator nobody listens on or a port in use ends with one ``error:`` line and exit 1
within seconds of --init-timeout, never JAX's silent wait and C++ abort."""

import os
import signal
import socket
import subprocess
import sys
import time

import jax
import pytest
from cli.helpers import assert_refused
from conftest import interruptible_module

from functional_bp import data, runs
from functional_bp.cli import cluster, main

CLUSTER = ["--coordinator", "127.0.0.1:1234", "--num-processes", "2", "--process-id", "1"]


@pytest.fixture
def no_start(monkeypatch):
    """Fails the test if a data set is loaded or `jax.distributed.initialize` is called:
    for what must be refused before either."""

    def loaded(*args, **kwargs):
        pytest.fail("a data set was loaded")

    def initialize(*args, **kwargs):
        pytest.fail("jax.distributed.initialize was called")

    monkeypatch.setattr(data, "load_digits", loaded)
    monkeypatch.setattr(data, "load_mnist", loaded)
    monkeypatch.setattr(jax.distributed, "initialize", initialize)


@pytest.fixture
def restore_collectives():
    """`cluster.start` sets the CPU collectives (gloo): back as it was after the test."""
    before = jax.config.jax_cpu_collectives_implementation
    yield
    jax.config.update("jax_cpu_collectives_implementation", before)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _status(argv):
    """The exit status of ``functional_bp train argv``: argparse's (SystemExit) or
    main's."""
    try:
        return main(["train", *argv])
    except SystemExit as exit_:
        return exit_.code


def _with(**options):
    """CLUSTER with some options replaced (None: left out)."""
    given = dict(zip(CLUSTER[::2], CLUSTER[1::2]))
    given.update({f"--{k.replace('_', '-')}": v for k, v in options.items()})
    return [part for k, v in given.items() if v is not None for part in (k, v)]


# argparse refuses each value alone: "argument --OPTION: expected ..." (exit 2).
ARGPARSE_CASES = [
    (_with(coordinator="127.0.0.1"), "--coordinator", "HOST:PORT"),  # no colon
    (_with(coordinator=":1234"), "--coordinator", "HOST:PORT"),  # empty host
    (_with(coordinator="127.0.0.1:"), "--coordinator", "port in 1..65535"),  # empty port
    (_with(coordinator="127.0.0.1:http"), "--coordinator", "port in 1..65535"),
    (_with(coordinator="127.0.0.1:12.5"), "--coordinator", "port in 1..65535"),
    (_with(coordinator="127.0.0.1:+80"), "--coordinator", "port in 1..65535"),
    (_with(coordinator="127.0.0.1:0"), "--coordinator", "port in 1..65535"),
    (_with(coordinator="x:65536"), "--coordinator", "port in 1..65535"),
    (_with(coordinator="x:99999"), "--coordinator", "got 'x:99999'"),
    (_with(coordinator="my host:80"), "--coordinator", "HOST:PORT"),
    (_with(coordinator="::1:1234"), "--coordinator", "IPv6 host in brackets"),
    (_with(coordinator="[::1:1234"), "--coordinator", "HOST:PORT"),
    (_with(coordinator="[]:1234"), "--coordinator", "HOST:PORT"),
    (_with(num_processes="0"), "--num-processes", ">= 1"),
    (_with(num_processes="-2"), "--num-processes", ">= 1"),
    (_with(num_processes="two"), "--num-processes", ">= 1"),
    (_with(num_processes="1.5"), "--num-processes", ">= 1"),
    (_with(process_id="-1"), "--process-id", ">= 0"),
    (_with(process_id="first"), "--process-id", ">= 0"),
    ([*CLUSTER, "--init-timeout", "0"], "--init-timeout", "> 0"),
    ([*CLUSTER, "--init-timeout", "-5"], "--init-timeout", "> 0"),
    ([*CLUSTER, "--init-timeout", "nan"], "--init-timeout", "finite"),
    ([*CLUSTER, "--init-timeout", "inf"], "--init-timeout", "finite"),
    ([*CLUSTER, "--init-timeout", "soon"], "--init-timeout", "> 0"),
]


@pytest.mark.parametrize(
    "argv,option,expected", ARGPARSE_CASES, ids=[" ".join(c[0]) for c in ARGPARSE_CASES]
)
def test_malformed_values_refused_at_parse(argv, option, expected, capsys, no_start):
    assert _status(argv) == 2
    err = capsys.readouterr().err
    assert f"error: argument {option}: " in err and expected in err
    assert "Traceback" not in err


# Each value parses, the combination cannot start: "error: ..." from main (exit 2).
COMBINATION_CASES = [
    (_with(process_id="2"), "--process-id: expected 0..1 (below --num-processes 2), got 2"),
    (_with(num_processes="1", process_id="1"), "--process-id: expected 0..0"),
    (_with(coordinator=None), "missing --coordinator"),
    (_with(num_processes=None, process_id=None), "missing --num-processes, --process-id"),
    (["--init-timeout", "5"], "missing --coordinator, --num-processes, --process-id"),
]


@pytest.mark.parametrize(
    "argv,message", COMBINATION_CASES, ids=[" ".join(c[0]) for c in COMBINATION_CASES]
)
def test_combinations_refused_before_start(argv, message, capsys, no_start):
    assert _status(argv) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1].startswith("error: ") and message in err
    assert "Traceback" not in err


# What several processes cannot train, refused before any starts (exit 2, the option
# named): a process started alone hears it at once, not after --init-timeout.
BEFORE_START_CASES = [
    (["--layers", "conv2x3,dense10"], "--layers"),
    (["--layers", "dense20"], "--layers"),
    (["--dp", "--clip", "1", "--noise-multiplier", "1.1"], "--dp"),
    (["--dp", "--clip", "1", "--target-epsilon", "2"], "--dp"),
    (["--optimizer", "adam"], "--optimizer"),
    (["--rule", "fa"], "--rule"),
    (["--seeds", "0-1"], "--seeds"),
    (["--eta", "1,2"], "--learning-rate"),
    (["--clip", "1"], "--clip"),  # refused in one process too: before the start as well
]


@pytest.mark.parametrize("process_id", ["0", "1"])
@pytest.mark.parametrize(
    "argv,option", BEFORE_START_CASES, ids=[" ".join(c[0]) for c in BEFORE_START_CASES]
)
def test_what_several_processes_cannot_train_is_refused_before_any_starts(
    argv, option, process_id, capsys, no_start, tmp_path
):
    address = f"127.0.0.1:{_free_port()}"
    json_path = tmp_path / "h.json"
    status = _status(
        [*_with(coordinator=address, process_id=process_id), *argv, "--json", str(json_path)]
    )
    err = capsys.readouterr().err
    assert_refused(status, err, option)
    assert "waiting for" not in err and "connecting" not in err  # nothing started
    assert not json_path.exists()


def test_distributed_with_a_number_of_processes_is_refused_before_the_start(capsys, no_start):
    status = _status(["--distributed", "--num-processes", "2", "--layers", "conv2x3"])
    assert_refused(status, capsys.readouterr().err, "--layers")


def test_one_process_of_one_may_train_what_several_cannot(capsys, monkeypatch):
    """--num-processes 1: nothing several processes need is asked (the start goes on)."""
    started = []
    monkeypatch.setattr(cluster, "start", lambda args: started.append(args))
    monkeypatch.setattr(runs, "load", lambda config: (_ for _ in ()).throw(KeyboardInterrupt))
    argv = ["--coordinator", f"127.0.0.1:{_free_port()}", "--num-processes", "1"]
    argv += ["--process-id", "0", "--layers", "conv2x3", "--epochs", "1"]
    assert _status(argv) == 130 and len(started) == 1
    assert "error" not in capsys.readouterr().err


@pytest.mark.parametrize(
    "address", ["127.0.0.1:1", "localhost:65535", "node-7.cluster.local:8476", "[::1]:1234"]
)
def test_wellformed_addresses_parse(address):
    assert cluster.coordinator(address) == address


def _raises(error):
    def initialize(*args, **kwargs):
        raise error

    return initialize


@pytest.mark.parametrize(
    "error,expected",
    [
        (RuntimeError("distributed.initialize should only be called once."), "only be called"),
        (jax.errors.JaxRuntimeError("UNKNOWN: Failed to start RPC server"), "port in use"),
        (OSError("no route to host"), "no route to host"),
    ],
)
def test_what_initialize_raises_is_one_line(
    error, expected, capsys, monkeypatch, restore_collectives
):
    """Any exception of `jax.distributed.initialize`: ``error: ...``, exit 1."""
    monkeypatch.setattr(jax.distributed, "initialize", _raises(error))
    address = f"127.0.0.1:{_free_port()}"
    assert _status(_with(coordinator=address, process_id="0")) == 1
    err = capsys.readouterr().err
    last = err.splitlines()[-1]
    assert last.startswith(f"error: process 0: could not start the processes at {address}")
    assert expected in last and "Traceback" not in err
    assert f"waiting for 2 processes at {address} (timeout 120 s)" in err


def test_distributed_without_a_cluster(capsys, monkeypatch, restore_collectives):
    """What JAX raises when it detects no cluster (its ValueError) is refused, exit 2."""
    monkeypatch.setattr(
        jax.distributed, "initialize", _raises(ValueError("coordinator_address should be defined."))
    )
    assert _status(["--distributed"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --distributed: JAX found no cluster environment")
    assert "give --coordinator, --num-processes and --process-id" in err


def test_timeout_message_in_process(capsys, monkeypatch, restore_collectives):
    """The wait is bounded by the main thread: a stuck initialize ends the start-up
    after --init-timeout with the ``error:`` line (here `cluster._exit` raises instead
    of ending pytest)."""
    release = []

    def stuck(*args, **kwargs):
        while not release:
            time.sleep(0.01)

    def exit_(status, line):
        print(line, file=sys.stderr)
        raise SystemExit(status)

    monkeypatch.setattr(jax.distributed, "initialize", stuck)
    monkeypatch.setattr(cluster, "_exit", exit_)
    start = time.monotonic()
    try:
        status = _status(_with(coordinator=f"127.0.0.1:{_free_port()}", init_timeout="0.3"))
    finally:
        release.append(True)
    assert status == 1 and time.monotonic() - start < 5
    last = capsys.readouterr().err.splitlines()[-1]
    assert last.startswith("error: process 1 of 2 could not reach the coordinator 127.0.0.1:")
    assert "within 0.3 s (--init-timeout" in last


def _occupy(port):
    """A socket listening on ``port`` on every address, as process 0 would."""
    if socket.has_ipv6:
        try:
            s = socket.socket(socket.AF_INET6)
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            s.bind(("::", port))
            s.listen()
            return s
        except OSError:
            s.close()
    s = socket.socket()
    s.bind(("0.0.0.0", port))
    s.listen()
    return s


def test_port_in_use(capsys, no_start):
    """Process 0 cannot listen on the port: refused before JAX (which, refused the port,
    raises or now and then crashes), exit 1."""
    port = _free_port()
    with _occupy(port):
        assert _status(_with(coordinator=f"127.0.0.1:{port}", process_id="0")) == 1
    err = capsys.readouterr().err
    assert err.splitlines()[-1].startswith(
        f"error: process 0 cannot listen on port {port} of --coordinator 127.0.0.1:{port}: "
    )
    assert "in use" in err and "waiting" not in err


# Real processes (JAX on CPU, gloo), each started alone or with a peer missing.


def _env(**extra):
    """The environment without any cluster JAX would detect, on CPU."""
    prefixes = ("SLURM_", "OMPI_", "KUBERNETES_", "JAX_COORDINATOR", "JAX_NUM_PROCESSES")
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    return dict(env, JAX_PLATFORMS="cpu", XLA_FLAGS="", PYTHONUNBUFFERED="1", **extra)


def _train(*argv, cwd):
    command = [*interruptible_module("functional_bp"), "train", "--no-progress", *argv]
    return subprocess.Popen(
        command,
        env=_env(),
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(process, timeout=60):
    try:
        out, err = process.communicate(timeout=timeout)
    finally:
        process.kill()
    return process.returncode, out, err


def _assert_one_error_line(err, starts):
    """The last line of stderr is the ``error:`` line; no traceback, no C++ abort."""
    last = err.strip().splitlines()[-1]
    assert last.startswith(starts), err[-2000:]
    assert "Traceback" not in err and "Check failure" not in err, err[-2000:]


TIMEOUT = 3


@pytest.mark.slow
def test_missing_peer(tmp_path):
    """Process 0 of 2 alone: it says what it waits for, then gives up after the
    timeout, within seconds."""
    port = _free_port()
    start = time.monotonic()
    process = _train(
        "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", "0",
        "--init-timeout", str(TIMEOUT), cwd=tmp_path,
    )  # fmt: skip
    status, _, err = _finish(process)
    assert status == 1, err[-2000:]
    assert time.monotonic() - start < TIMEOUT + 20
    assert f"waiting for 2 processes at 127.0.0.1:{port} (timeout {TIMEOUT} s)" in err
    _assert_one_error_line(
        err, f"error: process 0 waited {TIMEOUT} s for 2 processes at 127.0.0.1:{port}"
    )
    assert "--init-timeout" in err.splitlines()[-1]


@pytest.mark.slow
def test_no_coordinator(tmp_path):
    """Process 1 of 2 with nobody listening at the coordinator's address."""
    port = _free_port()
    start = time.monotonic()
    process = _train(
        "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", "1",
        "--init-timeout", str(TIMEOUT), cwd=tmp_path,
    )  # fmt: skip
    status, _, err = _finish(process)
    assert status == 1, err[-2000:]
    assert time.monotonic() - start < TIMEOUT + 20
    _assert_one_error_line(
        err,
        f"error: process 1 of 2 could not reach the coordinator 127.0.0.1:{port} "
        f"within {TIMEOUT} s (--init-timeout",
    )


@pytest.mark.slow
def test_third_process_missing(tmp_path):
    """Processes 0 and 1 of 3: process 1 reaches the coordinator, and says so when the
    third never comes."""
    port = _free_port()
    cluster_ = ["--coordinator", f"127.0.0.1:{port}", "--num-processes", "3"]
    first = _train(*cluster_, "--process-id", "0", "--init-timeout", "60", cwd=tmp_path)
    try:
        second = _train(
            *cluster_, "--process-id", "1", "--init-timeout", str(TIMEOUT), cwd=tmp_path
        )
        status, _, err = _finish(second)
    finally:
        first.kill()
        first.communicate()
    assert status == 1, err[-2000:]
    _assert_one_error_line(
        err,
        f"error: process 1 of 3 reached the coordinator 127.0.0.1:{port}, but not all 3 "
        f"processes connected within {TIMEOUT} s",
    )


@pytest.mark.slow
def test_distributed_without_a_cluster_environment(tmp_path):
    """The real `jax.distributed.initialize()` outside any cluster: refused, exit 2."""
    status, _, err = _finish(_train("--distributed", "--init-timeout", "5", cwd=tmp_path))
    assert status == 2, err[-2000:]
    _assert_one_error_line(err, "error: --distributed: JAX found no cluster environment")


@pytest.mark.slow
@pytest.mark.parametrize(
    "signum,reason",
    [(signal.SIGINT, "interrupted"), (signal.SIGTERM, "interrupted by SIGTERM")],
    ids=["SIGINT", "SIGTERM"],
)
def test_a_signal_while_waiting(tmp_path, signum, reason):
    """Ctrl-C, or SIGTERM (a scheduler's time limit), reaches the waiting process (JAX's
    wait alone ignores it): exit 128 + the signal."""
    port = _free_port()
    process = _train(
        "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", "0",
        "--init-timeout", "60", cwd=tmp_path,
    )  # fmt: skip
    try:
        first = process.stderr.readline()
        assert first.startswith("waiting for 2 processes"), first
        time.sleep(0.5)  # into the wait
        start = time.monotonic()
        process.send_signal(signum)
        status, _, err = _finish(process, timeout=30)
    finally:
        process.kill()
        process.communicate()
    assert status == 128 + signum, err[-2000:]
    assert time.monotonic() - start < 10
    assert err.strip().splitlines()[-1] == reason


@pytest.mark.slow
@pytest.mark.parametrize(
    "argv,option",
    [(["--layers", "conv2x3,dense10"], "--layers"), (["--dp", "--clip", "1"], "--dp")],
)
def test_a_process_started_alone_hears_at_once_what_several_cannot_train(argv, option, tmp_path):
    """Process 1 of 2, its peer never started: --layers or --dp is refused before it
    connects (exit 2), not after the whole --init-timeout."""
    if option == "--dp":
        argv = [*argv, "--noise-multiplier", "1.1"]
    start = time.monotonic()
    process = _train(
        "--coordinator", f"127.0.0.1:{_free_port()}", "--num-processes", "2",
        "--process-id", "1", "--init-timeout", "120", *argv, cwd=tmp_path,
    )  # fmt: skip
    status, _, err = _finish(process)
    assert status == 2, err[-2000:]
    assert time.monotonic() - start < 60
    _assert_one_error_line(err, "error: several processes")
    assert option in err.splitlines()[-1] and "connecting" not in err

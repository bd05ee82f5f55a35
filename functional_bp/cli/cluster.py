"""Start-up of several processes (`jax.distributed`): the options of ``train``, their
checks, and `jax.distributed.initialize` bounded in time.

Left alone, `jax.distributed.initialize` waits 300 s for a missing process (or for a
coordinator that is not listening), prints nothing meanwhile, then aborts the process
from C++ (``LOG(FATAL)``, SIGABRT and a stack trace) instead of raising; Ctrl-C does
not reach Python while it waits. So `start` runs it in a worker thread and waits itself:
after ``--init-timeout`` seconds it prints one ``error:`` line and ends the process with
exit status 1 (`os._exit`: the C++ side is still waiting, and a normal exit would run
JAX's own shutdown of it); Ctrl-C ends it with 130, SIGTERM with 143 (`interrupts`).
JAX's own deadline is set past ours, so its abort never comes first. Process 0 first
checks that it can listen on the port (JAX, refused it, raises or now and then crashes
with SIGSEGV). Any exception `jax.distributed.initialize` raises becomes `StartFailed`
(exit 1); what is refused before anything starts is a `ValueError` (exit 2), and so is,
before `start` (`functional_bp.cli.main`), what several processes cannot train.
"""

from __future__ import annotations

import argparse
import errno
import math
import os
import socket
import sys
import threading
from typing import Optional

import jax

from functional_bp.cli import common, interrupts

__all__ = [
    "DEFAULT_INIT_TIMEOUT",
    "StartFailed",
    "add_arguments",
    "check",
    "coordinator",
    "processes",
    "requested",
    "start",
]

#: Seconds every process waits for all of them to connect. JAX's own default is 300 s;
#: processes started together (by hand or by a scheduler, on one machine or several)
#: connect within seconds, or a minute on a busy cluster (importing JAX alone takes
#: seconds), while a mistyped address or a process that never started should be an
#: error in two minutes, not five.
DEFAULT_INIT_TIMEOUT = 120.0

# JAX's own initialization_timeout is ours plus this, so that its abort never comes
# first (it fires about 4 s after its deadline).
_JAX_MARGIN_S = 30

# Seconds to probe the coordinator's port once a start-up has timed out.
_PROBE_S = 1.0

_OPTIONS = ("coordinator", "num_processes", "process_id", "init_timeout")

_ENVIRONMENTS = "SLURM, Open MPI, Kubernetes, Cloud TPU"


class StartFailed(RuntimeError):
    """`jax.distributed.initialize` raised: the processes could not start (exit 1)."""


def coordinator(text: str) -> str:
    """The argparse type of ``--coordinator``: ``HOST:PORT`` with a non-empty host (an
    IPv6 one in brackets, ``[::1]:1234``) and a port in 1..65535; returns ``text``."""
    expected = f"expected HOST:PORT with a port in 1..65535, got {text!r}"
    host, colon, port = text.rpartition(":")
    if not colon or not host or any(c.isspace() for c in host):
        raise argparse.ArgumentTypeError(expected)
    if host.startswith("[") != host.endswith("]") or (host.startswith("[") and len(host) < 3):
        raise argparse.ArgumentTypeError(expected)
    if ":" in host and not host.startswith("["):
        raise argparse.ArgumentTypeError(
            f"expected HOST:PORT, an IPv6 host in brackets ([::1]:1234), got {text!r}"
        )
    if not (port.isascii() and port.isdigit()) or not 1 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(expected)
    return text


def add_arguments(group: argparse._ActionsContainer) -> None:
    """Adds --coordinator, --num-processes, --process-id, --init-timeout and
    --distributed to ``group`` (a parser or an argument group)."""
    group.add_argument(
        "--coordinator",
        type=coordinator,
        default=None,
        metavar="HOST:PORT",
        help="the address of process 0, which every process connects to (process 0 "
        "listens on PORT)",
    )
    group.add_argument(
        "--num-processes", type=common.count, default=None, help="how many processes, >= 1"
    )
    group.add_argument(
        "--process-id",
        type=common.seed,
        default=None,
        help="this process's index, 0..num-processes - 1; process 0 reports and writes",
    )
    group.add_argument(
        "--init-timeout",
        type=common.positive,
        default=None,
        metavar="SECONDS",
        help="how long each process waits for all of them to connect before it stops "
        f"with an error (exit 1); default {DEFAULT_INIT_TIMEOUT:g}: enough for processes "
        "started together, short enough that a wrong address or a missing process fails "
        "in minutes, not JAX's silent 300 s and abort",
    )
    group.add_argument(
        "--distributed",
        action="store_true",
        help="jax.distributed.initialize() with the cluster's own detection "
        f"({_ENVIRONMENTS}); the options above override what it finds",
    )


def requested(args: argparse.Namespace) -> bool:
    """Whether ``args`` ask for several processes (any of the options above)."""
    return bool(getattr(args, "distributed", False)) or any(
        getattr(args, name, None) is not None for name in _OPTIONS
    )


def processes(args: argparse.Namespace) -> Optional[int]:
    """How many processes ``args`` start: --num-processes; None where the cluster tells
    (--distributed without it)."""
    return getattr(args, "num_processes", None)


def check(args: argparse.Namespace) -> None:
    """Refuses (`ValueError`, naming the option) what cannot start: with
    --distributed anything goes (the cluster fills in the rest); otherwise
    --coordinator, --num-processes and --process-id together, the process id below the
    number of processes. The single values are argparse's (`add_arguments`)."""
    if args.distributed:
        return
    missing = [
        f"--{name.replace('_', '-')}" for name in _OPTIONS[:3] if getattr(args, name, None) is None
    ]
    if missing:
        raise ValueError(
            "several processes need --coordinator, --num-processes and --process-id "
            f"together (or --distributed on a cluster JAX detects); missing {', '.join(missing)}"
        )
    if args.process_id >= args.num_processes:
        raise ValueError(
            f"--process-id: expected 0..{args.num_processes - 1} (below --num-processes "
            f"{args.num_processes}), got {args.process_id}"
        )


def _seconds(value: float) -> str:
    return f"{value:g} s"


def _reachable(address: str) -> bool:
    """Whether a TCP connection to ``address`` (HOST:PORT) opens within `_PROBE_S`."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=_PROBE_S):
            return True
    except (OSError, ValueError):
        return False


def _listenable(port: int) -> Optional[OSError]:
    """Why process 0 cannot listen on ``port`` on every address (as JAX's coordinator
    does, ``[::]:PORT``), or None. JAX itself, refused the port, raises or crashes
    (SIGSEGV, now and then), so this is asked first."""
    families = [socket.AF_INET6, socket.AF_INET] if socket.has_ipv6 else [socket.AF_INET]
    for family in families:
        try:
            with socket.socket(family, socket.SOCK_STREAM) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC does
                if family == socket.AF_INET6:
                    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
                s.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", port))
                return None
        except OSError as error:
            if family == socket.AF_INET6 and error.errno != errno.EADDRINUSE:
                continue  # no IPv6 here: JAX binds IPv4 alone
            return error
    return None


def _expired(args: argparse.Namespace, timeout: float) -> str:
    """What timed out, for the ``error:`` line."""
    if args.distributed and None in (args.coordinator, args.num_processes, args.process_id):
        return (
            f"--distributed: the cluster's processes did not all connect within "
            f"{_seconds(timeout)} (--init-timeout)"
        )
    address, n, i = args.coordinator, args.num_processes, args.process_id
    if not _reachable(address):
        whose = "its own coordinator" if i == 0 else "the coordinator"
        hint = "is HOST this machine?" if i == 0 else "is process 0 running there?"
        return (
            f"process {i} of {n} could not reach {whose} {address} within "
            f"{_seconds(timeout)} (--init-timeout; {hint})"
        )
    if i == 0:
        return (
            f"process 0 waited {_seconds(timeout)} for {n} processes at {address}; not all "
            f"of them connected (--init-timeout; start every --process-id 0..{n - 1} with "
            "the same --coordinator and --num-processes)"
        )
    return (
        f"process {i} of {n} reached the coordinator {address}, but not all {n} processes "
        f"connected within {_seconds(timeout)} (--init-timeout)"
    )


def _exit(status: int, line: str) -> None:
    """Prints ``line`` on stderr and ends the process at once (the C++ side may still be
    waiting in a thread)."""
    sys.stdout.flush()
    print(line, file=sys.stderr, flush=True)
    os._exit(status)


def _check_port(args: argparse.Namespace) -> None:
    """For process 0: `StartFailed` if it cannot listen on the coordinator's port."""
    if args.process_id != 0 or not args.coordinator:
        return
    if "JAX_COORDINATOR_BIND_ADDRESS" in os.environ:  # JAX listens there instead
        return
    port = int(args.coordinator.rpartition(":")[2])
    refused = _listenable(port)
    if refused is not None:
        raise StartFailed(
            f"process 0 cannot listen on port {port} of --coordinator {args.coordinator}: "
            f"{refused.strerror or refused} (another process, or a coordinator still running?)"
        )


def _announce(args: argparse.Namespace, timeout: float) -> None:
    """What this process waits for, on stderr, before it waits."""
    if None in (args.coordinator, args.num_processes, args.process_id):
        return  # --distributed: the cluster tells
    if args.process_id == 0:
        n = args.num_processes
        what = f"waiting for {n} process{'es' if n > 1 else ''} at {args.coordinator}"
    else:
        what = (
            f"process {args.process_id} of {args.num_processes}: connecting to the "
            f"coordinator {args.coordinator}"
        )
    print(f"{what} (timeout {_seconds(timeout)})", file=sys.stderr, flush=True)


def start(args: argparse.Namespace) -> None:
    """`check`, then `jax.distributed.initialize` within ``--init-timeout`` seconds;
    before any JAX computation. Process 0 first says what it waits for (stderr).

    Raises `ValueError` for what is refused (exit 2), `StartFailed` if initialize
    raised (exit 1). On timeout prints ``error: ...`` and ends the process with status
    1; on Ctrl-C prints ``interrupted`` and ends it with 130 (SIGTERM: ``interrupted by
    SIGTERM``, 143).
    """
    check(args)
    timeout = DEFAULT_INIT_TIMEOUT if args.init_timeout is None else args.init_timeout
    _check_port(args)
    _announce(args, timeout)
    # CPUs reach each other with gloo; GPUs and TPUs use their own collectives.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    raised: list[BaseException] = []

    def initialize() -> None:
        try:
            jax.distributed.initialize(
                args.coordinator,
                args.num_processes,
                args.process_id,
                initialization_timeout=math.ceil(timeout) + _JAX_MARGIN_S,
            )
        except BaseException as error:  # handed to the main thread
            raised.append(error)

    worker = threading.Thread(target=initialize, name="jax.distributed.initialize", daemon=True)
    try:
        worker.start()
        worker.join(timeout)  # the main thread waits, so that Ctrl-C reaches it
    except KeyboardInterrupt as error:  # Ctrl-C or SIGTERM
        _exit(interrupts.status(error), interrupts.reason(error))
    if worker.is_alive():
        _exit(1, f"error: {_expired(args, timeout)}")
    if raised:
        _raise(args, raised[0])


def _raise(args: argparse.Namespace, error: BaseException) -> None:
    """`ValueError` (refused) or `StartFailed` (failed) for what initialize raised."""
    if isinstance(error, ValueError):
        if args.distributed:
            raise ValueError(
                f"--distributed: JAX found no cluster environment ({_ENVIRONMENTS}); give "
                f"--coordinator, --num-processes and --process-id (JAX: {error})"
            ) from error
        raise ValueError(f"jax.distributed.initialize refused the options: {error}") from error
    if not isinstance(error, Exception):
        raise error
    message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    where = f" at {args.coordinator}" if args.coordinator else ""
    which = "" if args.process_id is None else f"process {args.process_id}: "
    hint = " (is the port in use?)" if "RPC server" in message else ""
    raise StartFailed(f"{which}could not start the processes{where}: {message}{hint}") from error

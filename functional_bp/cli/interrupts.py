"""Ctrl-C (SIGINT) and SIGTERM at the command line: the same exception path for both,
from the first instruction on, and never lost.

Python's own Ctrl-C raises `KeyboardInterrupt` at whatever bytecode runs when the signal
arrives. Early in a run that is often inside JAX's garbage-collection callback
(``jax._src.lib._xla_gc_callback``, in `gc.callbacks`; importing JAX and tracing the
first epoch collect garbage all the time), and an exception raised there is printed as
"Exception ignored in: <function _xla_gc_callback ...>" and dropped: the run went on
training. Raised inside an import it is a traceback instead (or the ``ImportError`` of a
C extension whose initialization it broke).

While `handled` is active, SIGINT and SIGTERM raise `Interrupt` (a `KeyboardInterrupt`
that knows its signal) only where it propagates: a signal that arrives inside a
garbage-collection callback, a finalizer (``__del__``), an import, the hook of
unraisable exceptions or this module is held and delivered again every `RETRY_S`
seconds until Python is out of there; one swallowed all the same (a weakref callback)
reaches `sys.unraisablehook`, which holds it likewise. `install` alone (before
`handled`) holds every signal, for the start-up: `install_if_command_line`, which
`functional_bp.cli.early` calls, is meant for the first import of
``functional_bp/__init__.py``, before JAX is imported (otherwise the handler comes with
`functional_bp.cli.main`, after the seconds JAX takes to import).

Exit statuses (`status`): 130 = 128 + SIGINT for Ctrl-C, 143 = 128 + SIGTERM for SIGTERM
(what a scheduler sends at its time limit), the shell's convention. A signal inherited
as ignored (``nohup``, a job a shell without job control starts with ``&``) stays
ignored, as Python itself does for SIGINT.
"""

from __future__ import annotations

import _thread
import contextlib
import gc
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any, Optional

__all__ = [
    "RETRY_S",
    "SIGNALS",
    "Interrupt",
    "handled",
    "install",
    "install_if_command_line",
    "installed",
    "reason",
    "restore",
    "signal_of",
    "status",
]

#: The signals handled: Ctrl-C, and what ``kill``, schedulers and container runtimes send.
SIGNALS = (signal.SIGINT, signal.SIGTERM)

#: Seconds between deliveries of a held signal.
RETRY_S = 0.05

# The handlers and hook before `install`; the signal held; whether it raises (`handled`).
_previous: dict[int, Any] = {}
_previous_hook: Optional[Callable] = None
_pending: Optional[int] = None
_armed = False
_timer: Optional[threading.Timer] = None
# Between a delivery (the timer's thread) and `restore` (the main thread, re-entered by
# the handler: reentrant).
_lock = threading.RLock()


class Interrupt(KeyboardInterrupt):
    """SIGINT or SIGTERM, raised by the command line's handler.

    Attributes:
      signum: the signal's number.
    """

    def __init__(self, signum: int):
        self.signum = int(signum)
        super().__init__(signal.Signals(self.signum).name)


def signal_of(error: BaseException) -> int:
    """The signal of an interrupt: of ``error`` or of an exception it came from (as
    `functional_bp.runs.Interrupted` comes from the `Interrupt` that stopped training);
    SIGINT for a plain `KeyboardInterrupt`."""
    seen: set[int] = set()
    current: Optional[BaseException] = error
    while current is not None and id(current) not in seen:
        if isinstance(current, Interrupt):
            return current.signum
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return int(signal.SIGINT)


def status(error: BaseException) -> int:
    """The exit status of an interrupt: 128 + its signal (130 SIGINT, 143 SIGTERM)."""
    return 128 + signal_of(error)


def reason(error: BaseException) -> str:
    """ "interrupted" (Ctrl-C), or "interrupted by SIGTERM"."""
    signum = signal_of(error)
    if signum == signal.SIGINT:
        return "interrupted"
    return f"interrupted by {signal.Signals(signum).name}"


def installed() -> bool:
    """Whether `install` is in force."""
    return sys.unraisablehook is _unraisable or any(
        signal.getsignal(s) is _handler for s in SIGNALS
    )


def install() -> bool:
    """Installs the handler of SIGINT and SIGTERM and the unraisable hook; until
    `handled` arms it, every signal is held (delivered once it is). Returns whether it
    installed anything: not outside the main thread (where Python takes no handler), not
    a second time."""
    global _previous_hook
    if threading.current_thread() is not threading.main_thread() or installed():
        return False
    for signum in SIGNALS:
        previous = signal.getsignal(signum)
        if previous is signal.SIG_IGN:  # inherited as ignored: stays so
            continue
        _previous[signum] = previous
        signal.signal(signum, _handler)
    _previous_hook = sys.unraisablehook
    sys.unraisablehook = _unraisable
    return True


def restore() -> None:
    """The handlers and the unraisable hook as they were before `install`; a signal
    still held is dropped."""
    global _previous_hook, _pending, _armed, _timer
    with _lock:  # no delivery from now on
        _armed = False
        if _timer is not None:
            _timer.cancel()
            _timer = None
        for signum, previous in list(_previous.items()):
            if signal.getsignal(signum) is _handler:
                signal.signal(signum, signal.SIG_DFL if previous is None else previous)
            del _previous[signum]
        if _previous_hook is not None and sys.unraisablehook is _unraisable:
            sys.unraisablehook = _previous_hook
        _previous_hook = None
        _pending = None


@contextlib.contextmanager
def handled() -> Iterator[None]:
    """Within: SIGINT and SIGTERM raise `Interrupt` (a signal held since `install` is
    delivered at once). After: the handlers as they were, when this installed them."""
    global _armed
    ours = install()
    before = _armed
    _armed = True
    try:
        if _pending is not None:
            _deliver_later(0.0)
        yield
    finally:
        _armed = before
        if ours:
            restore()


def install_if_command_line() -> bool:
    """`install` when this process is the command line: ``python -m functional_bp``
    (while the package imports, ``sys.argv[0]`` is "-m" and ``sys.orig_argv`` names it)
    or the console script ``functional-bp``. For the top of ``functional_bp/__init__.py``
    (`functional_bp.cli.early`), before JAX is imported: a Ctrl-C during that import is
    then held for `handled` instead of lost. Returns whether it installed."""
    argv = sys.argv
    if not argv:
        return False
    original = getattr(sys, "orig_argv", [])
    as_module = (
        argv[0] == "-m"
        and len(original) >= len(argv)
        and original[len(original) - len(argv)] in ("functional_bp", "-mfunctional_bp")
    )
    name = os.path.basename(argv[0])
    as_script = name in ("functional-bp", "functional-bp.exe", "functional-bp-script.py")
    return (as_module or as_script) and install()


# What raising there would lose or turn into another error.
_HERE = os.path.normcase(__file__)
# Interrupted in `threading.Thread.start`, a thread runs that its caller never learns of
# (JAX's 60 s timer of the TPU backend's start-up, started before its try: the process
# then waits for it at exit).
_WHOLE = {threading.Thread.start.__code__}


def _unsafe(frame) -> bool:
    """Whether an exception raised in ``frame`` could be lost or become another error:
    inside a garbage-collection callback, a finalizer, an import, `threading.Thread.start`,
    the unraisable hook or this module."""
    callbacks = {getattr(callback, "__code__", None) for callback in gc.callbacks}
    while frame is not None:
        code = frame.f_code
        if (
            code in callbacks
            or code in _WHOLE
            or code.co_name == "__del__"
            or code.co_filename.startswith("<frozen importlib")
            or os.path.normcase(code.co_filename) == _HERE
        ):
            return True
        frame = frame.f_back
    return False


def _handler(signum: int, frame) -> None:
    """Raises `Interrupt` where it propagates; holds the signal elsewhere."""
    global _pending
    if not _armed or _unsafe(frame):
        _hold(signum)
        return
    _pending = None
    raise Interrupt(signum)


def _hold(signum: int) -> None:
    """Keeps the first signal held and delivers it again in `RETRY_S` once armed."""
    global _pending
    if _pending is None:
        _pending = int(signum)
    if _armed:
        _deliver_later(RETRY_S)


def _deliver_later(delay: float) -> None:
    """The held signal to the main thread's handler in ``delay`` seconds (once)."""
    global _timer
    if _timer is not None and _timer.is_alive():
        return
    timer = threading.Timer(delay, _deliver)
    timer.daemon = True
    try:
        timer.start()
    except RuntimeError:  # the interpreter is shutting down: no new thread
        return
    _timer = timer


def _deliver() -> None:
    """(In the timer's thread.) The held signal once more, if it still is: sent to the
    main thread itself, so that a wait it is in (a lock, a sleep, a read) is cut short
    as by the first."""
    global _timer
    with _lock:
        _timer = None
        signum = _pending
        if signum is None or not _armed or signal.getsignal(signum) is not _handler:
            return
        if hasattr(signal, "pthread_kill"):
            signal.pthread_kill(threading.main_thread().ident, signum)
        else:  # no POSIX threads: Python's own delivery (`_handler` in the main thread)
            _thread.interrupt_main(signum)


def _unraisable(unraisable) -> None:
    """An interrupt swallowed all the same (a weakref callback, ...) is held; anything
    else goes to the hook as it was."""
    error = unraisable.exc_value
    if isinstance(error, KeyboardInterrupt) and threading.current_thread() is (
        threading.main_thread()
    ):
        _hold(signal_of(error))
        return
    (_previous_hook or sys.__unraisablehook__)(unraisable)

"""Ctrl-C and SIGTERM at the command line (`functional_bp.cli.interrupts`): raised where
Python can raise them, never lost where it cannot (a garbage-collection callback, a
finalizer, an import, a weakref callback), the handlers restored after `main`, the exit
statuses 130 and 143."""

import ast
import gc
import signal
import sys
import time
import weakref
from pathlib import Path

import pytest

from cli.helpers import run
from functional_bp import runs
from functional_bp.cli import interrupts

CLI = Path(interrupts.__file__).parent


@pytest.fixture
def python_sigint():
    """SIGINT with Python's own handler during the test (a worker may have inherited it
    ignored, which `interrupts.install` would keep), then as it was."""
    before = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


def _wait_for_the_interrupt(seconds: float = 5.0) -> None:
    """Python code for the held signal to be delivered in."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.005)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_inside_a_gc_callback_is_held_and_delivered(signum, python_sigint):
    """What lost Ctrl-C at the start of ``train``: JAX's gc callback. Raised there,
    Python prints "Exception ignored" and drops it."""
    fired = []

    def callback(phase, info):
        if phase == "start" and not fired:
            fired.append(True)
            signal.raise_signal(signum)  # the handler runs here, inside the callback

    with pytest.raises(interrupts.Interrupt) as caught:
        with interrupts.handled():
            gc.callbacks.append(callback)
            try:
                gc.collect()
                assert fired
                _wait_for_the_interrupt()
            finally:
                gc.callbacks.remove(callback)
    assert caught.value.signum == signum
    assert interrupts.status(caught.value) == 128 + signum


def test_a_signal_inside_a_finalizer_is_held_and_delivered(python_sigint):
    class Finalized:
        def __del__(self):
            signal.raise_signal(signal.SIGINT)

    with pytest.raises(interrupts.Interrupt):
        with interrupts.handled():
            Finalized()  # collected at once: __del__ runs here
            _wait_for_the_interrupt()


def test_an_interrupt_swallowed_by_a_weakref_callback_is_delivered_again(python_sigint):
    """Raised inside a weakref callback (not recognisable from its frame), it reaches
    `sys.unraisablehook`, which holds it."""

    class Target:
        pass

    target = Target()
    ref = weakref.ref(target, lambda _: signal.raise_signal(signal.SIGTERM))
    with pytest.raises(interrupts.Interrupt) as caught:
        with interrupts.handled():
            del target
            _wait_for_the_interrupt()
    assert caught.value.signum == signal.SIGTERM and ref() is None


def test_a_signal_during_an_import_is_held_until_it_is_done(tmp_path, monkeypatch, python_sigint):
    """Raised inside an import, an interrupt is a traceback (or the ImportError of a C
    extension): held, the import finishes and the interrupt comes after."""
    (tmp_path / "fbp_interrupted_import.py").write_text(
        "import signal\nsignal.raise_signal(signal.SIGINT)\ndone = True\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        with pytest.raises(interrupts.Interrupt):
            with interrupts.handled():
                import fbp_interrupted_import

                assert fbp_interrupted_import.done
                _wait_for_the_interrupt()
    finally:
        sys.modules.pop("fbp_interrupted_import", None)


def test_before_handled_every_signal_is_held(python_sigint):
    """`install` alone (the start-up, before `main`) holds the signal for `handled`."""
    assert interrupts.install()
    try:
        signal.raise_signal(signal.SIGINT)  # nothing raised here
        with pytest.raises(interrupts.Interrupt):
            with interrupts.handled():
                _wait_for_the_interrupt()
    finally:
        interrupts.restore()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_main_restores_the_handlers(capsys, in_tmp, no_data, python_sigint):
    before = {s: signal.getsignal(s) for s in interrupts.SIGNALS}
    hook = sys.unraisablehook
    assert run(["train", "--clip", "1", "--no-progress"], capsys)[0] == 2
    assert {s: signal.getsignal(s) for s in interrupts.SIGNALS} == before
    assert sys.unraisablehook is hook and not interrupts.installed()


def test_a_signal_inherited_as_ignored_stays_ignored():
    before = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with interrupts.handled():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            signal.raise_signal(signal.SIGINT)  # ignored: nothing happens
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)


def test_exit_statuses_and_lines():
    term, ctrl_c = interrupts.Interrupt(signal.SIGTERM), KeyboardInterrupt()
    assert (interrupts.status(term), interrupts.reason(term)) == (143, "interrupted by SIGTERM")
    assert (interrupts.status(ctrl_c), interrupts.reason(ctrl_c)) == (130, "interrupted")
    assert interrupts.status(interrupts.Interrupt(signal.SIGINT)) == 130
    # runs.Interrupted (the finished epochs) comes from the signal's Interrupt.
    try:
        try:
            raise term
        except KeyboardInterrupt as error:
            raise runs.Interrupted(runs.Result({}, None, None)) from error
    except runs.Interrupted as stop:
        assert interrupts.status(stop) == 143


@pytest.mark.parametrize(
    "argv,orig_argv,expected",
    [
        (["-m", "train"], ["python", "-m", "functional_bp", "train"], True),
        (["-m", "train"], ["python", "-u", "-X", "dev", "-m", "functional_bp", "train"], True),
        (["-m"], ["python", "-mfunctional_bp"], True),
        (["/venv/bin/functional-bp", "x"], ["python", "/venv/bin/functional-bp", "x"], True),
        (["-m", "x"], ["python", "-m", "pytest", "x"], False),  # another module's start-up
        (["-m"], ["python", "-m", "functional_bp.runs"], False),
        (["/venv/bin/pytest"], ["python", "/venv/bin/pytest"], False),
        (["-c"], ["python", "-c", "import functional_bp"], False),
    ],
)
def test_the_command_line_is_recognised_before_it_imports(
    argv, orig_argv, expected, monkeypatch, python_sigint
):
    monkeypatch.setattr(sys, "argv", argv)
    monkeypatch.setattr(sys, "orig_argv", orig_argv)
    try:
        assert interrupts.install_if_command_line() is expected
        assert interrupts.installed() is expected
    finally:
        interrupts.restore()


@pytest.mark.parametrize("name", ["__init__.py", "interrupts.py", "early.py"])
def test_what_runs_before_jax_imports_the_standard_library_alone(name):
    """``functional_bp/__init__.py`` may import `functional_bp.cli.early` before JAX: the
    cli package, interrupts and early import nothing else at the top level."""
    tree = ast.parse((CLI / name).read_text())
    for node in tree.body:
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            modules = [node.module or ""]
            if node.module == "functional_bp.cli":
                assert [alias.name for alias in node.names] == ["interrupts"], name
                continue
        else:
            continue
        for module in modules:
            top = module.split(".")[0]
            assert top in sys.stdlib_module_names or top == "__future__", (name, module)

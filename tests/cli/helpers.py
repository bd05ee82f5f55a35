"""What the command-line tests share."""

import json
import pathlib

from functional_bp.cli import main

# A network small enough that a run is mostly compilation: digits in, 10 out.
TINY = ["--sizes", "64,8,10", "--epochs", "1", "--no-progress"]


def _refuse(constant: str):
    raise AssertionError(f"non-strict JSON: {constant}")


def read_json(path: pathlib.Path) -> dict:
    """A JSON file, refusing NaN and infinities (strict JSON has none)."""
    return json.loads(path.read_text(), parse_constant=_refuse)


def run(argv: list[str], capsys) -> tuple[int, str]:
    """The exit status of ``main(argv)`` (argparse's SystemExit included) and stderr."""
    try:
        status = main(argv)
    except SystemExit as exit_:
        status = exit_.code
    return status, capsys.readouterr().err


def assert_refused(status: int, err: str, option: str, code: int = 2) -> None:
    """Exit ``code``, one ``error:`` line naming ``option``, no traceback."""
    assert status == code, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    assert option in lines[0], err

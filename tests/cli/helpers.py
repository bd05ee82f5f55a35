"""What the command-line tests share."""

import json
import pathlib

# A network small enough that a run is mostly compilation: digits in, 10 out.
TINY = ["--sizes", "64,8,10", "--epochs", "1", "--no-progress"]


def _refuse(constant: str):
    raise AssertionError(f"non-strict JSON: {constant}")


def read_json(path: pathlib.Path) -> dict:
    """A JSON file, refusing NaN and infinities (strict JSON has none)."""
    return json.loads(path.read_text(), parse_constant=_refuse)

"""The README's Python examples run as written."""

import pathlib
import re

import jax
import pytest

README = pathlib.Path(__file__).parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


@pytest.mark.parametrize("block", range(len(BLOCKS)))
def test_readme_example_runs(block, capsys):
    # The README is written for the default float32 and allows rank promotion.
    with jax.numpy_rank_promotion("allow"), jax.enable_x64(False):
        exec(compile(BLOCKS[block], f"README.md python block {block}", "exec"), {})
    assert "False" not in capsys.readouterr().out

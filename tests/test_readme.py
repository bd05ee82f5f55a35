"""The Python examples of the README and of the docs run as written."""

import pathlib
import re

import jax
import pytest

ROOT = pathlib.Path(__file__).parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
BLOCKS = [
    (page, number, code)
    for page in PAGES
    for number, code in enumerate(re.findall(r"```python\n(.*?)```", page.read_text(), re.S))
]


@pytest.mark.parametrize(
    "page, number, code", BLOCKS, ids=[f"{p.relative_to(ROOT)}:{n}" for p, n, _ in BLOCKS]
)
def test_example_runs(page, number, code, capsys):
    # The pages are written for the default float32 and allow rank promotion.
    with jax.numpy_rank_promotion("allow"), jax.enable_x64(False):
        exec(compile(code, f"{page.name} python block {number}", "exec"), {})
    assert "False" not in capsys.readouterr().out

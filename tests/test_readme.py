"""The Python examples of the README and of the docs run as written: each page's blocks
in order, in a fresh interpreter, as a reader would paste them."""

import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
EXAMPLES = {
    page: "\n".join(re.findall(r"```python\n(.*?)```", page.read_text(), re.S)) for page in PAGES
}
EXAMPLES = {page: code for page, code in EXAMPLES.items() if code}


@pytest.mark.slow
@pytest.mark.parametrize("page", list(EXAMPLES), ids=[str(p.relative_to(ROOT)) for p in EXAMPLES])
def test_examples_run(page, tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", EXAMPLES[page]],
        cwd=tmp_path,  # whatever an example writes stays out of the repository
        # Values, not speed, are checked: XLA compiles faster without its optimisations.
        env={**os.environ, "JAX_DISABLE_MOST_OPTIMIZATIONS": "true"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "False" not in result.stdout, result.stdout

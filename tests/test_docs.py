"""The documentation site builds in strict mode: every public name has a docstring and
stands on its namespace's API page (docs/hooks.py fails the build otherwise), and no
link or reference is broken."""

import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).parent.parent


@pytest.mark.slow
def test_the_site_builds_in_strict_mode(tmp_path):
    result = subprocess.run(  # the docs extra is part of dev, which `make test` installs
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    api = (tmp_path / "site" / "api" / "core" / "index.html").read_text()
    assert 'id="functional_bp.core.backprop_batch"' in api

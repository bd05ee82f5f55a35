"""`scripts/scaling.py --smoke`: every method is compiled, measured and timed at tiny sizes
and the tables, JSON and plot are written (no figure is asserted)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[1] / "scripts" / "scaling.py"


@pytest.mark.slow
def test_scaling_smoke_writes_exponents_limits_and_a_plot(tmp_path):
    out = tmp_path / "scaling"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--smoke", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    payload = json.loads(out.with_suffix(".json").read_text())
    methods = set(payload["exponents"])
    assert {"grad", "jax.grad", "per-example norms", "vmap(jax.grad) + norms"} <= methods
    assert {"diag_ggn", "kfac_factors"} <= methods
    for method, limits in payload["limits"].items():
        assert all(batch > 0 for batch in limits.values()), method
    assert "GEMM" in out.with_suffix(".md").read_text()
    assert out.with_suffix(".png").stat().st_size > 0

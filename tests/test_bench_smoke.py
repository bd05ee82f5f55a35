"""scripts/bench.py --quick runs and writes its three files (a smoke test: no timings
are asserted, these machines are shared and noisy)."""

import importlib.util
import json
import pathlib

import jax

SCRIPT = pathlib.Path(__file__).parent.parent / "scripts" / "bench.py"


def test_bench_quick_writes_tables_json_and_chart(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("bench", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "bench"
    # The benchmark is float32 with default broadcasting, as users run it.
    with jax.numpy_rank_promotion("allow"), jax.enable_x64(False):
        assert bench.main(["--quick", "--out", str(out)]) == 0
    result = json.loads(out.with_suffix(".json").read_text())
    cases = ("mean_gradient", "per_example", "epoch", "per_example_norms", "compile")
    for case in (*cases, "statistics", "many_runs", "feedback"):
        assert result[case], case
    assert all(row["speedup"] > 0 for row in result["statistics"]["rows"])
    assert [row["runs"] for row in result["many_runs"]["rows"]] == [1, 4, 4, 8, 8]
    assert set(result["feedback"][0]["step_ratios"]) == {"fa", "sign", "dfa"}
    assert all(row["ratio"] > 0 for row in result["mean_gradient"])
    assert result["per_example_norms"]["norms_speedup"] > 0
    assert "| sizes | batch |" in out.with_suffix(".md").read_text()
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    assert "wrote" in capsys.readouterr().out

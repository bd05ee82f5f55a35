"""scripts/bench.py --smoke runs every case at a few neurons and writes its three files
(a smoke test: no timings are asserted, these machines are shared and noisy)."""

import importlib.util
import json
import pathlib

import jax
import pytest

SCRIPT = pathlib.Path(__file__).parent.parent / "scripts" / "bench.py"

TABLES = (
    "| sizes | batch | activation/cost | manual ms | jax.grad ms | ratio |",
    "| contender | µs per call | vs plain jit of its net | target |",
    "| sizes | batch | manual ms | vmap(jax.grad) ms | ratio |",
    "| contender | seconds | vs library |",
    "| sizes | batch | manual s | jax.grad s |",
    "| computation | ms | MiB |",
    "| runs | s per epoch | throughput vs one run | x FLOP floor |",
    "| sizes | batch | fa / bp | sign / bp | dfa / bp | alignment_angles / grad |",
    "| quantity | ms | x grad | autodiff ms | speed-up | MiB | autodiff MiB |",
)


def load_bench():
    spec = importlib.util.spec_from_file_location("bench", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


@pytest.mark.slow
def test_bench_smoke_runs_every_case_and_writes_tables_json_and_chart(tmp_path, capsys):
    bench = load_bench()
    out = tmp_path / "bench"
    # The benchmark is float32 with default broadcasting, as users run it.
    with jax.numpy_rank_promotion("allow"), jax.enable_x64(False):
        assert bench.main(["--smoke", "--out", str(out)]) == 0
    result = json.loads(out.with_suffix(".json").read_text())
    assert set(bench.CASES) <= set(result)
    for case in bench.CASES:
        assert result[case], case
    assert result["command"] == "python scripts/bench.py --smoke"
    assert all(row["ratio"] > 0 for row in result["mean_gradient"])
    assert len(result["mean_gradient"]) == len(bench.NETS) * len(bench.SMOKE.sizes)
    assert all(row["speedup"] > 0 for row in result["statistics"]["rows"])
    assert [row["runs"] for row in result["many_runs"]["rows"]] == [1, 2, 2]
    assert set(result["feedback"][0]["step_ratios"]) == {"fa", "sign", "dfa"}
    assert result["per_example_norms"]["norms_speedup"] > 0
    direct = result["direct_call"]
    assert direct["explicit_over_plain"] > 0 and direct["default_over_plain"] > 0
    assert direct["target"] == 1.05
    text = out.with_suffix(".md").read_text()
    for header in TABLES:
        assert header in text, header
    assert "Direct call overhead" in text
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    assert "wrote" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench.json", "bench.md", "bench.png"]


def test_bench_writes_by_default_under_the_current_directory_not_the_tracked_results():
    args = load_bench().make_parser().parse_args([])
    assert args.out == "bench-results/bench"
    assert not args.quick and not args.smoke and args.only is None

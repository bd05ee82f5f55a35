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
@pytest.mark.parametrize("forced", [None, "gpu"])
def test_bench_smoke_runs_every_case_and_writes_tables_json_and_chart(tmp_path, capsys, forced):
    """--smoke with the backend's size table, and with the GPU table forced (on a CPU,
    the GPU table's run shrunk to the smoke sizes)."""
    bench = load_bench()
    flags = ["--smoke"] + (["--backend-sizes", forced] if forced else [])
    backend = jax.default_backend()
    table = forced or bench.table_for(backend)
    out = bench.output_path(tmp_path / "bench", backend, table)
    # The benchmark is float32 with default broadcasting, as users run it.
    with jax.numpy_rank_promotion("allow"), jax.enable_x64(False):
        assert bench.main([*flags, "--out", str(tmp_path / "bench")]) == 0
    result = json.loads(out.with_suffix(".json").read_text())
    assert set(bench.CASES) <= set(result)
    for case in bench.CASES:
        assert result[case], case
    assert result["command"] == " ".join(["python scripts/bench.py", *flags])
    assert result["size_table"] == table and result["mode"] == "smoke"
    machine = result["machine"]
    assert machine["backend"] == backend and machine["device_count"] == jax.device_count()
    assert machine["device"] == jax.devices()[0].device_kind
    assert result["gemm_gflops"] > 0
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
    assert f"backend {backend}, " in text
    assert f"Size table: {table} (shrunk to the smoke sizes)" in text
    for header in TABLES:
        assert header in text, header
    assert "Direct call overhead" in text
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    assert "wrote" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        out.name + suffix for suffix in (".json", ".md", ".png")
    ]
    if backend == "cpu":  # bench.md as before; the GPU table's run named apart
        assert out.name == {None: "bench", "gpu": "bench-gpu-sizes"}[forced]


def test_bench_picks_the_size_table_of_the_backend_and_names_its_files_by_it():
    bench = load_bench()
    assert bench.table_for("cpu") == "cpu"
    assert bench.table_for("gpu") == bench.table_for("tpu") == "gpu"
    assert bench.select_scale("full", "gpu") is bench.GPU_FULL
    assert bench.select_scale("quick", "cpu") is bench.CPU_QUICK
    assert bench.select_scale("smoke", "gpu").table == "gpu"
    assert bench.select_scale("smoke", "gpu").sizes == bench.SMOKE.sizes
    out = "bench-results/bench"
    assert str(bench.output_path(out, "cpu", "cpu")) == "bench-results/bench"
    assert str(bench.output_path(out, "gpu", "gpu")) == "bench-results/bench-gpu"
    assert str(bench.output_path(out, "cpu", "gpu")) == "bench-results/bench-gpu-sizes"
    assert str(bench.output_path(out, "gpu", "cpu")) == "bench-results/bench-gpu-cpu-sizes"


def test_bench_gpu_table_is_gpu_sized_and_its_per_example_cases_fit_in_memory():
    bench = load_bench()
    gpu = bench.GPU_FULL
    assert gpu.gemm_n >= 4096
    assert all(batch >= 1024 for _, batch in gpu.sizes)
    assert any(max(sizes) >= 4096 for sizes, _ in gpu.sizes)
    for table in bench.SIZE_TABLES.values():
        for scale in table.values():
            for name, gib in bench.per_example_gib(scale).items():
                # One copy within budget; the autodiff statistics hold up to 3.
                assert gib <= bench.PER_EXAMPLE_BUDGET_GIB, name
                assert 3 * gib < 64, name


def test_bench_writes_by_default_under_the_current_directory_not_the_tracked_results():
    args = load_bench().make_parser().parse_args([])
    assert args.out == "bench-results/bench"
    assert not args.quick and not args.smoke and args.only is None
    assert args.backend_sizes is None

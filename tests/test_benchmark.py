"""The throughput benchmark runs end to end on a tiny config and writes the contract JSON and a row."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest
from conftest import REPO


def _load_benchmark():
    spec = importlib.util.spec_from_file_location("throughput", REPO / "benchmarks" / "throughput.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_throughput_quick_tiny(tmp_path, monkeypatch):
    bench = _load_benchmark()
    monkeypatch.setattr(bench, "RESULTS_MD", tmp_path / "RESULTS.md")
    out = tmp_path / "out.json"
    bench.main(["--tiny", "--models", "2", "--p", "7", "--mfu-p", "7", "--json", str(out), "--record"])
    r = json.loads(out.read_text())
    for key in ("device", "vmapped_model_steps_per_s", "sequential_model_steps_per_s", "torch_model_steps_per_s",
                "matmul_peak_flops", "achieved_flops", "compile_s"):
        assert key in r
    assert r["device"].startswith("cpu") and r["vmapped_model_steps_per_s"] > 0
    assert r["matmul_peak_flops"] > 0 and r["mfu"] > 0 and r["answer_only_flops_saving"] > 1  # tiny: any MFU
    table = (tmp_path / "RESULTS.md").read_text()
    assert "| date | device |" in table and table.count("| cpu") == 1


def test_cpu_rows_name_their_vector_extensions():
    bench = _load_benchmark()
    avx512 = "processor\t: 0\nflags\t\t: fpu sse4_2 avx avx2 avx512f avx512bw\n"
    avx2 = "processor\t: 0\nflags\t\t: fpu sse4_2 avx avx2 fma\n"
    arm = "processor\t: 0\nFeatures\t: fp asimd evtstrm\n"
    assert [bench.vector_extensions(t) for t in (avx512, avx2, arm, "")] == [
        "AVX-512", "AVX2", "ASIMD", "unknown vector extensions"]
    assert bench.device_name().count(",") >= 1  # "cpu: MODEL, EXTENSIONS (N cores)" on this CPU


@pytest.mark.slow
def test_cpu_speed_before_after_runs_and_records(tmp_path, monkeypatch):
    """benchmarks/cpu_speed.py compiles the textbook and the current program each way, times them and
    appends one row per N to its own RESULTS.md table."""
    spec = importlib.util.spec_from_file_location("cpu_speed", REPO / "benchmarks" / "cpu_speed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(sys.modules["throughput"], "RESULTS_MD", tmp_path / "RESULTS.md")
    (tmp_path / "RESULTS.md").write_text("# Throughput results\n")
    assert module.main(["--models", "2", "--rounds", "1", "--tiny", "--record"]) == 0
    table = (tmp_path / "RESULTS.md").read_text()
    assert module.HEADER in table and table.count("| cpu") == 1
    row = next(line for line in table.splitlines() if line.startswith("| 20")).split(" | ")
    rates = [float(c.replace(",", "")) for c in row[5:10]]  # the five variants' model-steps/s
    assert len(module.VARIANTS) == 5 and min(rates) > 0 and row[10].endswith("x") and row[11].endswith("x")
    textbook, executed = (float(x) for x in row[13].split(" / "))
    assert textbook > executed > 0 and row[-1].endswith("% |")  # the lookups execute fewer FLOPs


@pytest.mark.slow
def test_accelerator_tiny_measures_everything_and_records_a_row(tmp_path, monkeypatch):
    """benchmarks/accelerator.py --tiny: the one GPU command, as a smoke test on this CPU."""
    _load_benchmark()  # registers the module 'throughput' the accelerator script imports
    spec = importlib.util.spec_from_file_location("accelerator", REPO / "benchmarks" / "accelerator.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(sys.modules["throughput"], "RESULTS_MD", tmp_path / "RESULTS.md")
    (tmp_path / "RESULTS.md").write_text("# Throughput results\n")
    out = tmp_path / "acc.json"
    module.main(["--tiny", "--json", str(out)])
    (r,) = json.loads(out.read_text())["results"]
    assert r["precision"] == "float32" and r["models_per_batch"] == 2 and r["model_steps_per_s"] > 0
    assert r["matmul_peak_flops"] > 0 and 0 < r["mfu"] and 0 <= r["idle_between_chunks"] < 1
    assert 0 < r["eval_share"] < 1 and r["compile_s"] > 0 and r["projected_wall_s"] > 0
    assert r["larger_grid"]["models_per_batch"] == 1  # a quarter of the memory (1 model's worth at least)
    table = (tmp_path / "RESULTS.md").read_text()
    assert module.HEADER in table and table.count("(tiny) |") == 1

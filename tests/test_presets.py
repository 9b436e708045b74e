"""Every preset runs end to end at a tiny budget: sweep, fit, plot (prieto2025: every run at wd = 0)."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

import grokjax
from grokjax.cli import main
from grokjax.config.presets import named_sweeps


@pytest.mark.slow
@pytest.mark.parametrize("name", named_sweeps())
def test_every_preset_runs_sweep_fit_and_plot(name, tmp_path, capsys):
    out = tmp_path / name
    # The preset's grid, options and task at 3 steps; fewer, narrower layers only to keep the compilation short.
    transformer = grokjax.build_sweep(name).groups()[0][0].model.arch == "transformer"
    narrow = ["d_model=16", "n_heads=2", "d_mlp=32", "n_layers=1"] if transformer else ["d_mlp=32"]
    assert main(["sweep", name, "steps=3", "eval_every=1", *narrow, "--out", str(out), "--quiet"]) == 0, \
        capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "wrote" in printed and f"results: {out}" in printed
    r = grokjax.load(out)
    assert r.complete and len(r.runs) == grokjax.build_sweep(name).n_runs() and r.runs["wd"].tolist() == \
        [run.get("hp.wd") for _, runs in grokjax.build_sweep(name).groups() for run in runs]
    assert pq.read_table(out / "fits.parquet").num_rows == len(r.runs)
    assert (out / "phase_diagram.png").stat().st_size > 10_000
    assert main(["plot", str(out), "--curves"]) == 0 and (out / "curves.png").is_file()

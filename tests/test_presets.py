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
    assert main(["sweep", name, "steps=3", "eval_every=1", "--out", str(out), "--quiet"]) == 0, \
        capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "wrote" in printed and f"results: {out}" in printed
    r = grokjax.load(out)
    assert r.complete and len(r.runs) == grokjax.build_sweep(name).n_runs()
    assert pq.read_table(out / "fits.parquet").num_rows == len(r.runs)
    assert (out / "phase_diagram.png").stat().st_size > 10_000
    assert main(["plot", str(out), "--curves"]) == 0 and (out / "curves.png").is_file()

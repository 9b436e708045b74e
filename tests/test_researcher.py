"""What a researcher sees: honest laws, keys, the data dictionary, the Python API, comparing sweeps."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from conftest import REPO, TINY, merged, run_cli

import grokjax
from grokjax.analysis.law import MIN_LAW_CELLS, fit_law
from grokjax.analysis.summary import near_misses, summary_table
from grokjax.analysis.survival import cells, kaplan_meier_median
from grokjax.cli import main
from grokjax.config.fields import FIELDS
from grokjax.errors import UserError
from grokjax.store.columns import TABLES


def two_law_fits(wds=(0.1, 0.3, 1.0, 3.0), seeds=6, seed=0) -> pd.DataFrame:
    """t_train ~ wd^-0.2 and delay ~ wd^-1.2, so t_val follows neither power exactly."""
    rng = np.random.default_rng(seed)
    rows = []
    for i, wd in enumerate(wds):
        for s in range(seeds):
            t_train = 300 * wd**-0.2 * math.exp(0.05 * rng.standard_normal())
            delay = 2000 * wd**-1.2 * math.exp(0.05 * rng.standard_normal())
            rows.append(dict(run_id=i * seeds + s, wd=wd, seed=s, t_train=t_train, t_val=t_train + delay,
                             t_val_first=t_train + delay, delay=delay, censored=False, phase="grokking",
                             budget=1e6))
    fits = pd.DataFrame(rows)
    fits.attrs["axes"] = ["wd", "seed"]
    return fits


def test_delay_law_and_t_val_law_are_fitted_separately():
    fits = two_law_fits()
    delay, t_val = fit_law(fits, "delay"), fit_law(fits, "t_val")
    assert abs(delay.alpha - (-1.2)) < 0.05 and delay.alpha_low <= -1.2 <= delay.alpha_high
    assert t_val.alpha > -1.1  # t_train's slower law flattens t_val
    assert "delay" in str(delay) and "∝ wd^-1.19" in str(delay) and "(4 distinct wd, 4 cells)" in str(delay)


def test_a_law_over_lr_times_wd_counts_distinct_products_and_cells():
    """Two cells sharing lr*wd are one point of the law: 3 distinct lr·wd from 4 cells, written so."""
    fits = two_law_fits(wds=(0.1, 0.3, 1.0), seeds=4)
    other = fits[fits.wd == 0.3].assign(lr=0.3, wd=0.1, run_id=lambda d: d.run_id + 1000)  # lr*wd as 0.3, 1e-3
    fits = pd.concat([fits.assign(lr=0.1), other], ignore_index=True)
    fits.attrs["axes"] = ["lr", "wd", "seed"]
    law = fit_law(fits, "t_val")
    assert (law.n_cells, law.n_grid_cells) == (3, 4)
    assert "∝ (lr·wd)^" in str(law) and "(3 distinct lr·wd, 4 cells)" in str(law)


def test_intervals_need_three_seeds():
    two = two_law_fits(seeds=2)
    law = fit_law(two, "t_val")
    assert law.fitted and math.isnan(law.alpha_low) and "[n/a: 2 seeds]" in str(law)
    c = cells(two)
    assert c["ci_low"].isna().all() and c["delay_ci_high"].isna().all()
    assert "n/a: 2 seeds" in summary_table(c)
    assert not math.isnan(fit_law(two_law_fits(seeds=3), "t_val").alpha_low)


def test_a_law_says_which_cells_it_left_out_and_near_misses_are_named():
    fits = two_law_fits(wds=(0.01, 0.1, 0.3, 1.0, 3.0), seeds=3)
    low = fits.wd == 0.01
    fits.loc[low, ["censored", "phase", "t_val", "delay"]] = [True, "memorization", np.nan, np.nan]
    fits["max_val_acc"] = np.where(low, 0.5, 1.0)
    fits["final_val_acc"] = fits["max_val_acc"]
    fits.loc[fits.run_id == fits[low].run_id.iloc[0], ["max_val_acc", "final_val_acc"]] = [0.985, 0.97]
    assert "left out: wd=0.01 (memorization)" in str(fit_law(fits, "t_val"))
    misses = near_misses(fits, 0.99, 0.02)
    assert len(misses) == 1 and "near, max 0.985, final 0.970" in misses[0]


def test_no_law_below_the_minimum_number_of_cells():
    fits = two_law_fits(wds=(0.3, 1.0))
    law = fit_law(fits)
    assert MIN_LAW_CELLS == 3 and not law.fitted and math.isnan(law.alpha) and law.n_cells == 2
    assert "no law fitted" in str(law) and "2 grokked cell" in str(law)
    assert fit_law(two_law_fits(wds=(0.3, 1.0, 3.0))).fitted


def test_cells_give_the_kaplan_meier_median_delay():
    fits = two_law_fits(seeds=5)
    fits.loc[fits.run_id == 0, ["censored", "phase", "t_val", "delay"]] = [True, "memorization", np.nan, np.nan]
    c = cells(fits).set_index("wd")
    first = fits[fits.wd == 0.1]
    times = np.where(first.censored, first.budget - first.t_train, first.delay)
    assert c.loc[0.1, "median_delay"] == kaplan_meier_median(times, ~first.censored.to_numpy())
    assert c.loc[0.1, "delay_ci_low"] <= c.loc[0.1, "median_delay"] <= c.loc[0.1, "delay_ci_high"]


def test_keys_lists_every_key_with_default_group_and_meaning(capsys):
    assert main(["keys"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for f in FIELDS.values():
        line = next(ln for ln in lines if ln.split()[0] == f.short)
        assert f.group in line and f.meaning in line
    assert main(["keys", "grokfast_lamb"]) == 0
    out = capsys.readouterr().out.splitlines()[1]
    assert out.split()[:4] == ["grokfast_lamb", "2", "2", "per-model"]
    assert main(["keys", "p"]) == 0
    assert capsys.readouterr().out.splitlines()[1].split()[:3] == ["p", "47", "97"]  # the default sweep's p
    assert main(["keys", "lr"]) == 0
    assert capsys.readouterr().out.splitlines()[1].split()[:3] == ["lr", "0.01", "0.001"]
    assert main(["keys", "nosuchkey"]) == 2


def test_version_and_a_bare_command():
    env = dict(os.environ, PYTHONPATH=str(REPO))
    v = subprocess.run([sys.executable, "-m", "grokjax", "--version"], capture_output=True, text=True, env=env)
    assert v.returncode == 0 and v.stdout.strip() == f"grokjax {grokjax.__version__}"
    bare = subprocess.run([sys.executable, "-m", "grokjax"], capture_output=True, text=True, env=env)
    assert bare.returncode == 2 and "see grokjax --help" in bare.stderr and "grokjax grokjax" not in bare.stderr


def test_loading_and_fitting_does_not_import_jax():
    code = ("import sys, grokjax; grokjax.load; grokjax.fit; grokjax.cells; grokjax.fit_law; "
            "import grokjax.analysis.report, grokjax.analysis.plots, grokjax.cli; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'flax', 'optax')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr


def test_python_values_are_validated_like_the_command_line():
    from grokjax.grid.expand import build_sweep

    base = [x for x in TINY if not x.startswith(("wd=", "seeds="))]
    s = build_sweep(None, base, settings={"wd": np.logspace(-1, 0, 3), "seeds": 2})
    assert s.values["hp.wd"] == pytest.approx([0.1, 10**-0.5, 1.0]) and s.values["hp.seed"] == [0, 1]
    assert all(type(v) is float for v in s.values["hp.wd"])
    for bad in ({"wd": -1.0}, {"d_model": 2.5}, {"optimizer": "adagrad"}):
        (key, value), = bad.items()
        with pytest.raises(UserError) as api:
            build_sweep(settings=bad)
        with pytest.raises(UserError) as cli:
            build_sweep(overrides=[f"{key}={value}"])
        assert str(api.value).split(":", 1)[1] == str(cli.value).split(":", 1)[1]
    with pytest.raises(UserError, match="2-D"):
        build_sweep(settings={"wd": np.ones((2, 2))})


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """One tiny sweep through the Python API, fitted by the CLI."""
    out = tmp_path_factory.mktemp("api") / "r"
    settings = dict(op="add", p=11, d_model=16, n_heads=2, d_mlp=32, steps=60, eval_every=20, chunk_steps=20,
                    frac=0.5, lr=3e-3, wd=np.array([0.3, 1.0]), seeds=2)
    results = grokjax.sweep(out=out, quiet=True, **settings)
    assert main(["fit", str(out)]) == 0
    return results


@pytest.mark.slow
def test_python_sweep_returns_results_and_frame_joins_hyperparameters(swept):
    assert isinstance(swept, grokjax.Results) and swept.complete
    assert swept.axes == ["wd", "seed"] and len(swept.runs) == 4
    frame = swept.frame()
    assert len(frame) == len(swept.metrics) and {"wd", "seed", "val_acc", "step"} <= set(frame.columns)
    assert "d_model" not in frame.columns and "d_model" in swept.frame("all").columns
    assert list(swept.frame(["p", "lr"]).columns[-2:]) == ["p", "lr"]
    for rid, rows in frame.groupby("run_id", observed=True):
        run = swept.runs.set_index("run_id").loc[rid]
        assert (rows.wd.astype(float) == run.wd).all() and (rows.seed.astype(int) == run.seed).all()
    with pytest.raises(UserError, match="nosuch"):
        swept.frame(["nosuch"])
    plain = pd.read_parquet(swept.path / "metrics")
    assert len(plain) == len(swept.metrics) and set(plain.columns) == set(swept.metrics.columns)


def test_frame_stays_within_twice_the_metrics_memory():
    """12 runs x 4000 logged steps of the default sweep: joined with its swept keys within 2x the metrics,
    with all 43 keys (categoricals) within 3x; every key as a plain column took 11.6x."""
    from grokjax.grid.expand import build_sweep
    from grokjax.store.directory import runs_table

    sweep = build_sweep(None)
    runs = runs_table(sweep)
    n, steps = len(runs), 4000
    metrics = pd.DataFrame({"run_id": np.repeat(runs.run_id.to_numpy(), steps), "step": np.tile(np.arange(steps), n)}
                           | {c: np.ones(n * steps, np.float32) for c in ("train_loss", "train_acc", "val_loss",
                                                                         "val_acc", "param_norm")})
    r = grokjax.Results(REPO, {"spec": sweep.to_json()}, runs, metrics)
    budget = 2 * metrics.memory_usage(deep=True).sum()
    assert r.frame().memory_usage(deep=True).sum() <= budget and list(r.frame().columns[-2:]) == ["wd", "seed"]
    assert r.frame("all").memory_usage(deep=True).sum() <= 1.5 * budget and len(r.frame("all")) == n * steps


def test_every_written_column_is_in_the_data_dictionary_and_the_docs(swept):
    page = (REPO / "docs" / "results.md").read_text()
    dictionary = page[page.index("## Data dictionary"):]
    files = {"runs": [swept.path / "runs.parquet"], "metrics": sorted((swept.path / "metrics").glob("*.parquet")),
             "fits": [swept.path / "fits.parquet"], "cells": [swept.path / "cells.parquet"],
             "laws": [swept.path / "laws.parquet"]}
    for kind, paths in files.items():
        schema = pq.read_schema(paths[0])
        for field in schema:
            if kind != "cells" or field.name not in swept.axes:
                assert field.name in TABLES[kind], f"{kind}.{field.name} has no entry"
                assert field.metadata and field.metadata[b"description"], f"{kind}.{field.name}"
        for name in TABLES[kind]:
            assert f"`{name}`" in dictionary, f"docs/results.md's data dictionary lacks {kind}.{name}"


def test_plot_uses_the_saved_fits_unless_told_otherwise(swept, capsys):
    path = swept.path
    assert main(["fit", str(path), "--keep", "1"]) == 0
    capsys.readouterr()
    assert main(["plot", str(path)]) == 0
    out = capsys.readouterr().out
    assert "using the fits in" in out and "keep 1" in out
    assert main(["plot", str(path), "--threshold", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "fitted for this plot (fit options given)" in out and "threshold 0.5" in out
    assert pq.read_table(path / "fits.parquet").schema.metadata[b"grokjax.fit_options"].count(b'"keep": 1') == 1
    newest = max((path / "metrics").glob("*.parquet"))
    before = newest.stat()
    later = time.time() + 5
    os.utime(newest, (later, later))
    assert main(["plot", str(path)]) == 0
    assert "older than the metrics" in capsys.readouterr().out
    os.utime(newest, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert main(["fit", str(path)]) == 0  # leave the default fits for the other tests


def test_plot_draws_the_norm_gap_and_the_double_descents(swept, capsys):
    path = swept.path
    capsys.readouterr()
    assert main(["plot", str(path), "--norm-gap", "--curves"]) == 0
    out = capsys.readouterr().out
    assert "norm-gap at end:" in out and (path / "norm_gap.png").stat().st_size > 0
    assert (path / "curves.png").stat().st_size > 0


def test_two_sweeps_are_compared_side_by_side(swept, tmp_path, capsys):
    other = tmp_path / "other"
    assert main(["sweep", *merged(TINY, ["wd=[0.3,1]", "seeds=2", "lr=1e-2"]), "--out", str(other), "--quiet",
                 "--no-plot"]) == 0
    capsys.readouterr()
    assert main(["fit", str(swept.path), str(other)]) == 0
    out = capsys.readouterr().out
    assert "lr=0.003" in out and "lr=0.01" in out  # labelled by the setting in which they differ
    table = out.splitlines()
    header = next(i for i, ln in enumerate(table) if re.search(r"^\s+grokked\s+t_val\s+grokked\s+t_val\s*$", ln))
    table = table[header:]
    assert sum(bool(re.match(r"\s+(0\.3|1)\s", ln)) for ln in table) == 2
    assert main(["plot", str(swept.path), str(other), "--output", str(tmp_path / "cmp.png")]) == 0
    assert (tmp_path / "cmp.png").stat().st_size > 10_000
    # --output without a suffix takes --format; a directory gets comparison.FORMAT inside it
    assert main(["plot", str(swept.path), str(other), "--output", str(tmp_path / "bare"), "--format", "svg"]) == 0
    assert (tmp_path / "bare.svg").is_file()
    (tmp_path / "figs").mkdir()
    assert main(["plot", str(swept.path), str(other), "--output", str(tmp_path / "figs")]) == 0
    assert (tmp_path / "figs" / "comparison.png").is_file()
    capsys.readouterr()
    assert main(["plot", str(swept.path), str(other), "--output", str(tmp_path / "cmp.txt")]) == 2
    err = capsys.readouterr().err.strip()
    assert "not a figure format" in err and "\n" not in err and not (tmp_path / "cmp.txt").exists()


def test_piped_progress_keeps_printing_while_a_chunk_runs(capsys):
    from grokjax.run.progress import Reporter

    with Reporter(100, quiet=False, interval=0.2) as rep:
        rep.say("compiling group 1 of 1 (4 models) ...")
        time.sleep(0.7)
    err = capsys.readouterr().err
    assert err.count("still running") >= 2 and "compiling group 1 of 1" in err


def test_tensorboard_export_reads_back(swept, tmp_path, capsys):
    pytest.importorskip("tensorboardX")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    out = tmp_path / "tb"
    assert main(["export", str(swept.path), "--to", "tensorboard", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["export.json"] + [f"run_{i:05d}" for i in range(4)]
    assert json.loads((out / "export.json").read_text())["runs"] == 4
    fits = pd.read_parquet(swept.path / "fits.parquet").set_index("run_id")
    for rid in range(4):
        ea = EventAccumulator(str(out / f"run_{rid:05d}"))
        ea.Reload()
        m = swept.metrics[swept.metrics.run_id == rid]
        for col in ("train_loss", "val_acc", "param_norm"):
            rows = m[m[col].notna()]
            got = ea.Scalars(col)
            assert [e.step for e in got] == rows.step.tolist()
            np.testing.assert_allclose([e.value for e in got], rows[col], rtol=1e-6)
        assert ea.Scalars("fit/final_val_acc")[0].value == pytest.approx(fits.loc[rid, "final_val_acc"], rel=1e-6)
        start = plugin_data_pb2.HParamsPluginData.FromString(
            ea.SummaryMetadata("_hparams_/session_start_info").plugin_data.content).session_start_info
        assert start.hparams["wd"].number_value == pytest.approx(swept.runs.wd[rid])
        assert start.hparams["op"].string_value == "add"
    assert main(["export", str(swept.path), "--to", "tensorboard", str(out)]) == 2  # never into a used directory
    assert "not an empty directory" in capsys.readouterr().err
    killed = tmp_path / "killed"  # an export killed midway leaves its in-progress marker, never export.json
    killed.mkdir()
    (killed / "export-in-progress.json").write_text("{}")
    assert main(["export", str(swept.path), "--to", "tensorboard", str(killed)]) == 2
    assert "did not finish" in capsys.readouterr().err


@pytest.mark.parametrize("project", ["a/b c", "", "x" * 129, "-lead"])
def test_a_bad_wandb_project_is_one_line_and_writes_nothing(swept, tmp_path, capsys, project):
    out = tmp_path / "wb"
    assert main(["export", str(swept.path), "--to", "wandb", str(out), "--project", project]) == 2
    err = capsys.readouterr().err.strip()
    assert "--project" in err and "\n" not in err and not out.exists()


def _wandb_records(path):
    """Records of an offline W&B run file (its leveldb-style log of 32 KiB blocks, read without the network)."""
    import struct

    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, buf, out = 7, b"", []
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:
            pos += left
            continue
        buf = (b"" if kind in (1, 2) else buf) + data[pos + 7: pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            out.append(wandb_internal_pb2.Record.FromString(buf))
            buf = b""
    return out


def test_wandb_export_is_offline_and_reads_back(swept, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_API_KEY", "")
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")  # any attempt to reach the network would fail
    out = tmp_path / "wb"
    # In a process of its own: wandb's service threads, left in this worker, were followed by an XLA
    # compilation that crashed the worker (SIGSEGV / SIGABRT) in 2 of 2 cold-cache CI runs.
    proc = run_cli(["export", str(swept.path), "--to", "wandb", str(out)])
    assert proc.returncode == 0, proc.stderr
    files = sorted(out.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(files) == 4
    seen = {}
    for f in files:
        recs = _wandb_records(f)
        run = next(r.run for r in recs if r.WhichOneof("record_type") == "run")
        config = {u.key: u.value_json for u in run.config.update}
        history = [{(i.key or "/".join(i.nested_key)): float(i.value_json) for i in r.history.item
                    if (i.key or "/".join(i.nested_key)) in ("_step", "val_acc")}
                   for r in recs if r.WhichOneof("record_type") == "history"]
        seen[run.display_name] = (float(config["wd"]), [h for h in history if "val_acc" in h])
    for rid in range(4):
        wd, history = seen[f"run_{rid:05d}"]
        m = swept.metrics[(swept.metrics.run_id == rid) & swept.metrics.val_acc.notna()]
        assert wd == pytest.approx(swept.runs.wd[rid])
        assert [h["_step"] for h in history] == m.step.tolist()
        np.testing.assert_allclose([h["val_acc"] for h in history], m.val_acc, rtol=1e-6)


def test_the_first_rate_excludes_compilation(capsys):
    from grokjax.run.progress import Reporter, Tracker

    with Reporter(1000, quiet=False, interval=60) as rep:
        with rep.compiling("group 1 of 1 (4 models)"):
            time.sleep(1.0)
        rep.update(100, "group 1/1", Tracker(4), "4/4 slots busy, 0 queued")
        assert rep.rate() > 200  # 100 model-steps over the ~0 s outside compilation, not over ~1 s
    err = capsys.readouterr().err
    assert "compiling group 1 of 1 (4 models) ..." in err and "compiled group 1 of 1 (4 models) in 1.0 s" in err

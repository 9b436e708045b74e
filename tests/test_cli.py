"""End-to-end: the CLI writes the contract layout; bad input touches nothing; load() works mid-sweep."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
from conftest import REPO, TINY, merged, run_cli, snapshot

import grokjax
from grokjax.cli import main
from grokjax.grid.expand import build_sweep

DONE_WHEN = ["op=add", "p=13", "d_model=32", "n_layers=1", "steps=120", "eval_every=40", "wd=[0.01,0.1,1]",
             "seeds=2"]


@pytest.fixture(scope="module")
def grid_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("grid") / "r"
    proc = run_cli(["sweep", *DONE_WHEN, "--out", str(out)])
    assert proc.returncode == 0, proc.stderr
    return out, proc


@pytest.mark.slow
def test_done_when_layout_and_rows(grid_dir):
    out, proc = grid_dir
    r = grokjax.load(out)
    assert r.complete and len(r.runs) == 6
    assert list(r.runs.columns[:2]) == ["run_id", "group"]
    assert {"wd", "lr", "frac", "seed", "init_scale", "p", "op", "d_model"} <= set(r.runs.columns)
    m = r.metrics
    assert list(m.columns) == ["run_id", "step", "train_loss", "train_acc", "val_loss", "val_acc", "param_norm",
                               "grad_norm", "update_norm", "unembed_norm", "norm_embed", "norm_attn", "norm_mlp",
                               "norm_unembed"]
    assert m["grad_norm"].notna().all() and m["norm_attn"].notna().sum() == 6 * 5  # measures=norms, the default
    assert not m.duplicated(["run_id", "step"]).any()
    assert (m.groupby("run_id")["train_loss"].count() == 121).all()  # steps 0..119 and the final row
    val_steps = sorted(m.loc[m["val_acc"].notna(), "step"].unique())
    assert val_steps == [0, 40, 80, 119, 120]
    assert m["param_norm"].notna().sum() == 6 * 5
    spec = json.loads((out / "sweep.json").read_text())
    assert spec["command"][:2] == ["grokjax", "sweep"] and spec["jax_backend"] == "cpu"
    assert "jax" in spec["versions"] and spec["devices"]
    assert (out / "fits.parquet").exists() and (out / "phase_diagram.png").exists()
    assert "results:" in proc.stdout and "t_val_first" in proc.stdout and "t_val (kept)" in proc.stdout


@pytest.mark.slow
def test_grid_run_equals_the_same_run_alone(tmp_path):
    """A run trained inside a 6-model grid equals the same run alone. The claim is exact arithmetic, so it is
    checked in float64: in float32 a program of another shape rounds differently (XLA picks other kernels
    and reduction orders per shape and per CPU), and training amplifies that to ~1e-5 relative."""
    grid_out, alone = tmp_path / "grid", tmp_path / "alone"
    base = [a for a in DONE_WHEN if not a.startswith(("wd=", "seeds=", "steps=", "eval_every="))]
    base += ["dtype=float64", "steps=60", "eval_every=20"]
    assert main(["sweep", *base, "wd=[0.01,0.1,1]", "seeds=2", "--out", str(grid_out), "--no-plot", "--quiet"]) == 0
    assert main(["sweep", *base, "wd=0.1", "seed=1", "--out", str(alone), "--no-plot", "--quiet"]) == 0
    grid = grokjax.load(grid_out)
    rid = int(grid.runs.query("wd == 0.1 and seed == 1")["run_id"].iloc[0])
    a = grid.metrics[grid.metrics.run_id == rid].drop(columns="run_id").reset_index(drop=True)
    b = grokjax.load(alone).metrics.drop(columns="run_id").reset_index(drop=True)
    assert a["val_loss"].dtype == "float64"  # float64 end to end: no float32 step on the way to disk
    pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-10, atol=1e-12)


@pytest.mark.slow
def test_log_every_thins_train_rows_but_keeps_eval_rows(tmp_path, tiny):
    out = tmp_path / "r"
    assert main(["sweep", *tiny, "log_every=7", "--out", str(out), "--quiet", "--no-plot"]) == 0
    m = grokjax.load(out).metrics
    assert sorted(m["step"].unique()) == sorted(set(range(0, 60, 7)) | {0, 20, 40, 59, 60})


BAD_CLI = [
    ["sweep", "wdd=0.1"],
    ["sweep", "wd=[0.1,"],
    ["sweep", "frac=2"],
    ["sweep", "op=div", "p=12"],
    ["sweep", "d_model=30"],
    ["sweep", "wd=range(3,1)"],
    ["sweep", "nonexistent_sweep"],
    ["sweep", "wd=0.1", "stray"],
    ["sweep", "--bogus-flag"],
    ["sweep", "seeds=-2"],
    ["sweep", "momentum=[0,0.9]"],
    ["sweep", "wd=\uff11"],
    ["sweep", "grokfast_alpha=0.9"],
    ["sweep", "grokfast=ema", "grokfast_window=7"],
    ["sweep", "mlp_input=embed"],
    ["sweep", "arch=mlp", "n_heads=2"],
    ["sweep", "arch=mlp", "layer_norm=true"],
    ["sweep", "patience=5"],
    ["sweep", "wd=[0.1,1]", "seeds=2", "--shard", "0/9"],
    ["sweep", "steps=3000000000"],
    ["sweep", "seed=2147483648"],
    ["sweep", "seed=range(2147483640,2147483649)"],
    ["sweep", "lr=-1"],
    ["sweep", "steps=abc"],
    ["sweep", "batch_size=huge"],
    ["sweep", "act=tanh"],
    ["sweep", "dtype=float16"],
    ["sweep", "grokfast_alpha=1.5"],
    ["sweep", "momentum=-1"],
    ["sweep", "arch=cnn"],
    ["sweep", "grokfast_window=0"],
    ["sweep", "optimizer=lion"],
    ["sweep", "loss=hinge"],
    ["sweep", "mlp_input=binary"],
    ["sweep", "grokfast_lamb=-2"],
    ["sweep", "p=1000003"],
    ["sweep", "seeds=1e9"],
    ["sweep", "seeds=[0,0]"],
    ["fit", "/nonexistent/dir"],
    ["plot", "/nonexistent/dir"],
    ["fit", "DIR", "--threshold", "1.5"],
    ["frobnicate"],
    ["sweep", "BAD_TOML"],
    ["sweep", "TYPO_TOML"],
    ["sweep", "NESTED_TOML", "wd=0.1"],
    ["sweep", "NEG_TOML"],
]
CONFIG_FILES = {"BAD_TOML": "wd = [0.1,\n", "TYPO_TOML": "weight_decay = 0.1\n", "NESTED_TOML": "seeds = [[1]]\n",
                "NEG_TOML": "[model]\nd_model = -8\n"}


@pytest.mark.parametrize("argv", BAD_CLI, ids=[" ".join(a) for a in BAD_CLI])
def test_bad_cli_input_gives_one_line_and_touches_nothing(argv, tmp_path, capsys, grid_dir):
    existing, _ = grid_dir
    before = snapshot(existing)
    new_out = tmp_path / "never"
    for name, text in CONFIG_FILES.items():
        (tmp_path / f"{name}.toml").write_text(text)
    argv = [str(existing) if a == "DIR" else str(tmp_path / f"{a}.toml") if a in CONFIG_FILES else a
            for a in argv]
    if argv[0] == "sweep":
        argv += ["--out", str(new_out)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("grokjax: error: ") and "\n" not in err and "Traceback" not in err
    assert not new_out.exists() and snapshot(existing) == before


def test_bad_input_into_existing_results_leaves_them_untouched(grid_dir, capsys):
    existing, _ = grid_dir
    before = snapshot(existing)
    assert main(["sweep", "wd=oops", "--out", str(existing)]) == 2
    assert main(["sweep", *DONE_WHEN, "--out", str(existing)]) == 2  # same sweep, no --resume
    assert "add --resume" in capsys.readouterr().err
    assert snapshot(existing) == before


def test_module_entry_point_and_help():
    proc = subprocess.run([sys.executable, "-m", "grokjax", "sweep", "--help"], capture_output=True, text=True,
                          cwd=REPO)
    assert proc.returncode == 0 and "logspace" in proc.stdout


@pytest.mark.slow
def test_load_while_a_sweep_is_writing(tmp_path):
    """Poll load() while a subprocess streams parts: every read is consistent, and reads grow."""
    out = tmp_path / "live"
    args = ["sweep", "op=add", "p=11", "d_model=16", "n_heads=2", "d_mlp=32", "steps=3000", "eval_every=50",
            "chunk_steps=50", "frac=0.5", "wd=[0.1,1]", "seeds=1", "--out", str(out), "--no-plot", "--quiet"]
    proc = subprocess.Popen([sys.executable, "-m", "grokjax", *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    seen = []
    try:
        deadline = time.time() + 240
        while proc.poll() is None and time.time() < deadline:
            if (out / "sweep.json").exists():
                m = grokjax.load(out).metrics
                assert not m.duplicated(["run_id", "step"]).any()
                # only complete parts (2 runs x 50 steps, the last with the final row) are visible
                assert len(m) % (2 * 50) == 0 or len(m) == 6002
                seen.append(len(m))
            time.sleep(0.05)
    finally:
        proc.wait(timeout=240)
    assert proc.returncode == 0, proc.stderr.read()
    assert any(0 < n < 6000 for n in seen), seen
    assert len(grokjax.load(out).metrics) == 2 * 3001


def test_dry_run_prints_the_grid_without_importing_jax(tmp_path):
    """--dry-run parses and checks the sweep, prints its plan and exits: no JAX, nothing written."""
    code = ("import sys; from grokjax.cli import main; "
            "rc = main(['sweep', 'wd=[0.1,1]', 'seeds=3', 'optimizer=[adamw,sgd]', '--dry-run', '--out', 'r']); "
            "print(rc, sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'flax', 'optax')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                         env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[-1] == "0 []", out.stdout
    assert "12 runs in 2 compiled group(s); swept: wd (2), seed (3), optimizer (2)" in lines[0]
    assert "48,000 model-steps" in lines[1] and "15,584 parameters" in lines[2]
    assert not (tmp_path / "r").exists() and not (tmp_path / "results").exists()


@pytest.mark.parametrize("args", [[], ["layer_norm=true", "n_layers=2", "bias=false"], ["arch=mlp"],
                                  ["arch=mlp", "mlp_input=embed", "bias=false", "n_layers=3"], ["op=s5"],
                                  ["block=ln_residual", "init=torch", "tokens=4", "n_layers=2"],
                                  ["block=postnorm", "pos=sinusoidal", "nonzero_y=true"],
                                  ["dataset=digits", "arch=mlp", "n_layers=2", "d_mlp=20"]])
def test_the_plans_parameter_count_is_the_models(args):
    import jax

    from grokjax.engine.single import engine_for
    from grokjax.grid.plan import n_params

    group, runs = build_sweep(None, args).groups()[0]
    engine = engine_for(group, runs)
    tokens = np.zeros((1, engine.table.seq_len), np.float32 if engine.table.features else np.int32)
    shapes = jax.eval_shape(lambda: engine.model.init(jax.random.key(0), tokens)["params"])
    assert n_params(group) == sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))


def test_the_summary_after_a_resume_reads_the_stored_metrics(tmp_path, capsys):
    """--resume of a finished sweep trains nothing; its per-run times are still those of the whole runs
    (they came from this process's live counters, which saw nothing, and printed '-')."""
    out = tmp_path / "r"
    args = ["sweep", *merged(TINY, ["wd=[0.3,1]", "lr=1e-2", "steps=200"]), "--out", str(out), "--no-plot"]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert main([*args, "--resume"]) == 0
    again = capsys.readouterr().out
    rows = lambda text: [ln for ln in text.splitlines() if re.match(r"\s+\d+\s+[\d.]+\s", ln)]  # noqa: E731
    assert rows(first) and rows(again) == rows(first)
    assert any(ln.split()[4] != "-" for ln in rows(again))  # a t_train was reached
    assert "this process computed 0 model-steps" in again and "the sweep holds 400" in again


def test_keys_act_where_the_grid_gives_them_an_effect(tmp_path):
    """A key that acts in some of the grid's groups is accepted; a sweep file's own values are exempt."""
    assert len(build_sweep(None, ["optimizer=[adamw,sgd]", "momentum=0.9"]).groups()) == 2
    cfg = tmp_path / "mine.toml"
    cfg.write_text('grokfast_alpha = 0.9\nmomentum = 0.5\n')
    assert build_sweep(str(cfg)).values["hp.momentum"] == [0.5]
    with pytest.raises(grokjax.UserError, match=r"momentum=0.5: has no effect with optimizer=adamw; .*sgd"):
        build_sweep(str(cfg), ["momentum=0.5"])


def test_a_bogus_grokjax_distributed_is_one_line(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("GROKJAX_DISTRIBUTED", "bogus")
    assert main(["sweep", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert "GROKJAX_DISTRIBUTED=bogus" in err and "\n" not in err and not (tmp_path / "r").exists()


def test_smaller_hostile_inputs_are_one_line_user_errors(tmp_path, capsys):
    assert main(["sweep", "steps=10", "--out", "/proc/grokjax-test"]) == 2
    err = capsys.readouterr().err.strip()
    assert "not on a disk file system" in err and "\n" not in err
    for call in (lambda: grokjax.sweep(123), lambda: grokjax.sweep(out=123, steps=10), lambda: grokjax.load(None)):
        with pytest.raises(grokjax.UserError):
            call()
    assert not list(tmp_path.iterdir())

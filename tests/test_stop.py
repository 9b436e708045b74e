"""stop=resolved: runs leave the program once grokked or diverged, the rest are re-packed; times equal a
budget run's, stop steps are recorded, fewer model-steps are computed, and resume works across a re-pack."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
from conftest import REPO, run_cli

import grokjax
from grokjax.cli import main
from grokjax.grid.expand import build_sweep
from grokjax.run.batch import Resolver, bucket_size
from grokjax.run.sweep import run_sweep

# Two of the four runs grok (at steps 225 and 900), two only memorize within the budget. float64: the
# re-packed programs have other shapes than the budget run's, which round differently in float32.
GROKS = ["op=add", "p=23", "d_model=32", "n_heads=2", "d_mlp=64", "frac=0.8", "lr=3e-3", "wd=[1,3]", "seeds=2",
         "steps=1500", "eval_every=25", "chunk_steps=100", "checkpoint_every=100", "dtype=float64"]
TIMES = ["t_train", "t_val", "t_val_first", "phase"]


@pytest.fixture(scope="module")
def budget_and_resolved(tmp_path_factory):
    root = tmp_path_factory.mktemp("stop")
    outcomes = {}
    for stop in ("budget", "resolved"):
        sweep = build_sweep(None, [*GROKS, f"stop={stop}"])
        outcomes[stop] = run_sweep(sweep, root / stop, quiet=True)
    return outcomes


def test_bucket_sizes_are_powers_of_two_up_to_the_batch():
    assert [bucket_size(n, 12) for n in (1, 2, 3, 4, 5, 8, 9, 12)] == [1, 2, 4, 4, 8, 8, 12, 12]
    assert bucket_size(1, 1) == 1


def test_resolver_needs_memorization_and_patience_evaluations_in_a_row():
    r = Resolver.fresh(patience=2, n=3)
    train = np.array([[0.5, 1.0, 1.0], [1.0, 1.0, 0.5]])  # [K=2 steps, 3 runs]
    val = np.array([[1.0, 1.0, 1.0], [1.0, 0.5, 1.0]])
    every = np.array([True, True])
    done, why = r.update({"train_acc": train, "val_acc": val}, every, every, np.array([-1, -1, 5]))
    # run 0: memorized at the 2nd step, 2 evaluations >= 0.99 -> grokked; run 1: streak broken;
    # run 2 diverged (its val streak does not matter).
    assert done.tolist() == [True, False, True] and why.tolist() == ["grokked", "grokked", "diverged"]
    assert r.streak.tolist() == [2, 0, 2]
    r.keep(np.array([False, True, False]))
    done, _ = r.update({"train_acc": np.ones((1, 1)), "val_acc": np.ones((1, 1))}, np.array([True]),
                       np.array([True]), np.array([-1]))
    assert not done[0]  # one evaluation after the break is not enough
    # a run whose train accuracy was never logged at >= 0.99 does not stop, whatever its validation
    r = Resolver.fresh(patience=1, n=1)
    done, _ = r.update({"train_acc": np.array([[1.0]]), "val_acc": np.array([[1.0]])}, np.array([False]),
                       np.array([True]), np.array([-1]))
    assert not done[0]


@pytest.mark.slow
def test_resolved_runs_stop_with_the_times_of_a_budget_run(budget_and_resolved):
    budget, resolved = (budget_and_resolved[k] for k in ("budget", "resolved"))
    fb, fr = grokjax.fit(budget.path), grokjax.fit(resolved.path)
    pd.testing.assert_frame_equal(fb[TIMES], fr[TIMES])
    grokked = fb.phase.isin(["grokking", "comprehension"])
    assert grokked.sum() == 2 and (~grokked).sum() == 2  # the fixture shows both kinds
    stops = grokjax.load(resolved.path).stops
    assert sorted(stops.run_id) == sorted(fb.run_id[grokked]) and set(stops.reason) == {"grokked"}
    # stop_step: the chunk end after `patience` (3) evaluations >= 0.99
    assert (fr.stop_step[grokked] > fr.t_val[grokked] + 2 * 25).all() and fb.stop_step.isna().all()
    assert (fr.stop_step[grokked] % 100 == 0).all() and fr.stop_step[~grokked].isna().all()
    assert not fr.censored[grokked].any()
    m = grokjax.load(resolved.path).metrics
    last = m.groupby("run_id").step.max()
    assert (last[stops.run_id].to_numpy() == stops.stop_step.to_numpy() - 1).all()
    # the runs that stayed were re-packed into smaller programs: same metrics as the budget run
    mb = grokjax.load(budget.path).metrics
    kept = ~mb.run_id.isin(stops.run_id)
    pd.testing.assert_frame_equal(mb[kept].reset_index(drop=True),
                                  m[~m.run_id.isin(stops.run_id)].reset_index(drop=True), rtol=1e-9, atol=1e-12)
    # fewer model-steps computed (counted by the trainer, padding included)
    assert budget.model_steps == 4 * 1500
    assert resolved.model_steps < budget.model_steps
    assert resolved.tracker.n_stopped == 2


@pytest.mark.slow
def test_resume_across_a_repack_equals_an_uninterrupted_run(tmp_path, budget_and_resolved):
    """SIGKILL after the first runs left the program (between two re-packs), then --resume."""
    reference = grokjax.load(budget_and_resolved["resolved"].path)
    out = tmp_path / "r"
    args = [*GROKS, "stop=resolved"]
    proc = subprocess.Popen([sys.executable, "-m", "grokjax", "sweep", *args, "--out", str(out), "--no-plot",
                             "--quiet"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ckpt = out / "checkpoints" / "g000-b000.npz"

    def checkpoint_step() -> int:
        try:
            with np.load(ckpt) as z:
                return int(z["step"])
        except (OSError, ValueError, KeyError):  # not written yet (it is renamed into place whole)
            return 0

    # A checkpoint after the first stop (step 300) holds the re-packed state of the 3 live runs.
    deadline = time.time() + 240
    while checkpoint_step() < 400:
        assert proc.poll() is None and time.time() < deadline, "the sweep ended before it could be killed"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = grokjax.load(out)
    assert not partial.complete and len(partial.stops) == 1, "killed after the second re-pack"
    resumed = run_cli(["sweep", *args, "--out", str(out), "--resume", "--no-plot", "--quiet"])
    assert resumed.returncode == 0, resumed.stderr
    got = grokjax.load(out)
    pd.testing.assert_frame_equal(got.metrics, reference.metrics, check_exact=True)
    pd.testing.assert_frame_equal(got.stops, reference.stops)


@pytest.mark.parametrize("bad, accepted", [("stop=early", "budget, resolved"), ("patience=0", "from 1 to"),
                                           ("patience=x", "whole number")])
def test_bad_stop_values_are_one_line_errors(tmp_path, capsys, bad, accepted):
    assert main(["sweep", "steps=10", bad, "--out", str(tmp_path / "r"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and bad.split("=")[0] in err and accepted in err, err
    assert not (tmp_path / "r").exists()

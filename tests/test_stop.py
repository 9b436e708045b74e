"""stop=resolved: runs leave the program once grokked or diverged, freeing their slots (the queue's next
runs take them; once it is empty the rest may move to a smaller program); times equal a budget run's, stop
steps are recorded, fewer model-steps are computed, and resume works across a stop and a re-pack."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import jax
import numpy as np
import pandas as pd
import pytest
from conftest import REPO, assert_same_params, run_cli

import grokjax
from grokjax.cli import main
from grokjax.engine.program import Program
from grokjax.engine.single import engine_for
from grokjax.grid.expand import build_sweep
from grokjax.run.pool import Resolver, SlotPool
from grokjax.run.sweep import run_sweep

# Two of the four runs grok (at steps 225 and 900), two only memorize within the budget. float64: the
# re-packed programs have other shapes than the budget run's, which round differently in float32.
GROKS = ["op=add", "p=23", "d_model=32", "n_heads=2", "d_mlp=64", "frac=0.8", "lr=3e-3", "wd=[1,3]", "seeds=2",
         "steps=1500", "eval_every=25", "chunk_steps=100", "checkpoint_every=100", "dtype=float64",
         "snapshot_every=500", "snapshot_at_transitions=true"]
TIMES = ["t_train", "t_val", "t_val_first", "phase"]


@pytest.fixture(scope="module")
def budget_and_resolved(tmp_path_factory):
    root = tmp_path_factory.mktemp("stop")
    outcomes = {}
    for stop in ("budget", "resolved"):  # repack=always: the program sizes do not depend on timing
        sweep = build_sweep(None, [*GROKS, f"stop={stop}", *(["repack=always"] if stop == "resolved" else [])])
        outcomes[stop] = run_sweep(sweep, root / stop, quiet=True)
    return outcomes


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
    r.reset(np.array([0, 2]))  # their slots take new runs
    assert r.streak.tolist() == [0, 0, 0] and r.memorized.tolist() == [False, True, False]
    done, _ = r.update({"train_acc": np.ones((1, 3)), "val_acc": np.ones((1, 3))}, np.array([True]),
                       np.array([True]), np.array([-1, -1, -1]))
    assert not done.any()  # one evaluation after the break (or after a birth) is not enough
    # per-slot masks ([K, S]): each slot counts only its own run's evaluation rows
    r = Resolver.fresh(patience=1, n=2)
    mask = np.array([[True, False]])
    done, _ = r.update({"train_acc": np.ones((1, 2)), "val_acc": np.ones((1, 2))}, mask, mask, np.array([-1, -1]))
    assert done.tolist() == [True, False] and r.memorized.tolist() == [True, False]
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
    # the runs that stayed moved into a smaller program once the others had stopped: same metrics as the
    # budget run
    mb = grokjax.load(budget.path).metrics
    kept = ~mb.run_id.isin(stops.run_id)
    pd.testing.assert_frame_equal(mb[kept].reset_index(drop=True),
                                  m[~m.run_id.isin(stops.run_id)].reset_index(drop=True), rtol=1e-9, atol=1e-12)
    # the parameters kept (every 500 steps, at t_train and t_val_first, at the stop or the budget): the
    # same at the same steps in both, the transitions at the fit's times
    rb, rr = grokjax.load(budget.path), grokjax.load(resolved.path)
    for row in fb.itertuples():
        kept_b, kept_r = rb.kept_steps(row.run_id), rr.kept_steps(row.run_id)
        transitions = [int(t) for t in (row.t_train, row.t_val_first) if np.isfinite(t)]
        assert set(transitions) <= set(kept_b) & set(kept_r) and len(transitions) == 1 + grokked[row.Index]
        assert kept_b == sorted({500, 1000, 1500, *transitions})
        stop = fr.stop_step[row.Index]
        assert kept_r == (kept_b if not grokked[row.Index] else [s for s in kept_b if s < stop] + [int(stop)])
        for step in set(kept_b) & set(kept_r):
            for x, y in zip(*(jax.tree.leaves(r.params(row.run_id, step)) for r in (rb, rr))):
                np.testing.assert_allclose(x, y, rtol=1e-9, atol=1e-12)
    # fewer model-steps computed (counted by the trainer, padding included)
    assert budget.model_steps == 4 * 1500
    assert resolved.model_steps < budget.model_steps
    assert resolved.tracker.n_stopped == 2


@pytest.mark.slow
def test_resume_across_a_repack_equals_an_uninterrupted_run(tmp_path, budget_and_resolved):
    """SIGKILL after the first run left the program (its slot empty, before the re-pack that follows the
    second stop), then --resume."""
    reference = grokjax.load(budget_and_resolved["resolved"].path)
    out = tmp_path / "r"
    args = [*GROKS, "stop=resolved", "repack=always"]
    proc = subprocess.Popen([sys.executable, "-m", "grokjax", "sweep", *args, "--out", str(out), "--no-plot",
                             "--quiet"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ckpt = out / "checkpoints" / "g000-b000.npz"

    def checkpoint_step() -> int:
        try:
            with np.load(ckpt) as z:
                return int(z["step"])
        except (OSError, ValueError, KeyError):  # not written yet (it is renamed into place whole)
            return 0

    # A checkpoint after the first stop (step 300) holds 4 slots, 3 of them busy.
    deadline = time.time() + 240
    while checkpoint_step() < 400:
        assert proc.poll() is None and time.time() < deadline, "the sweep ended before it could be killed"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = grokjax.load(out)
    assert not partial.complete and len(partial.stops) == 1, "killed after the second stop"
    resumed = run_cli(["sweep", *args, "--out", str(out), "--resume", "--no-plot", "--quiet"])
    assert resumed.returncode == 0, resumed.stderr
    got = grokjax.load(out)
    pd.testing.assert_frame_equal(got.metrics, reference.metrics, check_exact=True)
    pd.testing.assert_frame_equal(got.stops, reference.stops)
    assert_same_params(got, reference)  # the kept parameters too, those at the transitions included


def _pool(monkeypatch, repack, n_live, size, step_s, compile_s, cached=False, steps=1000, done=200):
    """SlotPool._shrink on a stand-in pool of ``size`` slots, ``n_live`` of them busy at step ``done``, the
    queue empty; returns the sizes it asked programs of (a re-pack), compiling nothing."""
    monkeypatch.setattr(Program, "cached", classmethod(lambda cls, e, n: cached))
    asked = []
    pool = SlotPool.__new__(SlotPool)
    slot_runs = np.where(np.arange(size) < n_live, np.arange(size), -1)
    pool.__dict__.update(slot_runs=slot_runs, slot_steps=np.where(slot_runs >= 0, done, steps), steps=steps,
                         runs=list(range(size)), queued=size, repack=repack, step_s=step_s, design=None,
                         engine=SimpleNamespace(group=SimpleNamespace(train=SimpleNamespace(stop="resolved"))),
                         resolver=Resolver.fresh(3, size), prog=type("P", (), {"compile_s": compile_s, "n_models": size}),
                         program=lambda n: asked.append(n) or _raise(_Asked()))
    try:
        pool._shrink()
    except _Asked:  # the re-pack asked for its program: far enough
        pass
    return asked


class _Asked(Exception):
    pass


def _raise(e: Exception) -> None:
    raise e


def test_a_repack_happens_only_once_the_queue_is_empty_and_where_it_pays(monkeypatch):
    # 3 busy runs of a 16-slot program: bucket 4 saves 3/4 of 800 steps at 0.01 s = 6 s
    assert _pool(monkeypatch, "always", 3, 16, 0.01, 100.0) == [4]  # every process the same way
    assert _pool(monkeypatch, "auto", 3, 16, 0.01, 100.0, cached=True) == [4]  # compiled: costs nothing
    assert _pool(monkeypatch, "auto", 3, 16, 0.01, 1.0) == [4]  # 6 s saved > 1 s to compile
    assert _pool(monkeypatch, "auto", 3, 16, 0.01, 7.0) == []  # 6 s saved < 7 s to compile
    assert _pool(monkeypatch, "auto", 3, 16, None, 7.0) == [4]  # no timing yet: re-pack
    assert _pool(monkeypatch, "always", 9, 16, 0.01, 1.0) == []  # bucket 16 is the program's
    with monkeypatch.context() as m:  # a run still queued takes a freed slot instead
        m.setattr(SlotPool, "n_waiting", property(lambda self: 1))
        assert _pool(m, "always", 3, 16, 0.01, 1.0) == []


@pytest.mark.parametrize("bad, accepted", [("stop=early", "budget, resolved"), ("patience=0", "from 1 to"),
                                           ("repack=sometimes", "auto, always"), ("repack=always", "stop=resolved"),
                                           ("patience=x", "whole number")])
def test_bad_stop_values_are_one_line_errors(tmp_path, capsys, bad, accepted):
    assert main(["sweep", "steps=10", bad, "--out", str(tmp_path / "r"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and bad.split("=")[0] in err and accepted in err, err
    assert not (tmp_path / "r").exists()

"""Warm starts (init_from=DIR, init_run, init_step, init_optimizer): a run starts from another sweep's kept
parameters, and with its optimizer state continues that run bitwise (float64); what cannot be started from
is one line naming what was asked and what there is."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import merged

import grokjax
from grokjax.cli import main
from grokjax.errors import UserError
from grokjax.grid.expand import build_sweep
from grokjax.run.sweep import run_sweep

TINY = ["p=11", "d_model=8", "n_heads=2", "d_mlp=16", "frac=0.5", "lr=1e-2", "eval_every=10", "chunk_steps=10",
        "dtype=float64", "wd=1", "measures=none", "seed=0"]
S = 20  # the source keeps its state at step S and trains on to 2S


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """Two runs (seeds 0, 1) of 2S steps, their parameters and optimizer state kept every S steps."""
    out = tmp_path_factory.mktemp("warm") / "src"
    run_sweep(build_sweep(None, merged(TINY, [f"steps={2 * S}", f"snapshot_every={S}", "snapshot_optimizer=true",
                                              "seeds=2"])), out, quiet=True)
    return out


def _warm(tmp_path, source, *extra, steps=S, arms=None):
    out = tmp_path / "warm"
    run_sweep(build_sweep(None, merged(TINY, [f"steps={steps}", f"init_from={source}", *extra]), arms=arms), out,
              quiet=True)
    return grokjax.load(out)


def _rows(metrics, run_id, cols, shift=0):
    m = metrics[metrics.run_id == run_id].sort_values("step")
    m = m.assign(step=m.step - shift)
    return m[m.step >= 0].set_index("step")[cols]


def test_a_warm_start_with_the_optimizer_state_continues_the_run_bitwise(tmp_path, source):
    """Both runs' states at step S, with the same settings and their optimizer states, then S steps: every
    metric row equals the source's S steps later (the warmup count and Adam moments carried, the split the
    same; the source's step 2S - 1 is an evaluation of its own, its budget's last step). The same program, each
    run in its source's slot: XLA may round a sum otherwise in another."""
    arms = [f"seed={k} init_run={k}" for k in (0, 1)]
    r = _warm(tmp_path, source, f"init_step={S}", "init_optimizer=true", f"snapshot_every={S}", steps=2 * S,
              arms=arms)
    src = grokjax.load(source)
    cols = ["train_loss", "train_acc", "val_loss", "val_acc", "param_norm"]
    for k in (0, 1):
        ours, theirs = _rows(r.metrics, k, cols).loc[: S - 1], _rows(src.metrics, k, cols, shift=S).loc[: S - 1]
        assert len(ours) == S and ours.index.equals(theirs.index)
        theirs.loc[S - 1, cols[2:]] = np.nan
        np.testing.assert_array_equal(ours.to_numpy(), theirs.to_numpy())
        np.testing.assert_array_equal(r.params(k, S)["embed"]["embedding"], src.params(k)["embed"]["embedding"])
    assert r.runs.set_index("run_id").loc[1, ["init_run", "init_step"]].tolist() == [1, S]


def test_without_the_optimizer_state_only_the_parameters_are_taken(tmp_path, source):
    """init_step=-1 takes the final parameters: step 0 measures them. A fresh optimizer (its warmup from the
    start, no moments) then takes another first step than the source's own continuation."""
    src = grokjax.load(source).metrics
    at = lambda m, rid, step: m[(m.run_id == rid) & (m.step == step)].iloc[0]  # noqa: E731
    r = _warm(tmp_path, source, "init_run=0").metrics
    assert at(r, 0, 0).val_loss == at(src, 0, 2 * S).val_loss and at(r, 0, 0).param_norm == at(src, 0, 2 * S).param_norm
    r = _warm(tmp_path / "again", source, "init_run=0", f"init_step={S}").metrics
    assert at(r, 0, 0).train_loss == at(src, 0, S).train_loss
    assert at(r, 0, 1).train_loss != at(src, 0, S + 1).train_loss


def test_a_grid_crosses_source_runs_with_new_per_model_settings(tmp_path, source):
    """init_run is per model: two sources x two fracs are four runs, each its source's parameters at step 0;
    with one slot, three of them start in a slot a finished run freed."""
    r = _warm(tmp_path, source, "init_run=[0,1]", "frac=[0.4,0.6]", f"init_step={S}", "models_per_batch=1")
    src = grokjax.load(source)
    assert len(r.runs) == 4
    for rid, row in r.runs.set_index("run_id").iterrows():
        step0 = r.metrics[(r.metrics.run_id == rid) & (r.metrics.step == 0)].param_norm.iloc[0]
        theirs = src.metrics[(src.metrics.run_id == row.init_run) & (src.metrics.step == S)].param_norm.iloc[0]
        assert step0 == theirs, (rid, row.init_run)


def test_the_optimizer_state_keeps_the_new_runs_own_numbers(tmp_path, source):
    """With the source's optimizer state, the per-model numbers in it (inject_hyperparams) stay the new run's:
    run 0 at wd=0 leaves its source's path at the first update, run 1 at the source's wd=1 stays on it."""
    arms = ["seed=0 init_run=0 wd=0", "seed=1 init_run=1 wd=1"]
    r = _warm(tmp_path, source, f"init_step={S}", "init_optimizer=true", steps=S, arms=arms).metrics
    src = grokjax.load(source).metrics
    loss = lambda m, rid, step: m[(m.run_id == rid) & (m.step == step)].train_loss.iloc[0]  # noqa: E731
    assert loss(r, 0, 0) == loss(src, 0, S) and loss(r, 0, 1) != loss(src, 0, S + 1)
    assert loss(r, 1, 1) == loss(src, 1, S + 1)


@pytest.mark.parametrize("extra, says", [
    (["init_run=5"], "run_id=5: not a run of"),
    (["init_run=0", "init_step=7"], f"kept steps: {S}, {2 * S}"),
    (["init_run=0", "d_model=16"], "d_model=8"),
    (["init_run=0", "init_optimizer=true", "optimizer=sgd"], "optimizer=adamw"),
])
def test_what_cannot_be_started_from_is_one_line(tmp_path, source, capsys, extra, says):
    """A missing run or step names the kept ones; a shape or optimizer mismatch names both sides; nothing
    is written."""
    out = tmp_path / "bad"
    code = main(["sweep", *merged(TINY, [f"steps={S}", f"init_from={source}", *extra]), "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and says in err and len(err.splitlines()) == 1, err
    assert not out.exists()


def test_init_keys_without_their_source_are_refused(tmp_path, source):
    with pytest.raises(UserError, match="needs init_from"):
        build_sweep(None, merged(TINY, ["init_run=0"]))
    with pytest.raises(UserError, match="no run starts from it"):
        run_sweep(build_sweep(None, merged(TINY, [f"init_from={source}", "steps=10"])), tmp_path / "x", quiet=True)
    with pytest.raises(UserError, match="init_from=.*not"):
        run_sweep(build_sweep(None, merged(TINY, [f"init_from={tmp_path}", "init_run=0", "steps=10"])),
                  tmp_path / "y", quiet=True)

"""Every trained model can be opened: a run's parameters by step (Results.params) and its network as a
function (Results.model), kept at its end, at its stop, and every snapshot_every steps."""

from __future__ import annotations

import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import merged

import grokjax
from grokjax.cli import main
from grokjax.engine.data import hparams_for
from grokjax.engine.single import engine_for
from grokjax.errors import UserError
from grokjax.grid.expand import build_sweep
from grokjax.run.sweep import run_sweep
from grokjax.store.export import export

ARMS = ["block=postnorm init=torch tokens=4", "arch=mlp"]
TINY = ["p=11", "d_model=8", "n_heads=2", "d_mlp=16", "frac=0.5", "lr=1e-2", "eval_every=10", "chunk_steps=10",
        "dtype=float64"]


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """A mixed grid: a post-norm transformer (4 tokens, torch init) and an MLP, 40 steps, snapshots every
    20 (the default prenorm transformer is the third test's)."""
    out = tmp_path_factory.mktemp("params") / "r"
    sweep = build_sweep(None, merged(TINY, ["steps=40", "snapshot_every=20", "seeds=2", "wd=1"]), arms=ARMS)
    run_sweep(sweep, out, quiet=True)
    return sweep, grokjax.load(out)


def _val_acc(sweep, run_id, logits_of):
    """Validation accuracy and cross-entropy of a run from a network function, on the run's own split."""
    (group, runs), = [(g, rs) for g, rs in sweep.groups() if any(r.run_id == run_id for r in rs)]
    run = next(r for r in runs if r.run_id == run_id)
    engine = engine_for(group, [run])
    with jax.enable_x64(True):
        hp = jax.tree.map(lambda x: jnp.asarray(x[0]), hparams_for([run], engine.table.n_pairs))
        _, split = engine.init_one(hp)
    idx, w = np.asarray(split.val_idx), np.asarray(split.val_w) > 0
    pairs = engine.table.inputs[idx[w]]
    a, b = pairs[:, 0], pairs[:, -2]
    logits, labels = logits_of(a, b), engine.table.labels[idx[w]]
    z = logits - logits.max(1, keepdims=True)
    loss = -(z[np.arange(len(labels)), labels] - np.log(np.exp(z).sum(1))).mean()
    return float((logits.argmax(1) == labels).mean()), float(loss)


@pytest.mark.slow
def test_model_reproduces_every_runs_stored_val_acc(mixed):
    """The metric row of step s holds the parameters after s updates: those of the snapshot at s."""
    sweep, r = mixed
    stored = r.metrics[r.metrics.step == 20].set_index("run_id")
    assert len(stored) == 4
    for run_id in r.runs.run_id:
        acc, loss = _val_acc(sweep, int(run_id), r.model(int(run_id), step=20))
        assert acc == pytest.approx(float(stored.val_acc[run_id]), abs=1e-12)
        assert loss == pytest.approx(float(stored.val_loss[run_id]), rel=1e-9)


@pytest.mark.slow
def test_snapshots_equal_an_uninterrupted_run_at_those_steps(mixed, tmp_path):
    sweep, r = mixed
    for run_id in (0, 3):
        at20 = r.params(run_id, step=20)
        assert set(at20) == set(r.params(run_id))  # the same named tree at every kept step
        with pytest.raises(UserError, match="kept steps: 20, 40"):
            r.params(run_id, step=30)
    # the same grid to step 20 only: its final parameters are the snapshot at 20
    short = build_sweep(None, merged(TINY, ["steps=20", "snapshot_every=20", "seeds=2", "wd=1"]), arms=ARMS)
    run_sweep(short, tmp_path / "short", quiet=True)
    s = grokjax.load(tmp_path / "short")
    for run_id in range(4):
        got, want = r.params(run_id, step=20), s.params(run_id)
        for x, y in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
            np.testing.assert_array_equal(x, y)


def test_bad_run_ids_and_steps_are_one_line_errors(mixed, tmp_path):
    out = tmp_path / "r"
    shutil.copytree(mixed[1].path, out)  # a copy: its files are removed below
    r = grokjax.load(out)
    assert set(r.params(0)) >= {"embed", "block_0", "unembed"}
    for bad, match in ((7, "not a run"), ("0", "not a run"), (True, "not a run")):
        with pytest.raises(UserError, match=match):
            r.params(bad)
    with pytest.raises(UserError, match="kept steps: 20, 40"):
        r.model(0, step=5)
    with pytest.raises(UserError, match="whole number"):
        r.params(0, step=1.5)
    part = sorted((out / "params").iterdir())[0]  # a damaged parameters file
    part.write_bytes(part.read_bytes()[:100])
    with pytest.raises(UserError, match=f"{part.name}: not a readable parameters file"):
        grokjax.load(out).params(0)
    for p in (out / "params").iterdir():  # a sweep whose parameters were not kept
        p.unlink()
    with pytest.raises(UserError, match="no kept parameters"):
        r.params(0)


@pytest.mark.slow
def test_transition_snapshots_hold_the_parameters_their_metrics_were_measured_with(tmp_path):
    """snapshot_at_transitions keeps each run's parameters at the fit's t_train: with an evaluation at
    every step, those parameters reproduce the stored val_loss of that step (those after its update
    would not)."""
    args = ["p=23", "d_model=32", "n_heads=2", "d_mlp=64", "frac=0.8", "lr=3e-3", "wd=1", "seeds=2",
            "eval_every=1", "chunk_steps=100", "dtype=float64", "steps=200", "snapshot_at_transitions=true"]
    sweep = build_sweep(None, args)
    run_sweep(sweep, tmp_path / "r", quiet=True)
    r = grokjax.load(tmp_path / "r")
    fits = grokjax.fit(r.path)
    assert fits.t_train.notna().all()
    for row in fits.itertuples():
        t = int(row.t_train)
        assert r.kept_steps(row.run_id) == [t, 200]
        stored = r.metrics[(r.metrics.run_id == row.run_id) & (r.metrics.step == t)].iloc[0]
        acc, loss = _val_acc(sweep, row.run_id, r.model(row.run_id, step=t))
        assert acc == pytest.approx(stored.val_acc, abs=1e-12) and loss == pytest.approx(stored.val_loss, rel=1e-9)


def test_models_transformerlens_cannot_express_are_refused_in_one_line(mixed, tmp_path, capsys):
    """grokjax export --to transformerlens (tests/test_transformerlens.py) refuses, before writing, a run
    whose model has no HookedTransformer equivalent, naming the option; and bad --runs/--step values."""
    _, r = mixed
    path = str(r.path)
    with pytest.raises(UserError, match="run 0: block=postnorm has no TransformerLens"):
        r.hooked_transformer(0)
    with pytest.raises(UserError, match="run 2: arch=mlp has no TransformerLens"):
        r.hooked_transformer(2)
    assert main(["export", path, "--to", "transformerlens", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "run 0: block=postnorm has no TransformerLens" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "a").exists()  # refused before anything was written
    for args, message in ((["--runs", "9"], "run_id=9: not a run"), (["--step", "x"], "--step x: expected"), (["--runs", "a"], "--runs a: expected"),
                          (["--runs", ","], "--runs: no run_id given")):
        assert main(["export", path, "--to", "transformerlens", str(tmp_path / "b"), *args]) == 2
        assert message in capsys.readouterr().err
    with pytest.raises(UserError, match="--runs and --step choose models for --to transformerlens"):
        export(path, "tensorboard", tmp_path / "c", runs=[0])

"""Hardening: float32 runs independent of the 64-bit flag, float64 end to end, divergence told truthfully,
damaged results directories, resource limits, and tests aimed at specific planted bugs."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from conftest import TINY, merged, run_cli, snapshot

import grokjax
from grokjax.analysis.fit import fit_run
from grokjax.cli import main
from grokjax.config.schedule import METRIC_COLUMNS
from grokjax.config.structure import ModelConfig
from grokjax.engine.data import hparams_for
from grokjax.engine.memory import choose_models_per_batch
from grokjax.engine.program import Program
from grokjax.engine.single import engine_for
from grokjax.errors import UserError
from grokjax.grid.expand import build_sweep
from grokjax.models.transformer import Transformer
from grokjax.run.pool import train_alone
from grokjax.run.sweep import Interrupted, run_sweep


def _groups(args):
    return build_sweep(None, merged(args)).groups()


def _one_group(args):
    (group, runs), = _groups(args)
    return group, runs


# --------------------------------------------------------------------------------------------------
# Numerics that must not depend on the process or the program shape.


@pytest.mark.slow
def test_float32_run_is_the_same_whatever_the_64bit_flag(tmp_path):
    """A float64 group turns JAX's 64-bit mode on for the whole process; the float32 group beside it must
    still draw the same minibatches and train bitwise as it does alone (both are 1-model programs). Fresh
    processes: the test session itself runs with 64-bit mode on."""
    base = merged(TINY, ["batch_size=4", "steps=40"])
    mixed, alone = tmp_path / "mixed", tmp_path / "alone"
    p1 = run_cli(["sweep", *base, "dtype=[float32,float64]", "--out", str(mixed), "--quiet", "--no-plot"])
    p2 = run_cli(["sweep", *base, "dtype=float32", "--out", str(alone), "--quiet", "--no-plot"])
    assert p1.returncode == 0 and p2.returncode == 0, p1.stderr + p2.stderr
    r = grokjax.load(mixed)
    rid = int(r.runs.query("dtype == 'float32'")["run_id"].iloc[0])
    a = r.metrics[r.metrics.run_id == rid].drop(columns="run_id").reset_index(drop=True)
    b = grokjax.load(alone).metrics.drop(columns="run_id").reset_index(drop=True)
    pd.testing.assert_frame_equal(a.astype("float64"), b.astype("float64"), check_exact=True)


@pytest.mark.slow
def test_float64_means_float64_end_to_end():
    group, runs = _one_group(TINY + ["dtype=float64", "lr=3e-3", "wd=0.1", "init_scale=0.7"])
    eng = engine_for(group, runs)
    prog = Program.get(eng, 1)
    state, _ = prog.init(prog.put(hparams_for(runs, eng.table.n_pairs)))
    hyper = [s.hyperparams for s in jax.tree.leaves(state.opt_state, is_leaf=lambda x: hasattr(x, "hyperparams"))
             if hasattr(s, "hyperparams")][0]
    assert hyper["learning_rate"].dtype == jnp.float64 and float(hyper["learning_rate"][0]) == 3e-3
    assert float(hyper["weight_decay"][0]) == 0.1
    m = train_alone(group, runs)
    assert all(m[k].dtype == np.float64 for k in METRIC_COLUMNS)


def test_init_scale_multiplies_every_initial_weight_exactly():
    base = TINY + ["dtype=float64", "steps=1"]
    g1, r1 = _one_group(base + ["init_scale=1"])
    g2, r2 = _one_group(base + ["init_scale=2.5"])
    assert g1 == g2
    eng = engine_for(g1, r1)
    p1 = eng.init_one(jax.tree.map(lambda x: jnp.asarray(x[0]), hparams_for(r1, eng.table.n_pairs)))[0].params
    p2 = eng.init_one(jax.tree.map(lambda x: jnp.asarray(x[0]), hparams_for(r2, eng.table.n_pairs)))[0].params
    for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p2)):
        np.testing.assert_array_equal(np.asarray(a) * 2.5, b)


def test_every_seed_gets_its_own_split_init_and_batches():
    group, runs = _one_group(TINY + ["seeds=2", "batch_size=4"])
    eng = engine_for(group, runs)
    hps = hparams_for(runs, eng.table.n_pairs)
    one = [jax.tree.map(lambda x: jnp.asarray(x[i]), hps) for i in range(2)]
    (s0, split0), (s1, split1) = (eng.init_one(h) for h in one)
    assert not np.array_equal(split0.train_idx, split1.train_idx)
    assert not np.array_equal(jax.tree.leaves(s0.params)[0], jax.tree.leaves(s1.params)[0])
    b0, _ = eng.batch_one(split0, one[0], jnp.int32(3))
    b1, _ = eng.batch_one(split0, one[1], jnp.int32(3))  # same split, other seed: other draws
    assert not np.array_equal(b0, b1)


@pytest.mark.slow
def test_grid_mixing_frac_values_equals_each_run_alone():
    # the MLP (the splits and batches are the model's neighbours': any model shows it, this one compiles fast)
    group, runs = _one_group(TINY + ["dtype=float64", "frac=[0.3,0.7]", "seeds=2", "batch_size=3", "arch=mlp"])
    grid = train_alone(group, runs)
    for i in (3,):  # frac 0.7 beside frac 0.3: the group pads its splits to the extremes
        g1, alone_runs = _one_group(TINY + ["dtype=float64", f"frac={runs[i].get('hp.frac')}",
                                            f"seed={runs[i].get('hp.seed')}", "batch_size=3", "arch=mlp"])
        alone = train_alone(g1, alone_runs)
        for k in METRIC_COLUMNS:
            np.testing.assert_allclose(grid[k][:, i], alone[k][:, 0], rtol=1e-10, atol=1e-12, equal_nan=True,
                                       err_msg=k)


def test_evaluation_covers_every_held_out_pair():
    """eval_batch_size smaller than the validation set: the chunked evaluation equals one direct pass."""
    group, runs = _one_group(TINY + ["dtype=float64", "eval_batch_size=7", "frac=0.3"])
    eng = engine_for(group, runs)
    hp = jax.tree.map(lambda x: jnp.asarray(x[0]), hparams_for(runs, eng.table.n_pairs))
    state, split = eng.init_one(hp)
    assert eng.n_val_max > 3 * eng.eval_batch
    inputs, labels = jnp.asarray(eng.table.inputs), jnp.asarray(eng.table.labels)
    loss, acc, _ = eng.evaluate_one(state.params, split, inputs, labels)
    idx = np.asarray(split.val_idx)[np.asarray(split.val_w) > 0]
    direct_loss, direct_acc = eng.loss_one(state.params, inputs[idx], labels[idx], jnp.ones(len(idx), jnp.float64))
    np.testing.assert_allclose(loss, direct_loss, rtol=1e-12)
    np.testing.assert_allclose(acc, direct_acc, rtol=1e-12)


def test_attention_is_causal():
    """Positions before the last must not see later tokens: with 2 layers and no answer-only shortcut, the
    first block's output at positions 0 and 1 is unchanged when token 2 changes, and changes at position 2."""
    cfg = ModelConfig(n_layers=2, d_model=16, n_heads=2, d_mlp=32)
    model = Transformer(cfg, 8, 7, answer_only=False, dtype=jnp.float64)
    params = model.init(jax.random.key(1), jnp.zeros((1, 3), jnp.int32))["params"]

    def block0(tokens):
        _, inter = model.apply({"params": params}, tokens, capture_intermediates=lambda m, _: isinstance(m, nn.Module)
                               and m.name == "block_0", mutable=["intermediates"])
        return np.asarray(inter["intermediates"]["block_0"]["__call__"][0])

    a, b = block0(jnp.array([[1, 2, 3]])), block0(jnp.array([[1, 2, 6]]))
    np.testing.assert_allclose(a[:, :2], b[:, :2], rtol=1e-13, atol=1e-13)
    assert not np.allclose(a[:, 2], b[:, 2])
    c = block0(jnp.array([[4, 2, 3]]))  # an earlier token does reach the later positions
    assert not np.allclose(a[:, 1], c[:, 1])


def test_fit_threshold_is_exactly_the_one_asked_for():
    """Validation accuracy sits at 0.985 (between 0.98 and 0.99) before reaching 1.0: t_val must wait."""
    step = np.arange(3000)
    is_eval = step % 100 == 0
    val = np.where(step >= 2000, 1.0, np.where(step >= 800, 0.985, 0.05))
    rows = pd.DataFrame({"step": step, "train_loss": 0.01, "train_acc": np.where(step >= 300, 0.995, 0.5),
                         "val_loss": np.where(is_eval, 1.0, np.nan), "val_acc": np.where(is_eval, val, np.nan)})
    r = fit_run(rows)
    assert (r["t_train"], r["t_val"], r["t_val_first"]) == (300, 2000, 2000)


# --------------------------------------------------------------------------------------------------
# Divergence.


@pytest.mark.slow
def test_divergence_step_is_the_same_in_the_engine_and_the_fit(tmp_path):
    sweep = build_sweep(None, merged(TINY, ["lr=[0.003,1000000]", "steps=40"]))
    outcome = run_sweep(sweep, tmp_path / "r", quiet=True)
    fits = grokjax.fit(tmp_path / "r").set_index("run_id")
    assert list(outcome.tracker.diverged) == [1]
    assert fits.loc[1, "t_diverged"] == outcome.tracker.diverged[1] and fits.loc[1, "phase"] == "diverged"
    m = grokjax.load(tmp_path / "r").metrics
    dead = m[(m.run_id == 1) & (m.step >= outcome.tracker.diverged[1])]
    assert dead[["train_loss", "train_acc", "val_loss", "val_acc", "param_norm"]].isna().all().all()
    alive = m[(m.run_id == 1) & (m.step < outcome.tracker.diverged[1])]
    assert np.isfinite(alive["train_loss"]).all()


@pytest.mark.slow
def test_a_finite_but_exploding_loss_is_divergence_not_confusion(tmp_path, capsys):
    """A 2-hot MLP with init_scale 3000 starts with logits ~1e10 and a finite loss far above the bound."""
    out = tmp_path / "r"
    assert main(["sweep", *merged(TINY, ["arch=mlp", "n_layers=2", "steps=20", "init_scale=[1,3000]"]), "--out",
                 str(out), "--quiet"]) == 0
    assert "1 of 2 runs diverged" in capsys.readouterr().out
    fits = pd.read_parquet(out / "fits.parquet").set_index("run_id")
    assert fits.loc[1, "phase"] == "diverged" and fits.loc[1, "t_diverged"] == 0
    assert fits.loc[0, "phase"] != "diverged"


# --------------------------------------------------------------------------------------------------
# Damaged results directories: one line, exit 2, nothing else touched; resume repairs what it can.

SMALL = merged(TINY, ["steps=200", "eval_every=20", "chunk_steps=20", "checkpoint_every=40", "wd=[0.1,1]"])


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("done") / "r"
    assert main(["sweep", *SMALL, "--out", str(out), "--quiet", "--no-plot"]) == 0
    return out


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def _truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.mark.parametrize("damage, names", [
    ("runs_missing", "runs.parquet is missing"),
    ("runs_truncated", "runs.parquet is damaged"),
    ("part_truncated", "metrics/g000-b000-s000000060.parquet is damaged"),
    ("sweep_json_garbage", "sweep.json: not a readable grokjax sweep record"),
])
@pytest.mark.parametrize("command", ["fit", "plot"])
@pytest.mark.slow
def test_damaged_directory_gives_one_line_and_touches_nothing(finished, tmp_path, capsys, damage, names, command):
    d = _copy(finished, tmp_path / "d")
    if damage == "runs_missing":
        (d / "runs.parquet").unlink()
    elif damage == "runs_truncated":
        _truncate(d / "runs.parquet")
    elif damage == "part_truncated":
        _truncate(d / "metrics" / "g000-b000-s000000060.parquet")
    else:
        (d / "sweep.json").write_text("{ not json")
    before = snapshot(d)
    assert main([command, str(d)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("grokjax: error: ") and "\n" not in err and names in err
    assert snapshot(d) == before
    with pytest.raises(UserError, match=names.split(" is ")[0].split(":")[0]):
        grokjax.load(d)


def test_fit_without_metrics_writes_no_fits_file(finished, tmp_path, capsys):
    d = _copy(finished, tmp_path / "d")
    for part in (d / "metrics").glob("*.parquet"):
        part.unlink()
    assert main(["fit", str(d)]) == 2
    assert "no metrics" in capsys.readouterr().err and not (d / "fits.parquet").exists()


def test_fit_on_a_full_disk_keeps_the_old_fits_and_leaves_no_temporary(finished, tmp_path, capsys, monkeypatch):
    d = _copy(finished, tmp_path / "d")
    assert main(["fit", str(d)]) == 0
    before = (d / "fits.parquet").read_bytes()

    def full(table, where, *a, **k):  # half a file, then the disk is full
        Path(where).write_bytes(b"PAR1 partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    import pyarrow.parquet

    monkeypatch.setattr(pyarrow.parquet, "write_table", full)
    capsys.readouterr()
    assert main(["fit", str(d)]) == 1
    err = capsys.readouterr().err.strip()
    assert "disk is full" in err and "fits.parquet" in err and "\n" not in err
    assert (d / "fits.parquet").read_bytes() == before
    assert not [p for p in d.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("damage", ["checkpoint", "early_part", "late_part"])
@pytest.mark.slow
def test_resume_repairs_damage_and_equals_the_undamaged_sweep(finished, tmp_path, damage):
    """A complete sweep with a truncated checkpoint or metric part: --resume says which file is bad,
    recomputes what it must from the last good state, and ends with the same metrics (same program, so
    bitwise). The early part lies before the checkpoint: the group trains again from the start."""
    d = _copy(finished, tmp_path / "d")
    reference = grokjax.load(finished).metrics
    target = {"checkpoint": d / "checkpoints" / "g000-b000.npz",
              "early_part": d / "metrics" / "g000-b000-s000000020.parquet",
              "late_part": d / "metrics" / "g000-b000-s000000180.parquet"}[damage]
    _truncate(target, 0.6)
    proc = run_cli(["sweep", *SMALL, "--out", str(d), "--resume", "--quiet", "--no-plot"])
    assert proc.returncode == 0, proc.stderr
    if damage != "late_part":  # a part after the checkpoint is simply recomputed
        assert target.name in proc.stderr and "again from the start" in proc.stderr
    pd.testing.assert_frame_equal(grokjax.load(d).metrics, reference, check_exact=True)


# --------------------------------------------------------------------------------------------------
# Resource limits, refusals and what the user is told.


@pytest.mark.slow
def test_forced_models_per_batch_that_cannot_fit_is_refused():
    group, runs = _one_group(TINY + ["wd=[0.1,1]", "seeds=2"])
    eng = engine_for(group, runs)
    one, two = Program.get(eng, 1).bytes, Program.get(eng, 2).bytes
    budget = (one + two) // 2
    with pytest.raises(UserError, match=r"models_per_batch=4: .* at most 1 fit"):
        choose_models_per_batch(eng, 4, requested=4, budget=budget)
    assert choose_models_per_batch(eng, 4, requested=1, budget=budget)[0] == 1


@contextlib.contextmanager
def _held_lock(out):
    """DIR's lock held as a running sweep holds it."""
    import fcntl

    fd = os.open(out / ".lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        yield
    finally:
        os.close(fd)


def test_a_directory_another_sweep_is_starting_in_is_refused_as_held(tmp_path, capsys, tiny):
    """The race: a sweep has created DIR and its lock but not yet sweep.json. The loser must be told that
    another sweep holds DIR (not that DIR is foreign)."""
    out = tmp_path / "r"
    out.mkdir()
    with _held_lock(out):
        assert main(["sweep", *tiny, "--out", str(out), "--quiet"]) == 2
    assert "another sweep holds this directory" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == [".lock"]


def test_rerunning_into_a_directory_being_written_says_so_not_resume(finished, tmp_path, capsys):
    """A sweep that holds DIR's lock is writing there: a second start is told that, not to add --resume."""
    out = _copy(finished, tmp_path / "copy")
    with _held_lock(out):
        assert main(["sweep", *SMALL, "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "is writing there right now" in err and "--resume" not in err


def test_a_completed_sweep_leaves_no_lock(finished):
    assert not (finished / ".lock").exists()


def test_interrupted_before_any_checkpoint_says_so(tmp_path):
    assert "before any checkpoint" in str(Interrupted(signal.SIGTERM, tmp_path, None))
    assert "checkpoint written (group 2, after 40 steps of its program)" in str(Interrupted(
        signal.SIGTERM, tmp_path, (1, 40)))

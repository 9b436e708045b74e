"""Continuous batching: a group's runs share one program of slots fed by a queue. A run's numbers do not
depend on its slot or on the chunk it was born at (float64: a program of another shape rounds alike to
1e-12), its files are those of the run trained alone, and the dry run names the slots."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from conftest import assert_same_params, merged

import grokjax
from grokjax.cli import main
from grokjax.grid.expand import build_sweep
from grokjax.run.sweep import run_sweep

# Minibatches (the batch stream follows each run's own step), warmup, snapshots every 40 steps and at the
# transitions, stop=resolved; lr=1e3 diverges at once, so its runs stop after their first chunk and free
# their slots for the queue's next runs.
POOLED = ["arch=mlp", "p=11", "d_mlp=32", "frac=0.6", "batch_size=16", "eval_every=5", "chunk_steps=20",
          "steps=100", "dtype=float64", "stop=resolved", "snapshot_every=40", "snapshot_at_transitions=true",
          "warmup_steps=30", "lr=[1e3,1e-2]", "wd=[0.3,1]", "seeds=2"]


@pytest.fixture(scope="module")
def pooled(tmp_path_factory):
    out = tmp_path_factory.mktemp("pool") / "r"
    outcome = run_sweep(build_sweep(None, merged(POOLED, ["models_per_batch=3"])), out, quiet=True)
    return grokjax.load(outcome.path)


def _births(r) -> dict[int, int]:
    """Each run's birth: the program clock of the metrics part that holds its step 0."""
    born = {}
    for part in sorted((r.path / "metrics").glob("*.parquet")):
        clock = int(re.search(r"-s(\d+)\.parquet", part.name).group(1))
        rows = pd.read_parquet(part, columns=["run_id", "step"])
        for rid in rows.run_id[rows.step == 0].tolist():
            born.setdefault(rid, clock)
    return born


def test_a_run_born_into_a_freed_slot_trains_as_it_would_alone(pooled, tmp_path):
    """8 runs in 3 slots: runs born at later chunks, into slots whose runs had diverged and stopped, give the
    metrics, stops and kept parameters of each run trained alone in a one-slot program."""
    r = pooled
    born = _births(r)
    assert sorted(born) == list(range(8)) and len(set(born.values())) >= 3, born  # births at several chunks
    assert set(r.stops.reason) == {"diverged"} and len(r.stops) == 4
    for row in r.runs.itertuples():
        alone = grokjax.load(run_sweep(build_sweep(None, merged(POOLED, [f"lr={row.lr}", f"wd={row.wd}",
                                                                         f"seeds=[{row.seed}]"])),
                                       tmp_path / f"alone{row.run_id}", quiet=True).path)
        got = r.metrics[r.metrics.run_id == row.run_id].drop(columns="run_id").reset_index(drop=True)
        want = alone.metrics.drop(columns="run_id").reset_index(drop=True)
        pd.testing.assert_frame_equal(got, want, rtol=1e-12, atol=1e-14, obj=f"run {row.run_id} (born {born[row.run_id]})")
        assert r.stops[r.stops.run_id == row.run_id].stop_step.tolist() == alone.stops.stop_step.tolist()
        kept = r.kept_steps(row.run_id)
        assert kept == alone.kept_steps(0) and kept
        for step in kept:
            for x, y in zip(*(_leaves(res.params(rid, step)) for res, rid in ((r, row.run_id), (alone, 0)))):
                np.testing.assert_allclose(x, y, rtol=1e-12, atol=1e-14)


def _leaves(tree):
    import jax

    return jax.tree.leaves(tree)


def test_a_resumed_pool_equals_an_uninterrupted_one(pooled, tmp_path, monkeypatch):
    """Interrupted after a refill (its checkpoint holds freed slots and the queue position), then resumed:
    bitwise the same metrics, stops and kept parameters."""
    from grokjax.run import pool as pool_module

    real, calls = pool_module.SlotPool._fill, []

    def fill_then_stop(self):
        real(self)
        calls.append(self.clock)
        if self.clock == 40:  # the second refill: later births are the resumed process's
            raise KeyboardInterrupt

    out = tmp_path / "r"
    args = merged(POOLED, ["models_per_batch=3", "checkpoint_every=20"])
    monkeypatch.setattr(pool_module.SlotPool, "_fill", fill_then_stop)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(build_sweep(None, args), out, quiet=True)
    monkeypatch.setattr(pool_module.SlotPool, "_fill", real)
    assert not grokjax.load(out).complete
    run_sweep(build_sweep(None, args), out, resume=True, quiet=True)
    got = grokjax.load(out)
    pd.testing.assert_frame_equal(got.metrics, pooled.metrics, check_exact=True)
    pd.testing.assert_frame_equal(got.stops, pooled.stops)
    assert_same_params(got, pooled)


def test_the_dry_run_names_the_slots_and_the_programs(capsys):
    assert main(["sweep", *merged(POOLED, ["models_per_batch=3"]), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "3 slots" in out and "1 program" in out, out

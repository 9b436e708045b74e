"""--shard I/N: slices of one grid trained into one shared results directory (a job array)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
from conftest import REPO, TINY, assert_same_params, merged, run_cli, snapshot

import grokjax
from grokjax.cli import main
from grokjax.errors import UserError
from grokjax.grid.shard import Shard, parse_shard

# 6 runs; float64: a shard's program holds 2 models where the unsharded one holds 6, which round
# differently in float32.
GRID = merged(TINY, ["wd=[0.1,0.3,1]", "seeds=2", "dtype=float64"])


def _launch(out, index: int, n: int, args=GRID, extra=()):
    env = dict(os.environ) | {"PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "grokjax", "sweep", *args, "--out", str(out), "--shard",
                             f"{index}/{n}", "--quiet", *extra], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def unsharded(tmp_path_factory):
    out = tmp_path_factory.mktemp("one") / "r"
    proc = run_cli(["sweep", *GRID, "--out", str(out), "--no-plot", "--quiet"])
    assert proc.returncode == 0, proc.stderr
    return grokjax.load(out)


def test_shards_partition_the_grid_by_run_id():
    shards = [Shard(i, 3) for i in range(3)]
    owners = [[s.index for s in shards if s.has(r)] for r in range(10)]
    assert all(len(o) == 1 for o in owners) and owners[4] == [1]
    assert parse_shard("2/3") == Shard(2, 3) and parse_shard(" 0 / 1 ") == Shard(0, 1)


@pytest.mark.parametrize("bad", ["3/2", "0/0", "2/2", "-1/2", "1", "a/b", "1/2/3"])
def test_bad_shards_are_one_line_errors(tmp_path, capsys, bad):
    with pytest.raises(UserError, match="expected I/N"):
        parse_shard(bad)
    assert main(["sweep", *TINY, "--out", str(tmp_path / "r"), f"--shard={bad}", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"--shard {bad}" in err, err
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_three_concurrent_shards_equal_one_sweep(tmp_path, unsharded):
    out = tmp_path / "shared"
    procs = [_launch(out, i, 3) for i in range(3)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    r = grokjax.load(out)
    assert r.complete and r.shards == ([0, 1, 2], 3)
    pd.testing.assert_frame_equal(r.runs, unsharded.runs)
    pd.testing.assert_frame_equal(r.metrics, unsharded.metrics, rtol=1e-10, atol=1e-12)
    assert_same_params(r, unsharded, rtol=1e-10)  # each shard kept its runs' final parameters
    assert sorted(p.name.split("-")[0] for p in (out / "metrics").glob("*.parquet")) == sorted(
        f"shard{i:05d}of00003" for i in range(3) for _ in range(3))  # 3 chunks each
    assert not list(out.glob(".lock*"))  # each shard removed its own lock


def test_a_shard_of_another_sweep_or_count_is_refused(tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["sweep", *GRID, "--out", str(out), "--shard", "0/3", "--quiet"]) == 0
    capsys.readouterr()
    before = snapshot(out)
    other = merged(GRID, ["wd=[0.1,0.3]"])
    assert main(["sweep", *other, "--out", str(out), "--shard", "1/3", "--quiet"]) == 2
    assert "holds a different sweep" in capsys.readouterr().err
    assert main(["sweep", *GRID, "--out", str(out), "--shard", "1/2", "--quiet"]) == 2
    assert "split into 3 shards" in capsys.readouterr().err
    assert main(["sweep", *GRID, "--out", str(out), "--quiet"]) == 2
    assert "split into 3 shards, no --shard" in capsys.readouterr().err
    assert main(["sweep", *GRID, "--out", str(out), "--shard", "0/3", "--quiet"]) == 2
    assert "already holds shard 0/3" in capsys.readouterr().err
    assert snapshot(out) == before


@pytest.mark.slow
def test_fit_reports_missing_shards_and_a_killed_shard_resumes(tmp_path, unsharded, capsys):
    out = tmp_path / "r"
    long = merged(GRID, ["steps=1000", "chunk_steps=50", "checkpoint_every=100"])
    for i in (0, 2):
        assert main(["sweep", *long, "--out", str(out), "--shard", f"{i}/3", "--quiet", "--no-plot"]) == 0
    capsys.readouterr()
    assert grokjax.load(out).shards == ([0, 2], 3) and not grokjax.load(out).complete
    assert main(["fit", str(out)]) == 0
    assert "2 of 3 shards complete (missing: 1)" in capsys.readouterr().out
    proc = _launch(out, 1, 3, long)
    deadline = time.time() + 240
    while len(list((out / "checkpoints").glob("shard00001of00003-*.npz"))) == 0:
        assert proc.poll() is None and time.time() < deadline, "the shard ended before it could be killed"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not grokjax.load(out).complete
    resumed = run_cli(["sweep", *long, "--out", str(out), "--shard", "1/3", "--resume", "--no-plot"])
    assert resumed.returncode == 0, resumed.stderr
    assert "3 of 3 shards complete" in resumed.stdout
    r = grokjax.load(out)
    assert r.complete and not r.metrics.duplicated(["run_id", "step"]).any() and len(r.metrics) == 6 * 1001
    alone = tmp_path / "alone"
    assert main(["sweep", *long, "--out", str(alone), "--shard", "1/3", "--quiet", "--no-plot"]) == 0
    ref = grokjax.load(alone).metrics
    got = r.metrics[r.metrics.run_id.isin(ref.run_id.unique())].reset_index(drop=True)
    pd.testing.assert_frame_equal(got, ref, check_exact=True)  # the same program: bitwise


def test_shards_opening_one_fresh_directory_at_the_same_instant(tmp_path):
    """8 shards open a directory that does not exist yet at the same instant, 25 times over: every open
    succeeds, exactly one sweep.json and runs.parquet result (readable, this sweep's), and no temporary or
    probe file is left (once a shared temporary name let one shard's rename take another's file)."""
    import threading

    import pyarrow.parquet as pq

    from grokjax.grid.expand import build_sweep
    from grokjax.store.directory import ResultsDir
    from grokjax.store.files import read_json

    sweep = build_sweep(None, GRID)
    n = 8
    for round_ in range(25):
        out = tmp_path / f"r{round_}"
        barrier, errors, dirs = threading.Barrier(n), [], []

        def open_shard(i: int) -> None:
            barrier.wait()
            try:
                dirs.append(ResultsDir.open(out, sweep, False, ["test"], 0, Shard(i, n)))
            except Exception as e:  # noqa: BLE001 - collected and reported below
                errors.append(f"shard {i}: {e}")

        threads = [threading.Thread(target=open_shard, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        assert read_json(out / "sweep.json")["fingerprint"] == sweep.fingerprint()
        assert pq.read_table(out / "runs.parquet").num_rows == sweep.n_runs()
        assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp") or "probe" in p.name]
        for d in dirs:
            d.close(remove_lock=True)


def test_a_refused_shard_leaves_the_other_shards_files(tmp_path, capsys):
    """A shard refused at open (here: another shard count) removes nothing it did not write itself."""
    out = tmp_path / "r"
    assert main(["sweep", *GRID, "--out", str(out), "--shard", "0/3", "--quiet", "--no-plot"]) == 0
    capsys.readouterr()
    before = snapshot(out)
    assert main(["sweep", *GRID, "--out", str(out), "--shard", "1/2", "--quiet", "--no-plot"]) == 2
    assert snapshot(out) == before

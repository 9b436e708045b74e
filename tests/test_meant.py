"""The grid the user meant, and sturdy edges (issue: the grid the user meant): arms that build what was
typed, duplicates and no-ops refused, the MLP on 4-token tables, a million-run dry run, damaged kept
parameters, the process's memory limits, an out-of-memory in one line, the final parameters' own row, and
the smaller refusals. Fast: one tiny sweep, the rest without training."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from conftest import REPO, merged, snapshot

import grokjax
from grokjax.cli import main
from grokjax.errors import UserError
from grokjax.grid.expand import Sweep, build_sweep

TINY = ["p=11", "d_model=8", "n_heads=2", "d_mlp=16", "frac=0.5", "lr=1e-2", "steps=40", "eval_every=10",
        "chunk_steps=10", "snapshot_every=20", "dtype=float64", "seeds=2", "wd=1"]


def _refused(capsys, argv: list[str], named: str) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("grokjax: error: ") and "\n" not in err and named in err, err
    return err


# -- the grid the user meant -------------------------------------------------------------------------

@pytest.mark.parametrize("where", ["cli", "toml", "python"])
def test_seeds_in_an_arm_is_refused_not_dropped(tmp_path, capsys, where):
    """--arm 'seeds=3' used to give seed 0 alone; now it is refused in one line, wherever the arm comes from."""
    if where == "cli":
        _refused(capsys, ["sweep", "steps=10", "--arm", "seeds=3", "--arm", "lr=0.01", "--dry-run"], "seeds=3")
    elif where == "toml":
        path = tmp_path / "s.toml"
        path.write_text('steps = 10\n[[arms]]\nseeds = 3\n[[arms]]\nlr = 0.01\n')
        _refused(capsys, ["sweep", str(path), "--dry-run"], "3 seeds")
    else:
        with pytest.raises(UserError, match="3 seeds; an arm sets one value per key"):
            build_sweep(None, ["steps=10"], arms=[{"seeds": 3}, {"lr": 0.01}])
    assert build_sweep(None, ["steps=10"], arms=["seeds=1 lr=0.01", "seed=0 lr=0.02"]).n_runs() == 2 * 4  # one: fine


def test_an_arm_that_leaves_a_swept_key_unset_is_refused(capsys):
    """The default sweep sweeps wd: an arm setting wd and one that does not would have put wd=0 (the file's
    first value, which nobody typed) into the second. Arms that all set it, or none, are fine."""
    _refused(capsys, ["sweep", "--arm", "wd=0.5", "--arm", "lr=0.003", "--dry-run"], "arm 2 (lr=0.003) leaves wd")
    both = build_sweep(None, [], arms=["wd=0.5", "wd=0.7 lr=0.003"])
    assert sorted({r.get("hp.wd") for _, rs in both.groups() for r in rs}) == [0.5, 0.7]
    neither = build_sweep(None, [], arms=["lr=0.01", "lr=0.003"])  # every arm crosses the file's wd values
    assert neither.n_runs() == 2 * 4 * 3 and {r.get("hp.wd") for _, rs in neither.groups() for r in rs} == {
        0.0, 0.1, 0.3, 1.0}


@pytest.mark.parametrize("args, arms, named", [
    ([], ["wd=0.5", "wd=0.5"], "arms 1 and 2 resolve to the same settings"),
    (["lr=0.01"], ["wd=0.5 lr=0.01", "wd=0.5"], "arms 1 and 2 resolve to the same settings"),
    (["data_seed=[-1,0]", "seed=0"], None, "data_seed=-1 and data_seed=0 would train the same run"),
    (["data_seed=[-1,2]", "seeds=3"], None, "for seed=2"),
    (["batching=epoch"], None, "no effect with batch_size=full"),
    (["arch=mlp", "embed_std=0.5"], None, "embed_std=0.5: has no effect with arch=mlp mlp_input=onehot"),
    (["dataset=digits", "arch=mlp", "op=mul"], None, "op=mul: has no effect with dataset=digits"),
    (["dataset=digits", "arch=mlp", "p=97"], None, "p=97: has no effect with dataset=digits"),
    (["dataset=digits", "arch=mlp", "nonzero_y=true"], None, "nonzero_y=true: has no effect"),
])
def test_duplicates_and_no_ops_are_refused(capsys, args, arms, named):
    argv = ["sweep", "steps=10", *args, *[x for a in arms or [] for x in ("--arm", a)], "--dry-run"]
    _refused(capsys, argv, named)


def test_what_acts_is_accepted():
    assert build_sweep(None, ["arch=mlp", "mlp_input=embed", "embed_std=0.5"]).n_runs() == 12
    assert build_sweep(None, ["batching=epoch", "batch_size=64"]).n_runs() == 12
    assert build_sweep(None, ["data_seed=[-1,7]", "seeds=3"]).n_runs() == 4 * 3 * 2


def test_the_mlp_reads_a_and_b_from_either_token_layout():
    """With 4 tokens (a op b =) the MLP reads columns 0 and 2, not the op token: the same parameters give
    the same logits as on a b =. power2022 and grokfast2024 with arch=mlp thus train a real 2-hot MLP."""
    from grokjax.config.structure import ModelConfig, TaskConfig
    from grokjax.models.mlp import MLP
    from grokjax.tasks.tables import make_table

    three, four = (make_table(TaskConfig(op="mul", p=7, tokens=t)) for t in (3, 4))
    for mlp_input in ("onehot", "embed"):
        model = MLP(ModelConfig(arch="mlp", n_layers=2, d_mlp=16, d_model=4, mlp_input=mlp_input), 0, 9)
        params = model.init(jax.random.key(0), jnp.asarray(four.inputs[:2]))["params"]
        np.testing.assert_array_equal(model.apply({"params": params}, jnp.asarray(four.inputs)),
                                      model.apply({"params": params}, jnp.asarray(three.inputs)))
    for preset in ("power2022", "grokfast2024"):
        (group, _), *_ = build_sweep(preset, ["arch=mlp"]).groups()
        assert group.model.arch == "mlp" and group.task.tokens == 4


def test_a_dry_run_counts_groups_without_enumerating_the_runs(monkeypatch):
    """--dry-run of the largest grid allowed (1,000,000 runs) used to build every run and ran out of memory."""
    from grokjax.grid.plan import describe_plan

    mixed = build_sweep(None, ["wd=[0.1,1]", "seeds=3", "optimizer=[adamw,adam]", "frac=[0.3,0.5]"])
    want = [(g, len(rs), max(r.get("hp.frac") for r in rs)) for g, rs in mixed.groups()]
    assert mixed.group_sizes() == want
    monkeypatch.setattr(Sweep, "groups", lambda self: pytest.fail("enumerated the runs"))
    text = describe_plan(build_sweep(None, ["wd=logspace(-3,1,1000)", "seeds=1000"]))
    assert "1,000,000 runs in 1 compiled group(s)" in text and "group 1: 1,000,000 runs" in text


def test_the_disk_estimate_counts_a_row_per_logged_step():
    from grokjax.grid.plan import METRIC_ROW_BYTES, disk_bytes, n_params

    for log_every in (1, 7):
        sweep = build_sweep(None, ["steps=1000", "eval_every=100", f"log_every={log_every}", "seeds=2",
                                   "wd=1", "snapshot_every=250"])
        (group, runs), = sweep.groups()
        rows = -(-1000 // log_every)
        assert disk_bytes(sweep) == 2 * (METRIC_ROW_BYTES * rows + (1 + 4) * 4 * n_params(group))


# -- a tiny real sweep ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("meant") / "r"
    assert main(["sweep", *TINY, "--out", str(out), "--quiet", "--no-plot"]) == 0
    return out


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_the_final_parameters_have_their_own_row(tiny_dir):
    """Results.model(run) opens the parameters after `steps` updates; the row of step `steps` measured them:
    its val_acc and val_loss are those of that network on the run's validation split."""
    from test_params import _val_acc

    r = grokjax.load(tiny_dir)
    sweep = build_sweep(None, TINY)
    last = r.metrics[r.metrics.step == 40].set_index("run_id")
    assert len(last) == 2 and last.val_acc.notna().all() and last.train_loss.notna().all()
    assert r.metrics.step.max() == 40 and r.kept_steps(0) == [20, 40]
    for run_id in (0, 1):
        acc, loss = _val_acc(sweep, run_id, r.model(run_id))
        assert acc == pytest.approx(float(last.val_acc[run_id]), abs=1e-12)
        assert loss == pytest.approx(float(last.val_loss[run_id]), rel=1e-9)
    fits = grokjax.load(tiny_dir)
    from grokjax.analysis.fit import fit_results

    assert (fit_results(fits)["budget"] == 40).all()  # the updates observed, not steps + 1


def test_params_by_default_are_the_final_ones_and_ids_may_be_numpy(tiny_dir):
    r = grokjax.load(tiny_dir)
    final, first = r.params(np.int64(1)), r.params(1, np.int64(20))
    for a, b in zip(jax.tree.leaves(final), jax.tree.leaves(r.params(1, 40))):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(final), jax.tree.leaves(first)))
    with pytest.raises(UserError, match="run_id=True"):
        r.params(True)
    assert list(r.frame("wd").columns[-1:]) == ["wd"]  # one column, not the letters w and d


def test_model_operands_are_checked(tiny_dir):
    f = grokjax.load(tiny_dir).model(0)
    assert f([], []).shape == (0, 11)
    np.testing.assert_array_equal(f([1.0, 2.0], [3.0, 4.0]), f([1, 2], [3, 4]))
    for a, b in (([1.5], [2]), ([1], [11]), ([1, 2], [3])):
        with pytest.raises(UserError, match="operands|equal-length"):
            f(a, b)


def test_a_zero_byte_params_file_is_one_line_and_resume_repairs_it(tiny_dir, tmp_path, capsys):
    d = _copy(tiny_dir, tmp_path / "d")
    target = d / "params" / "g000-b000-s000000020.npz"
    want = grokjax.load(tiny_dir).params(0, 20)
    target.write_bytes(b"")
    with pytest.raises(UserError, match="g000-b000-s000000020.npz: not a readable parameters file"):
        grokjax.load(d).params(0)
    _refused(capsys, ["export", str(d), "--to", "transformerlens", str(tmp_path / "tl")], "not a readable")
    assert not (tmp_path / "tl").exists()
    assert main(["sweep", *TINY, "--out", str(d), "--resume", "--quiet", "--no-plot"]) == 0
    assert "g000-b000-s000000020.npz is damaged" in capsys.readouterr().err
    for a, b in zip(jax.tree.leaves(grokjax.load(d).params(0, 20)), jax.tree.leaves(want)):
        np.testing.assert_array_equal(a, b)


def test_export_and_plot_refuse_options_that_do_nothing(tiny_dir, tmp_path, capsys):
    before = snapshot(tiny_dir)
    _refused(capsys, ["export", str(tiny_dir), "--to", "transformerlens", str(tmp_path / "a"), "--project", "x"],
             "--project x: names a W&B project")
    _refused(capsys, ["export", str(tiny_dir), "--to", "transformerlens", str(tmp_path / "b"), "--runs", "0,0"],
             "run 0 is given twice")
    assert main(["export", str(tiny_dir), "--to", "transformerlens", str(tmp_path / "b"), "--runs", "0"]) == 0
    _refused(capsys, ["plot", str(tiny_dir), str(tiny_dir), "--curves"], "--curves: draws one results directory")
    _refused(capsys, ["plot", str(tiny_dir), "--output", str(tmp_path / "x.png")], "--output")
    _refused(capsys, ["plot", str(tiny_dir), str(tiny_dir), "--output", "/dev/full"], "neither a directory")
    assert snapshot(tiny_dir) == before and not (tmp_path / "a").exists()


def test_fit_on_a_disk_that_fills_midway_writes_all_or_nothing(tiny_dir, tmp_path, capsys, monkeypatch):
    import pyarrow.parquet as pq

    d = _copy(tiny_dir, tmp_path / "d")
    written, real = [], pq.write_table

    def fills_at_the_third(table, where, *a, **k):
        written.append(where)
        if len(written) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(table, where, *a, **k)

    monkeypatch.setattr(pq, "write_table", fills_at_the_third)
    assert main(["fit", str(d)]) == 1
    assert "disk is full" in capsys.readouterr().err
    assert not [p for p in d.iterdir() if p.name.endswith((".parquet", ".tmp")) and p.name != "runs.parquet"]


def test_an_out_of_memory_while_training_is_one_line_and_resumable(tiny_dir, tmp_path, capsys, monkeypatch):
    from grokjax.engine.program import Program

    out, real, calls = tmp_path / "oom", Program.train_chunk, []

    def fails_at_the_fourth(self, *a, **k):
        calls.append(1)
        if len(calls) == 4:  # after the checkpoint at step 20 was written
            raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 123 bytes.")
        return real(self, *a, **k)

    monkeypatch.setattr(Program, "train_chunk", fails_at_the_fourth)
    err = _refused(capsys, ["sweep", *TINY, "checkpoint_every=20", "--out", str(out), "--quiet", "--no-plot"],
                   "out of memory while training: RESOURCE_EXHAUSTED")
    assert f"--out {out} --resume" in err
    monkeypatch.setattr(Program, "train_chunk", real)
    assert main(["sweep", *TINY, "checkpoint_every=20", "--out", str(out), "--resume", "--quiet", "--no-plot"]) == 0
    pd.testing.assert_frame_equal(grokjax.load(out).metrics, grokjax.load(tiny_dir).metrics, check_exact=True)


# -- limits and signals ----------------------------------------------------------------------------

def test_the_memory_budget_honours_rlimit_as_and_the_cgroup(tmp_path):
    from grokjax.engine import memory

    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "status").write_text("VmSize:\t  1048576 kB\n")
    (proc / "cgroup").write_text("0::/job/step\n")
    root = tmp_path / "cg"
    (root / "job" / "step").mkdir(parents=True)
    (root / "job" / "memory.max").write_text(f"{3 << 30}\n")  # the job's limit (SLURM --mem=3G), above the step
    (root / "job" / "memory.current").write_text(f"{1 << 30}\n")
    (root / "job" / "step" / "memory.max").write_text("max\n")
    (root / "job" / "step" / "memory.current").write_text("0\n")
    assert memory.host_memory_free(root, proc) == min(2 << 30, memory.host_memory_free(tmp_path / "none", proc))
    (proc / "cgroup").write_text("4:memory:/slurm/job1\n")  # cgroup v1
    (root / "memory" / "slurm" / "job1").mkdir(parents=True)
    (root / "memory" / "slurm" / "job1" / "memory.limit_in_bytes").write_text(f"{5 << 30}\n")
    (root / "memory" / "slurm" / "job1" / "memory.usage_in_bytes").write_text(f"{4 << 30}\n")
    assert memory.host_memory_free(root, proc) == 1 << 30
    code = ("import resource; resource.setrlimit(resource.RLIMIT_AS, (6 << 30, resource.RLIM_INFINITY)); "
            "from grokjax.engine.memory import host_memory_free; print(host_memory_free())")
    free = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                              env=dict(os.environ, PYTHONPATH=str(REPO))).stdout)
    assert 0 < free < 6 << 30


def test_a_signal_while_the_command_is_ending_is_ignored(monkeypatch, capsys):
    """A second SIGINT used to kill the process by the signal while it printed the first one's message."""
    from grokjax import cli
    from grokjax.errors import Interrupted

    seen = []
    monkeypatch.setattr(cli, "_sweep", lambda args, argv: (_ for _ in ()).throw(Interrupted(2, "r", None)))
    monkeypatch.setattr(sys, "argv", ["grokjax", "sweep"])
    monkeypatch.setattr(cli.os, "_exit", lambda code: seen.append(("exit", code)) or code)  # not this worker
    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    real_print = print
    monkeypatch.setattr("builtins.print", lambda *a, **k: (seen.append(signal.getsignal(signal.SIGINT)),
                                                            real_print(*a, **k)))
    try:
        cli.main()
        assert seen == [signal.SIG_IGN, ("exit", 130)]  # the program: signals ignored, then os._exit(130)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    assert cli.main(["sweep"]) == 130 and seen[-1] == signal.default_int_handler  # from Python: handlers kept


@pytest.mark.slow
@pytest.mark.parametrize("wait", [0.5, 6.0])
def test_two_sigints_exit_130_whether_compiling_or_training(tmp_path, wait):
    """Two SIGINTs 20 ms apart, while the program compiles (0.5 s after its first line) or trains: exit
    status 130 and a one-line message. Interrupted inside an XLA compilation, the interpreter's shutdown
    used to crash (status -11); a second SIGINT used to kill the process by the signal."""
    args = [sys.executable, "-m", "grokjax", "sweep", *merged(TINY, ["steps=200000", "snapshot_every=0"]), "--out",
            str(tmp_path / "r")]
    proc = subprocess.Popen(args, env=dict(os.environ, PYTHONPATH=str(REPO)), stderr=subprocess.PIPE, text=True)
    proc.stderr.readline()  # the settings line: the process is up, about to compile
    import time

    time.sleep(wait)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    try:
        err = proc.communicate(timeout=60)[1]
    except subprocess.TimeoutExpired as e:
        # Python drops a KeyboardInterrupt raised inside a gc callback ("Exception ignored in: <function
        # _xla_gc_callback>", JAX's): seen once in a cold-cache CI run. A user then presses Ctrl-C again.
        seen = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
        assert "_xla_gc_callback" in seen, seen[-500:]
        proc.send_signal(signal.SIGINT)
        err = seen + proc.communicate(timeout=120)[1]
    err = err.strip().splitlines()
    assert proc.returncode == 130, err[-3:]
    assert err[-1].startswith(("grokjax: interrupted", "grokjax: stopped by SIGINT")), err[-3:]

"""One sweep over several processes (jax.distributed): 2 CPU processes on localhost, talking through gloo,
against one process with 2 local CPU devices (the same per-device program)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
from conftest import REPO, TINY, assert_same_params, run_cli, snapshot

import grokjax
from grokjax.cli import main
from grokjax.errors import UserError
from grokjax.run.cluster import ClusterSpec, _probe, detect_launcher, parse_cluster

# stop=resolved in 2 slots fed by a queue of 4 runs (two grok and leave the program, at different chunks, and
# queued runs take their slots), so the processes must agree on every refill and stop; float64 so that
# "equal" can be exact; repack=always, so the one-process reference visits the program sizes a
# multi-process sweep does (program shapes round apart).
ARGS = ["op=add", "p=23", "d_model=32", "n_heads=2", "d_mlp=64", "frac=0.8", "lr=3e-3", "wd=[1,3]", "seeds=2",
        "steps=1100", "eval_every=25", "chunk_steps=100", "checkpoint_every=100", "dtype=float64",
        "stop=resolved", "repack=always", "snapshot_every=500", "snapshot_at_transitions=true", "models_per_batch=2"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _env(devices: int) -> dict[str, str]:
    return dict(os.environ) | {"PYTHONPATH": str(REPO),
                               "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}


# design=boundary: 6 of 12 candidates chosen in 2 slots; every process must make the same choices from the
# outcomes so far, or their programs would train different runs.
DESIGN = [*[a for a in ARGS if not a.startswith(("wd=", "seeds=", "steps=", "snapshot"))], "wd=logspace(-1,0.5,6)",
          "seeds=2", "steps=700", "design=boundary", "runs=6"]


def _launch(out, n: int = 2, extra=(), args=ARGS) -> list[subprocess.Popen]:
    """n fresh interpreters, one CPU device each, running one sweep."""
    port = _free_port()
    return [subprocess.Popen([sys.executable, "-m", "grokjax", "sweep", *args, "--out", str(out), "--no-plot",
                              "--quiet", "--coordinator", f"localhost:{port}", "--num-processes", str(n),
                              "--process-id", str(i), "--cluster-timeout", "60", *extra],
                             cwd=REPO, env=_env(1), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for i in range(n)]


def _finish(procs: list[subprocess.Popen]) -> list[int]:
    codes = []
    for p in procs:
        _, err = p.communicate(timeout=400)
        codes.append(p.returncode)
        assert p.returncode in (0, 128 + signal.SIGTERM), err
    return codes


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    out = tmp_path_factory.mktemp("one") / "r"
    proc = run_cli(["sweep", *ARGS, "--out", str(out), "--no-plot", "--quiet"], env=_env(2))
    assert proc.returncode == 0, proc.stderr
    return grokjax.load(out)


@pytest.mark.slow
def test_two_processes_interrupted_and_resumed_equal_one_process_with_two_devices(tmp_path, one_process):
    """Two processes train to step >= 200; SIGTERM to process 1 only, after a checkpoint: both stop at the
    same chunk boundary (a process that went on alone would wait forever for the other); then --resume
    over 2 processes again trains the rest, re-packs included. The whole equals one process with two
    devices, bitwise: metrics, stops and the kept parameters. (One test for both halves: an uninterrupted
    two-process sweep runs the same code as the two halves, at twice the cost.)"""
    out = tmp_path / "r"
    procs = _launch(out)
    ckpt = out / "checkpoints" / "g000-b000.npz"

    def checkpoint_step() -> int:
        try:
            with np.load(ckpt) as z:
                return int(z["step"])
        except (OSError, ValueError, KeyError):
            return 0

    deadline = time.time() + 300
    while checkpoint_step() < 200:
        assert all(p.poll() is None for p in procs) and time.time() < deadline, "ended before it was stopped"
        time.sleep(0.01)
    procs[1].send_signal(signal.SIGTERM)
    assert _finish(procs) == [128 + signal.SIGTERM] * 2
    partial = grokjax.load(out)
    assert not partial.complete and len(partial.stops) < 2, "stopped after the second re-pack"
    assert _finish(_launch(out, extra=["--resume"])) == [0, 0]
    r = grokjax.load(out)
    assert r.complete and r.sweep["processes"] == 2 and not r.metrics.duplicated(["run_id", "step"]).any()
    pd.testing.assert_frame_equal(r.runs, one_process.runs)
    pd.testing.assert_frame_equal(r.metrics, one_process.metrics, check_exact=True)
    pd.testing.assert_frame_equal(r.stops, one_process.stops)
    assert_same_params(r, one_process)  # process 0 wrote every run's parameters, those at transitions too
    assert len(r.stops) == 2  # the re-packs happened
    writers = {p.name.split("-")[0] for p in (out / "metrics").glob("*.parquet")}
    assert writers == {"proc00000of00002", "proc00001of00002"}  # each process wrote its own models' parts


@pytest.mark.slow
def test_two_processes_make_the_same_design_choices_as_one(tmp_path):
    """design=boundary over 2 processes: the chosen runs, their rounds and acquisition values, and every
    metric equal one process with two devices (float64, bitwise)."""
    one = tmp_path / "one"
    proc = run_cli(["sweep", *DESIGN, "--out", str(one), "--no-plot", "--quiet"], env=_env(2))
    assert proc.returncode == 0, proc.stderr
    two = tmp_path / "two"
    assert _finish(_launch(two, args=DESIGN)) == [0, 0]
    a, b = grokjax.load(one), grokjax.load(two)
    chosen = b.runs[b.runs.design_round >= 0]
    assert len(chosen) == 6 and chosen.design_round.max() >= 2 and set(b.metrics.run_id) == set(chosen.run_id)
    pd.testing.assert_frame_equal(b.runs, a.runs, check_exact=True)
    pd.testing.assert_frame_equal(b.metrics, a.metrics, check_exact=True)


@pytest.mark.slow
def test_an_unreachable_coordinator_is_a_one_line_error_in_bounded_time(tmp_path):
    """Bounded, not fast: the 2 s cluster timeout plus a Python and JAX start-up, which on a loaded 2-core
    machine (the other xdist worker compiling) took up to ~45 s; the bound is what a hang would exceed."""
    out = tmp_path / "r"
    t0 = time.time()
    proc = run_cli(["sweep", *TINY, "--out", str(out), "--coordinator", f"localhost:{_free_port()}",
                    "--num-processes", "2", "--process-id", "1", "--cluster-timeout", "2"], env=_env(1), timeout=240)
    assert time.time() - t0 < 180
    assert proc.returncode == 2, proc.stderr
    err = proc.stderr.strip()
    assert len(err.splitlines()) == 1 and "no coordinator answered within 2 s" in err, err
    assert not out.exists()


def test_process_0_refuses_a_port_in_use():
    with socket.socket() as s:
        s.bind(("", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(UserError, match=f"cannot listen on port {port}"):
            _probe(ClusterSpec(f"localhost:{port}", 2, 0))


@pytest.mark.parametrize("flags, says", [
    (["--coordinator", "localhost:1234", "--num-processes", "2", "--process-id", "2"], "--process-id 2: expected 0"),
    (["--coordinator", "localhost:1234", "--num-processes", "0", "--process-id", "0"], "--num-processes 0"),
    (["--coordinator", "localhost:1234", "--num-processes", "2", "--process-id", "-1"], "--process-id -1"),
    (["--coordinator", "localhost", "--num-processes", "2", "--process-id", "0"], "expected HOST:PORT"),
    (["--coordinator", "localhost:99999", "--num-processes", "2", "--process-id", "0"], "expected HOST:PORT"),
    (["--num-processes", "2"], "--coordinator and --process-id missing"),
    (["--coordinator", "localhost:1234", "--num-processes", "2", "--process-id", "0", "--shard", "0/2"],
     "--shard 0/2: not supported in a multi-process sweep"),
    (["--coordinator", "localhost:1234", "--num-processes", "2", "--process-id", "0", "--cluster-timeout", "0"],
     "--cluster-timeout 0"),
    (["--num-processes", "x"], "invalid int value: 'x'"),
])
def test_bad_cluster_flags_are_one_line_errors(tmp_path, capsys, flags, says):
    out = tmp_path / "r"
    assert main(["sweep", *TINY, "--out", str(out), "--quiet", *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and says in err, err
    assert snapshot(out) == {}


def test_stray_cluster_variables_do_not_start_jax_distributed():
    # What an sbatch script or an interactive allocation sets: no srun step with several tasks.
    assert detect_launcher({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4", "SLURM_NPROCS": "4", "SLURM_PROCID": "0"}) is None
    assert detect_launcher({"SLURM_STEP_NUM_TASKS": "1", "OMPI_COMM_WORLD_SIZE": "1",
                            "TPU_WORKER_HOSTNAMES": "localhost"}) is None
    assert detect_launcher({"SLURM_STEP_NUM_TASKS": "4"}).startswith("SLURM")
    assert detect_launcher({"OMPI_COMM_WORLD_SIZE": "2"}).startswith("Open MPI")
    assert detect_launcher({"TPU_WORKER_HOSTNAMES": "t0,t1"}).startswith("TPU")
    assert detect_launcher({"SLURM_STEP_NUM_TASKS": "4", "GROKJAX_DISTRIBUTED": "off"}) is None
    assert detect_launcher({"GROKJAX_DISTRIBUTED": "auto"}) is not None
    assert parse_cluster(None, None, None, environ={"SLURM_STEP_NUM_TASKS": "4"}).auto
    assert parse_cluster(None, 1, None, environ={"SLURM_STEP_NUM_TASKS": "4"}) is None  # one process, explicitly
    assert parse_cluster(None, None, None, environ={}) is None
    # and the test session itself runs without them (conftest removes any the shell had)
    assert detect_launcher(os.environ) is None


@pytest.mark.slow
def test_peers_that_never_join_are_one_line_not_an_abort(tmp_path):
    """Process 0 alone: JAX's client aborts with a C++ stack trace once its timeout passes; the watching
    parent turns that into one line and exit 2."""
    out = tmp_path / "r"
    t0 = time.time()
    proc = run_cli(["sweep", *TINY, "--out", str(out), "--coordinator", f"localhost:{_free_port()}",
                    "--num-processes", "2", "--process-id", "0", "--cluster-timeout", "3"], env=_env(1), timeout=120)
    assert time.time() - t0 < 3 + 60
    err = proc.stderr.strip()
    assert proc.returncode == 2 and len(err.splitlines()) == 1, err
    assert "the cluster did not start (process 0 of 2" in err and "Check failure" not in err
    assert not out.exists()


@pytest.mark.slow
def test_a_coordinator_port_that_is_not_jax_is_one_line(tmp_path):
    """Something answers on the coordinator's port, but not JAX's coordination service."""
    import threading

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(16)
        server.settimeout(0.5)
        port = server.getsockname()[1]
        done = threading.Event()

        def answer():
            while not done.is_set():
                try:
                    conn, _ = server.accept()
                except OSError:
                    continue
                with conn:
                    conn.sendall(b"HTTP/1.0 200 OK\r\n\r\nnot a coordinator")

        thread = threading.Thread(target=answer, daemon=True)
        thread.start()
        try:
            proc = run_cli(["sweep", *TINY, "--out", str(tmp_path / "r"), "--coordinator", f"localhost:{port}",
                            "--num-processes", "2", "--process-id", "1", "--cluster-timeout", "3"], env=_env(1),
                           timeout=120)
        finally:
            done.set()
    err = proc.stderr.strip()
    assert proc.returncode == 2 and len(err.splitlines()) == 1, err
    assert "the cluster did not start (process 1 of 2" in err

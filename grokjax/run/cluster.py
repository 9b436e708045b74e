"""One sweep over several processes (``jax.distributed``): who they are, starting them, and the few
host-side agreements a multi-process sweep needs.

Training needs no collective: the model axis of every program is sharded over the devices of all
processes (a global mesh, ``engine.program``) and each process writes the metric parts of its own models.
The host logic (slots, refills, resume decisions, stop=resolved tail shrinks, signals) runs in every process
on the same data, so the processes dispatch the same programs in the same order; where a value could
differ between hosts (free memory, a file judged on resume, a signal that reached one process) process 0
decides and ``Peers`` shares its decision.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from grokjax.errors import UserError

DEFAULT_TIMEOUT_S = 120  # to reach the coordinator, and for every process to join


@dataclass(frozen=True)
class ClusterSpec:
    """How to start ``jax.distributed``: explicit (``coordinator`` HOST:PORT, ``num_processes``,
    ``process_id``) or, with all three None, JAX's own cluster auto-detection (``launcher`` says which
    environment was seen)."""

    coordinator: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    timeout_s: int = DEFAULT_TIMEOUT_S
    launcher: str | None = None

    @property
    def auto(self) -> bool:
        return self.coordinator is None


def detect_launcher(environ: Mapping[str, str]) -> str | None:
    """The multi-process launcher this process was started by, or None.

    Only a launch of several processes counts: ``srun`` with more than one task (SLURM_STEP_NUM_TASKS, set
    inside a job step only; a job's SLURM_JOB_ID or SLURM_NTASKS alone, as in an sbatch script or an
    interactive allocation, do not), Open MPI's mpirun with more than one rank, or a multi-host TPU slice
    (TPU_WORKER_HOSTNAMES names several hosts). ``GROKJAX_DISTRIBUTED=auto`` forces auto-detection (e.g.
    on a TPU pod whose environment names no hosts), ``GROKJAX_DISTRIBUTED=off`` disables it."""
    forced = environ.get("GROKJAX_DISTRIBUTED", "").strip().lower()
    if forced in ("off", "0", "no", "false"):
        return None
    if forced in ("auto", "1", "yes", "true", "on"):
        return "GROKJAX_DISTRIBUTED=auto"
    if forced:
        raise UserError(f"GROKJAX_DISTRIBUTED={environ['GROKJAX_DISTRIBUTED']}: expected auto (start "
                        f"jax.distributed from the cluster's environment) or off (one process), or unset it")

    def count(name: str) -> int:
        try:
            return int(environ.get(name, "1").split("(")[0])
        except ValueError:
            return 1

    if count("SLURM_STEP_NUM_TASKS") > 1:
        return f"SLURM (srun, {count('SLURM_STEP_NUM_TASKS')} tasks)"
    if count("OMPI_COMM_WORLD_SIZE") > 1:
        return f"Open MPI ({count('OMPI_COMM_WORLD_SIZE')} ranks)"
    hosts = [h for h in environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if h.strip()]
    if len(hosts) > 1:
        return f"TPU slice ({len(hosts)} hosts)"
    return None


def parse_cluster(coordinator: str | None, num_processes: int | None, process_id: int | None,
                  timeout_s: int | None = None, environ: Mapping[str, str] | None = None) -> ClusterSpec | None:
    """The command line's ``--coordinator/--num-processes/--process-id`` -> a ClusterSpec, or None for a
    single process. With none of them, a multi-process launcher in ``environ`` (see ``detect_launcher``)
    selects JAX's auto-detection; ``--num-processes 1`` alone runs one process whatever the environment.
    Raises UserError naming the bad flag."""
    environ = os.environ if environ is None else environ
    timeout = DEFAULT_TIMEOUT_S if timeout_s is None else timeout_s
    if timeout < 1:
        raise UserError(f"--cluster-timeout {timeout}: expected a whole number of seconds >= 1")
    given = {"--coordinator": coordinator, "--num-processes": num_processes, "--process-id": process_id}
    if num_processes is not None and num_processes < 1:
        raise UserError(f"--num-processes {num_processes}: expected a whole number >= 1")
    if process_id is not None and process_id < 0:
        raise UserError(f"--process-id {process_id}: expected 0 <= I < --num-processes")
    if all(v is None for v in given.values()):
        launcher = detect_launcher(environ)
        return None if launcher is None else ClusterSpec(timeout_s=timeout, launcher=launcher)
    if num_processes == 1 and coordinator is None and process_id in (None, 0):
        return None  # explicitly one process: no auto-detection
    missing = [k for k, v in given.items() if v is None]
    if missing:
        raise UserError(f"{' and '.join(missing)} missing: a multi-process sweep needs --coordinator HOST:PORT "
                        f"--num-processes N --process-id I together (or none of them, inside srun, mpirun or a "
                        f"TPU slice, for JAX's auto-detection)")
    assert coordinator is not None and num_processes is not None and process_id is not None
    if process_id >= num_processes:
        raise UserError(f"--process-id {process_id}: expected 0 <= I < --num-processes ({num_processes})")
    _host_port(coordinator)
    return ClusterSpec(coordinator, num_processes, process_id, timeout)


def _host_port(coordinator: str) -> tuple[str, int]:
    m = re.fullmatch(r"\[?([A-Za-z0-9_.:\-]+?)\]?:(\d{1,5})", coordinator.strip())
    if m is None or not 0 < int(m.group(2)) < 65536:
        raise UserError(f"--coordinator {coordinator}: expected HOST:PORT (e.g. node01:12355 or "
                        f"10.0.0.5:12355), the host of process 0 and a free port (1-65535)")
    return m.group(1), int(m.group(2))


def _probe(spec: ClusterSpec) -> None:
    """Refuse, with a one-line error within the timeout, what would make JAX abort the process: process 0's
    port already taken, or (other processes) a coordinator that does not answer."""
    assert spec.coordinator is not None
    host, port = _host_port(spec.coordinator)
    if spec.process_id == 0:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("", port))
            except OSError as e:
                raise UserError(f"--coordinator {spec.coordinator}: process 0 cannot listen on port {port} "
                                f"({e.strerror}); choose a free port") from e
        return
    deadline = time.monotonic() + spec.timeout_s
    while True:
        try:
            with socket.create_connection((host, port), timeout=min(5.0, spec.timeout_s)):
                return
        except OSError as e:
            if time.monotonic() >= deadline:
                raise UserError(f"--coordinator {spec.coordinator}: no coordinator answered within "
                                f"{spec.timeout_s} s ({e.strerror or e}); start process 0 (--process-id 0) on "
                                f"that host, check the host name and port, or raise --cluster-timeout") from e
            time.sleep(0.2)


START_GRACE_S = 30  # beyond --cluster-timeout: importing JAX and starting its client


@dataclass
class _Watched:
    """In a watched child: the pipe that tells the parent start-up is done, and the file that takes the
    child's stderr meanwhile (JAX's client aborts the process with a C++ stack trace when start-up fails)."""

    report_fd: int
    log: Any


_WATCHED: _Watched | None = None


def watch_start_up(spec: ClusterSpec) -> None:
    """Fork before JAX is imported: the child returns from here and goes on (``start``, the sweep); this
    process waits. JAX's client aborts a process whose cluster does not form (peers that never join, a
    port that answers but is not JAX's coordinator, a foreign host): a child that dies so before ``start``
    reports success, or is not done within ``timeout_s`` + START_GRACE_S, becomes one UserError line here
    (exit 2). Otherwise this process exits with the child's status. SIGINT and SIGTERM are passed on.
    Where JAX is already imported (a notebook, the tests) forking is not safe: nothing is watched."""
    global _WATCHED
    if "jax" in sys.modules or not hasattr(os, "fork"):
        return
    read_fd, write_fd = os.pipe()
    log = tempfile.TemporaryFile()
    sys.stdout.flush()
    sys.stderr.flush()
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        _WATCHED = _Watched(write_fd, log)
        with contextlib.suppress(Exception):  # Linux: die with the parent (a SIGKILL cannot be passed on)
            import ctypes

            ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before that took effect
            os._exit(1)
        return
    os.close(write_fd)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: os.kill(pid, signum))
    outcome = _wait_for_report(read_fd, pid, spec.timeout_s + START_GRACE_S)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)  # -N: ended by signal N
    if outcome == "joined" or (outcome == "ended" and code >= 0 and _clean_exit(log)):
        raise SystemExit(code if code >= 0 else 128 - code)  # the child said what happened itself
    who = (f"process {spec.process_id} of {spec.num_processes}, coordinator {spec.coordinator}" if not spec.auto
           else spec.launcher)
    why = (f"not formed within {spec.timeout_s + START_GRACE_S} s" if outcome == "timeout" else _abort_reason(log))
    raise UserError(f"the cluster did not start ({who}): {why}; start every process with the same "
                    f"--coordinator (process 0's host and a free port) and --num-processes within "
                    f"--cluster-timeout ({spec.timeout_s} s)")


def _wait_for_report(read_fd: int, pid: int, timeout_s: float) -> str:
    """"joined" once the child reports start-up done, "ended" when it exits first, "timeout" when the time
    is up (the child is then killed)."""
    deadline = time.monotonic() + timeout_s
    with os.fdopen(read_fd, "rb") as pipe:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                return "timeout"
            try:
                ready, _, _ = select.select([pipe], [], [], min(left, 1.0))
            except InterruptedError:
                continue
            if ready:
                return "joined" if pipe.read(1) == b"1" else "ended"  # b"" at EOF: ended before reporting


def _clean_exit(log: Any) -> bool:
    """Whether the child wrote no abort report (it ended through Python, having said why itself)."""
    log.seek(0)
    return b"Check failure" not in log.read()


def _abort_reason(log: Any) -> str:
    """The one line that says why JAX's client aborted, from what it wrote to stderr."""
    log.seek(0)
    text = log.read().decode(errors="replace")
    status = re.search(r"absl::Status: ([^\n]+)", text) or re.search(r"\] ([^\n]+)", text)
    return status.group(1).strip() if status else "the process was aborted by JAX's distributed client"


def start(spec: ClusterSpec) -> "Peers":
    """Initialize ``jax.distributed`` (before anything else touches JAX) and return the processes' Peers.
    On the CPU the processes exchange data through gloo. Under ``watch_start_up`` stderr goes to the
    watcher's file until the cluster has formed, and success is reported to it."""
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    saved = None
    if _WATCHED is not None:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(_WATCHED.log.fileno(), 2)
    try:
        if spec.auto:
            try:
                jax.distributed.initialize(initialization_timeout=spec.timeout_s)
            except (ValueError, RuntimeError) as e:
                raise UserError(f"{spec.launcher}: JAX's cluster auto-detection failed "
                                f"({str(e).splitlines()[0]}); give --coordinator, --num-processes and "
                                f"--process-id, or set GROKJAX_DISTRIBUTED=off for one process") from e
        else:
            _probe(spec)
            jax.distributed.initialize(spec.coordinator, spec.num_processes, spec.process_id,
                                       initialization_timeout=spec.timeout_s)
        peers = Peers.current()
    finally:
        if saved is not None:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
    if _WATCHED is not None:
        os.write(_WATCHED.report_fd, b"1")
        os.close(_WATCHED.report_fd)
    return peers


def stop() -> None:
    """Leave ``jax.distributed`` (waits for the other processes), if it was started."""
    import jax

    if jax.process_count() > 1:
        jax.distributed.shutdown()


@dataclass(frozen=True)
class Peers:
    """This process among the sweep's processes (index 0 of 1 without jax.distributed)."""

    index: int = 0
    count: int = 1

    @classmethod
    def current(cls) -> "Peers":
        import jax

        return cls(jax.process_index(), jax.process_count())

    @property
    def leader(self) -> bool:
        """Process 0: the one that writes sweep.json, runs.parquet, checkpoints and stops, and prints."""
        return self.index == 0

    def sync(self, name: str) -> None:
        """Wait until every process has reached this point."""
        if self.count > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(name)

    def agree(self, value: int) -> int:
        """Process 0's ``value`` (an int), in every process."""
        if self.count == 1:
            return value
        from jax.experimental import multihost_utils

        return int(multihost_utils.broadcast_one_to_all(np.int64(value)))

    def largest(self, value: int) -> int:
        """The largest ``value`` (an int) over the processes, in every process: e.g. the number of a signal
        that reached only one of them (0 where none did)."""
        if self.count == 1:
            return value
        from jax.experimental import multihost_utils

        return int(np.asarray(multihost_utils.process_allgather(np.int64(value))).max())

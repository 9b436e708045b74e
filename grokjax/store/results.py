"""A results directory being written: streamed metric parts, checkpoints, the lock. Training code never
does I/O.

Layout (contract, see README): ``sweep.json``, ``runs.parquet``, ``metrics/*.parquet`` (one part per
chunk of one model batch, written to a hidden temporary name and renamed, so a visible part is always
complete), ``checkpoints/*.npz`` (atomic, same way), ``fits.parquet`` and ``phase_diagram.png`` from
fit/plot, and a ``.lock`` held while a sweep writes.

Checkpoints are plain NumPy archives of the state's leaves: the state is a few arrays per model, NumPy
needs no extra dependency, and write-then-rename makes them atomic. Random keys are not stored because
every key is derived from (seed, step).
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from grokjax.config.schedule import TRAIN_COLUMNS, is_eval_steps, is_logged_steps
from grokjax.errors import UserError
from grokjax.config.fields import SHORT_NAMES
from grokjax.grid.expand import Run, Sweep
from grokjax.grid.shard import Shard
from grokjax.store.columns import column_rank, describe
from grokjax.store.files import (
    atomic_file,
    atomic_parquet,
    atomic_write_bytes,
    parquet_ok,
    read_json,
    remove_tree,
    write_error,
)
from grokjax.store.layout import (
    CHECKPOINT_DIR,
    LOCK,
    METRICS_DIR,
    RUNS_PARQUET,
    SHARDS_DIR,
    SPECTRA_DIR,
    SPECTRUM,
    STOPS_DIR,
    SWEEP_JSON,
)


def default_out(sweep: Sweep) -> Path:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("results") / f"{stamp}-{sweep.fingerprint()[:7]}"


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("grokjax", "jax", "jaxlib", "flax", "optax", "numpy", "pandas", "pyarrow"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[pkg] = metadata.version(pkg)
    return out


def _git_revision() -> str | None:
    here = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5)
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if rev.returncode != 0:
        return None
    return rev.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def provenance() -> dict[str, Any]:
    import jax

    return {
        "versions": _versions(),
        "git_revision": _git_revision(),
        "jax_backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "host": platform.node(),
    }


def runs_table(sweep: Sweep) -> pd.DataFrame:
    """One row per model: run_id, group, and one column per field under its short name (wd, lr, p, ...)."""
    rows = []
    for _, runs in sweep.groups():
        for r in runs:
            row = {"run_id": r.run_id, "group": r.group}
            row |= {SHORT_NAMES[k]: v for k, v in r.values}
            rows.append(row)
    df = pd.DataFrame(rows).sort_values("run_id").reset_index(drop=True)
    df["batch_size"] = df["batch_size"].astype(str)
    return df


@dataclass
class Checkpoint:
    """A model batch's state after ``step`` steps. With stop=resolved, ``live`` lists the batch positions
    of the runs still training (the leaves' first ``len(live)`` rows, in that order) and ``streak`` /
    ``memorized`` their stopping counters; ``live`` is None when every run of the batch is in the leaves."""

    step: int
    leaves: list[np.ndarray]  # leading axis: the live models of the batch, padded for the program
    models_per_batch: int
    live: np.ndarray | None = None  # int64 [L]
    streak: np.ndarray | None = None  # int64 [L]
    memorized: np.ndarray | None = None  # bool [L]


class ResultsDir:
    """An open results directory, locked for one writer (with ``--shard``, one writer per shard: the
    shard's lock, part and checkpoint names carry its prefix)."""

    def __init__(self, path: Path, lock_fd: int | None, shard: Shard | None = None,
                 process: tuple[int, int] = (0, 1)):
        self.path = path
        self._lock_fd: int | None = lock_fd
        self._complete = False
        self.shard = shard
        self.prefix = shard.prefix if shard else ""  # of checkpoint and lock names
        # Part names: over several processes (jax.distributed) each process writes its own models' parts.
        self.part_prefix = self.prefix if process[1] == 1 else process_prefix(*process)
        self.lock = _lock_name(shard)

    @classmethod
    def follow(cls, path: Path, sweep: Sweep, process: tuple[int, int]) -> "ResultsDir":
        """DIR as process ``process[0]`` > 0 of a multi-process sweep sees it, once process 0 has opened it
        (taken the lock, written sweep.json): it writes only its own metric parts there."""
        path = Path(path)
        spec = path / SWEEP_JSON
        existing = read_json(spec) if spec.exists() else None
        if existing is None or existing.get("fingerprint") != sweep.fingerprint():
            raise UserError(f"--out {path}: process 0 did not open this sweep there (is --out on a file system "
                            f"that every process sees, and the same path?)")
        return cls(path, None, None, process)

    # -- opening ------------------------------------------------------------------------------------
    @classmethod
    def open(cls, path: Path, sweep: Sweep, resume: bool, command: list[str], needed_bytes: int = 0,
             shard: Shard | None = None, processes: int = 1) -> "ResultsDir":
        """Check the directory, take the lock, and (for a new sweep) write sweep.json and runs.parquet.
        Raises UserError, leaving the disk as it was, when DIR holds another sweep, is in use, cannot be
        written, or lacks ``needed_bytes`` of free space. The lock is taken before DIR's contents are
        judged, so of two sweeps racing for one DIR the loser is told that another sweep holds it.
        Shards of one sweep share DIR: each takes its own lock, and each checks that sweep.json holds the
        same sweep split into as many shards."""
        path = Path(path)
        lock = _lock_name(shard)
        cls.preflight(path, sweep, resume, shard, judge=False)
        parent = next((p for p in [path, *path.parents] if p.exists()), Path("."))
        if parent.is_dir() and needed_bytes and shutil.disk_usage(parent).free < needed_bytes:
            free = shutil.disk_usage(parent).free
            raise UserError(f"--out {path}: {free / 2**20:.0f} MiB free, the sweep needs about "
                            f"{needed_bytes / 2**20:.0f} MiB; free space or choose another --out")
        created_dir = not path.exists()
        created_lock = not (path / lock).exists()
        try:
            path.mkdir(parents=True, exist_ok=True)
            lock_fd = os.open(path / lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise UserError(f"--out {path}: cannot write there ({e.strerror}); choose a writable directory")
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(lock_fd)
            who = "another sweep holds this directory" if shard is None else \
                f"shard {shard.label} is already running in this directory"
            raise UserError(f"--out {path}: {who} (it is writing there right now); wait for it to finish or "
                            f"choose another --out")
        rd = cls(path, lock_fd, shard, (0, processes))
        spec_file = path / SWEEP_JSON
        try:
            existing = _judge_existing(path, sweep, resume, shard)
        except UserError:
            rd.close(remove_lock=created_lock)
            if created_dir:
                remove_tree(path)
            raise
        try:
            probe = path / ".write-probe"
            probe.write_bytes(b"ok")
            probe.unlink()
            (path / METRICS_DIR).mkdir(exist_ok=True)
            (path / CHECKPOINT_DIR).mkdir(exist_ok=True)
            if existing is None:
                record = {"name": sweep.name, "fingerprint": sweep.fingerprint(), "command": command,
                          "created": datetime.datetime.now().isoformat(timespec="seconds"),
                          "complete": False, "spec": sweep.to_json(), "n_runs": sweep.n_runs(),
                          "shards": shard.count if shard else None, "processes": processes}
                record |= provenance()
                atomic_parquet(path / RUNS_PARQUET, describe(
                    pa.Table.from_pandas(runs_table(sweep), preserve_index=False), "runs"))
                atomic_write_bytes(spec_file, json.dumps(record, indent=2).encode())
        except OSError as e:
            rd.close(remove_lock=created_lock)
            if created_dir:
                remove_tree(path)
            raise UserError(f"--out {path}: cannot write there ({e.strerror}); choose a writable directory "
                            f"with free space")
        return rd

    @staticmethod
    def preflight(path: Path, sweep: Sweep, resume: bool, shard: Shard | None = None, judge: bool = True
                  ) -> None:
        """The checks of ``open`` that need no lock and write nothing, so a sweep can be refused before it
        compiles (``open`` repeats them under the lock)."""
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise UserError(f"--out {path}: exists and is not a directory; choose a new directory")
        ours = path.is_dir() and ((path / SWEEP_JSON).exists() or any(path.glob(LOCK + "*")))
        if path.is_dir() and not ours and any(path.iterdir()):
            raise UserError(f"--out {path}: is not empty and holds no grokjax sweep; choose a new or empty "
                            f"directory")
        if resume and not ours and shard is None:
            raise UserError(f"--out {path}: there is no sweep to resume here (no {SWEEP_JSON})")
        if judge and ours:
            _judge_existing(path, sweep, resume, shard)

    def close(self, remove_lock: bool = False) -> None:
        """Release the lock; a completed sweep (or a refused open that made it) also removes the lock file."""
        if self._lock_fd is not None:
            if remove_lock or self._complete:
                with contextlib.suppress(OSError):
                    (self.path / self.lock).unlink()
            with contextlib.suppress(OSError):
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
                os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> "ResultsDir":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- metrics --------------------------------------------------------------------------------------
    def write_chunk(self, group: int, batch: int, start: int, run_ids: np.ndarray,
                    metrics: dict[str, np.ndarray], log_every: int, eval_every: int, steps: int,
                    train_columns: tuple[str, ...] = TRAIN_COLUMNS) -> int:
        """Write one chunk ([K, N] arrays for steps start..start+K-1) as one complete metrics part, and
        its Fourier spectra (``spectrum`` [K, N, F], F > 0) as one spectra part. Keeps rows at multiples
        of log_every and at evaluation steps; every column not in ``train_columns`` is an evaluation
        column, null elsewhere. Returns the number of metric rows written."""
        k, n = metrics["train_loss"].shape
        is_eval = is_eval_steps(start, k, eval_every, steps)
        keep = is_logged_steps(start, k, log_every, eval_every, steps)
        step, is_eval = np.arange(start, start + k)[keep], is_eval[keep]
        cols: dict[str, pa.Array] = {
            "run_id": pa.array(np.repeat(run_ids.astype(np.int64), len(step))),
            "step": pa.array(np.tile(step.astype(np.int64), n)),
        }
        eval_mask = np.tile(~is_eval, n)
        names = sorted((c for c in metrics if c != SPECTRUM), key=column_rank)
        for name in names:
            values = metrics[name][keep].T.ravel()  # [N * K'] ordered by run, then step
            cols[name] = pa.array(values, mask=None if name in train_columns else eval_mask,
                                  type=pa.from_numpy_dtype(values.dtype))
        name = self._part_name(group, batch, start)
        spectrum = metrics.get(SPECTRUM)
        if spectrum is not None and spectrum.shape[-1] > 0:
            self._write_spectra(name, start, run_ids, spectrum, is_eval_steps(start, k, eval_every, steps))
        self._guard(lambda: atomic_parquet(self.path / METRICS_DIR / name, describe(pa.table(cols), "metrics")))
        return len(step) * n

    def _write_spectra(self, name: str, start: int, run_ids: np.ndarray, spectrum: np.ndarray,
                       is_eval: np.ndarray) -> None:
        """The long table (run_id, step, freq, norm) of the evaluation steps of one chunk."""
        spec = spectrum[is_eval]  # [E, N, F]
        e, n, f = spec.shape
        steps = np.arange(start, start + len(is_eval))[is_eval]
        table = pa.table({
            "run_id": pa.array(np.repeat(run_ids.astype(np.int64), e * f)),
            "step": pa.array(np.tile(np.repeat(steps.astype(np.int64), f), n)),
            "freq": pa.array(np.tile(np.arange(f, dtype=np.int64), e * n)),
            "norm": pa.array(spec.transpose(1, 0, 2).ravel()),
        })
        (self.path / SPECTRA_DIR).mkdir(exist_ok=True)
        self._guard(lambda: atomic_parquet(self.path / SPECTRA_DIR / name, describe(table, "spectra")))

    def write_stops(self, group: int, batch: int, start: int, run_ids: np.ndarray, stop_step: int,
                    reasons: list[str]) -> None:
        """Record runs that left the program after the chunk starting at ``start`` (stop=resolved):
        one part per chunk, named like its metrics part so a resume removes both together."""
        table = pa.table({"run_id": pa.array(run_ids.astype(np.int64)),
                          "stop_step": pa.array(np.full(len(run_ids), stop_step, np.int64)),
                          "reason": pa.array(reasons, pa.string())})
        (self.path / STOPS_DIR).mkdir(exist_ok=True)
        name = self._part_name(group, batch, start)
        self._guard(lambda: atomic_parquet(self.path / STOPS_DIR / name, describe(table, "stops")))

    def _part_name(self, group: int, batch: int, start: int) -> str:
        return f"{self.part_prefix}g{group:03d}-b{batch:03d}-s{start:09d}.parquet"

    def _parts(self, pattern: str) -> list[Path]:
        return [p for d in (METRICS_DIR, SPECTRA_DIR, STOPS_DIR) for p in (self.path / d).glob(pattern)]

    def _batch_parts(self, group: int, batch: int | None = None) -> list[tuple[int, Path]]:
        """(start step, file) of the parts of a group's batch (all batches if None) that this writer owns:
        a shard's own parts, or else the parts of every process of any earlier multi-process run (so a
        resume with another process count clears them too)."""
        b = r"\d+" if batch is None else f"{batch:03d}"
        own = re.escape(self.prefix) if self.shard else r"(?:proc\d+of\d+-)?"
        name = re.compile(own + f"g{group:03d}-b{b}" + r"-s(?P<start>\d+)\.parquet")
        return [(int(m.group("start")), p) for p in self._parts("*.parquet") if (m := name.fullmatch(p.name))]

    def clear_parts_from(self, group: int, batch: int, step: int) -> None:
        """Remove this batch's parts at or after ``step`` (written after the checkpoint we resume from)."""
        for start, part in self._batch_parts(group, batch):
            if start >= step:
                part.unlink()
        for tmp in self._parts(".*.tmp"):
            tmp.unlink()

    def _checkpoint_path(self, group: int, batch: int) -> Path:
        return self.path / CHECKPOINT_DIR / f"{self.prefix}g{group:03d}-b{batch:03d}.npz"

    def save_checkpoint(self, group: int, batch: int, step: int, leaves: list[np.ndarray],
                        models_per_batch: int, live: np.ndarray | None = None, streak: np.ndarray | None = None,
                        memorized: np.ndarray | None = None) -> None:
        """Write the state's leaves (and, with stop=resolved, the live runs and their counters) with a
        SHA-256 digest of their bytes, so a damaged file is detected."""
        path = self._checkpoint_path(group, batch)
        arrays = [np.ascontiguousarray(np.asarray(x)) for x in leaves]
        extra = {} if live is None else {"live": np.asarray(live, np.int64), "streak": np.asarray(streak, np.int64),
                                         "memorized": np.asarray(memorized, bool)}

        def write() -> None:
            with atomic_file(path) as tmp, open(tmp, "wb") as f:
                np.savez(f, step=np.int64(step), models_per_batch=np.int64(models_per_batch),
                         digest=np.frombuffer(_digest(arrays + list(extra.values())), np.uint8),
                         **{f"leaf_{i:04d}": x for i, x in enumerate(arrays)}, **extra)

        self._guard(write)

    def load_checkpoint(self, group: int, batch: int) -> Checkpoint | None:
        """The batch's checkpoint, None if there is none; DamagedFile if it cannot be read or its digest
        does not match."""
        path = self._checkpoint_path(group, batch)
        if not path.exists():
            return None
        try:
            with np.load(path) as z:
                names = sorted(k for k in z.files if k.startswith("leaf_"))
                leaves = [z[k] for k in names]
                extra = [z[k] for k in ("live", "streak", "memorized") if k in z.files]
                ckpt = Checkpoint(int(z["step"]), leaves, int(z["models_per_batch"]), *extra)
                stored = bytes(z["digest"])
        except Exception as e:  # a truncated or garbled archive fails in many ways (zipfile, numpy, OSError)
            raise DamagedFile(path, f"{type(e).__name__}: {e}") from e
        if stored != _digest(leaves + extra):
            raise DamagedFile(path, "its contents do not match the digest written with it")
        return ckpt

    def discard_checkpoint(self, group: int, batch: int) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._checkpoint_path(group, batch).unlink()

    def group_checkpoints(self, group: int) -> list[Path]:
        return sorted((self.path / CHECKPOINT_DIR).glob(f"{self.prefix}g{group:03d}-b*.npz"))

    def checkpoint_batches(self, group: int) -> list[int]:
        """Model-batch indices of the group that have a checkpoint file (readable or not)."""
        return [int(p.stem.rsplit("-b", 1)[1]) for p in self.group_checkpoints(group)]

    def has_parts(self, group: int) -> bool:
        return any(p.parent.name == METRICS_DIR for _, p in self._batch_parts(group))

    def first_damaged_part(self, group: int, batch: int) -> tuple[int, Path] | None:
        """(start step, file) of this batch's earliest metric part that cannot be read, if any."""
        for start, part in sorted(self._batch_parts(group, batch)):
            if not parquet_ok(part):
                return start, part
        return None

    def clear_group(self, group: int) -> None:
        """Remove every metric part and checkpoint of a group (before training it again from step 0)."""
        for f in [*(p for _, p in self._batch_parts(group)), *self.group_checkpoints(group)]:
            f.unlink()

    def mark_complete(self) -> None:
        """sweep.json says complete; a shard instead leaves its marker in shards/ (load() reads them)."""
        if self.shard is not None:
            self._complete = True
            (self.path / SHARDS_DIR).mkdir(exist_ok=True)
            marker = {"shard": self.shard.index, "of": self.shard.count,
                      "finished": datetime.datetime.now().isoformat(timespec="seconds")} | provenance()
            self._guard(lambda: atomic_write_bytes(self.path / SHARDS_DIR / f"{self.prefix}complete.json",
                                                   json.dumps(marker, indent=2).encode()))
            return
        record = read_json(self.path / SWEEP_JSON)
        self._complete = True
        record["complete"] = True
        record["finished"] = datetime.datetime.now().isoformat(timespec="seconds")
        self._guard(lambda: atomic_write_bytes(self.path / SWEEP_JSON, json.dumps(record, indent=2).encode()))

    def _guard(self, write: Any) -> None:
        try:
            write()
        except OSError as e:
            raise write_error(self.path, e, "the last checkpoint is kept; free space and rerun with --resume") from e


def process_prefix(index: int, count: int) -> str:
    """The start of the part names process ``index`` of ``count`` writes (jax.distributed)."""
    return f"proc{index:05d}of{count:05d}-"


def _lock_name(shard: Shard | None) -> str:
    return LOCK if shard is None else f"{LOCK}-{shard.prefix.rstrip('-')}"


def _has_files(path: Path, prefix: str) -> bool:
    """Whether the writer with this name prefix (a shard, or "" unsharded) has written a part or checkpoint."""
    return any(any((path / d).glob(f"{prefix}g*")) for d in (METRICS_DIR, SPECTRA_DIR, STOPS_DIR, CHECKPOINT_DIR))


def _judge_existing(path: Path, sweep: Sweep, resume: bool, shard: Shard | None) -> dict[str, Any] | None:
    """sweep.json of DIR (None if absent), after refusing what cannot continue there: another sweep, another
    shard count, or a start (no --resume) of what was already started."""
    spec_file = path / SWEEP_JSON
    existing = read_json(spec_file) if spec_file.exists() else None
    if existing is not None and existing.get("fingerprint") != sweep.fingerprint():
        raise UserError(f"--out {path}: holds a different sweep ({existing.get('name')}, fingerprint "
                        f"{existing.get('fingerprint')}); choose another --out, or resume it with the same spec")
    if existing is not None:
        _check_shards(path, existing.get("shards"), shard)
    if existing is not None and not resume and (shard is None or _has_files(path, shard.prefix)):
        what = "this sweep" if shard is None else f"shard {shard.label} of this sweep"
        raise UserError(f"--out {path}: already holds {what}; add --resume to continue it, or choose another --out")
    if existing is None and resume and shard is None:
        raise UserError(f"--out {path}: there is no sweep to resume here (no {SWEEP_JSON})")
    return existing


def _check_shards(path: Path, existing: int | None, shard: Shard | None) -> None:
    """A sweep started with N shards continues only with N shards (and an unsharded one unsharded)."""
    if existing == (shard.count if shard else None):
        return
    if existing is None:
        raise UserError(f"--out {path}: holds this sweep unsharded; continue it without --shard, or choose "
                        f"another --out")
    given = f"--shard {shard.label}" if shard else "no --shard"
    raise UserError(f"--out {path}: holds this sweep split into {existing} shards, {given} was given; use "
                    f"--shard I/{existing} (0 <= I < {existing})")


class DamagedFile(Exception):
    """A results file that exists but cannot be used (truncated, garbled, or failing its digest)."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"{path} is damaged ({reason})")
        self.path = path


def _digest(arrays: list[np.ndarray]) -> bytes:
    h = hashlib.sha256()
    for x in arrays:
        h.update(str((x.dtype.str, x.shape)).encode())
        h.update(np.ascontiguousarray(x).tobytes())
    return h.digest()


def run_ids(runs: list[Run]) -> np.ndarray:
    return np.array([r.run_id for r in runs], dtype=np.int64)

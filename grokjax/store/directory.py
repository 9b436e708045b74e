"""A results directory being written: the lock and the checks before it is taken, the header files
(sweep.json, runs.parquet), and the writer of one sweep, shard or process, which streams parts
(``store.parts``) and checkpoints (``store.checkpoints``). Training code never does I/O.

Layout (contract, see docs/results.md): ``sweep.json``, ``runs.parquet``, ``metrics/*.parquet``,
``checkpoints/*.npz``, ``fits.parquet`` and ``phase_diagram.png`` from fit/plot, and a ``.lock`` held
while a sweep writes.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import platform
import shutil
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

import pandas as pd
import pyarrow as pa

from grokjax.config.fields import SHORT_NAMES
from grokjax.errors import UserError
from grokjax.grid.expand import Sweep
from grokjax.grid.shard import Shard
from grokjax.store.checkpoints import CheckpointStore
from grokjax.store.columns import describe
from grokjax.store.files import atomic_parquet, atomic_write_bytes, read_json, write_error
from grokjax.store.layout import CHECKPOINT_DIR, LOCK, METRICS_DIR, PART_DIRS, RUNS_PARQUET, SHARDS_DIR, SWEEP_JSON
from grokjax.store.params import ParamsStore
from grokjax.store.parts import PartWriter


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


class ResultsDir(PartWriter, CheckpointStore, ParamsStore):
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
        cls.preflight(path, sweep, resume, shard, judge=False, needed_bytes=needed_bytes)
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
            raise UserError(f"--out {path}: {_holder(shard)} (it is writing there right now); wait for it to "
                            f"finish or choose another --out")
        rd = cls(path, lock_fd, shard, (0, processes))
        written: list[Path] = []
        try:
            # Shards started together into one DIR: the first to hold the directory's lock writes sweep.json
            # and runs.parquet, the others then judge what it wrote.
            with _directory_lock(path):
                existing = _judge_existing(path, sweep, resume, shard)
                probe = path / f".write-probe-{os.getpid()}"
                probe.write_bytes(b"ok")
                probe.unlink()
                for folder in (METRICS_DIR, CHECKPOINT_DIR):
                    if not (path / folder).exists():
                        (path / folder).mkdir(exist_ok=True)
                        written.append(path / folder)
                if existing is None:
                    record = {"name": sweep.name, "fingerprint": sweep.fingerprint(), "command": command,
                              "created": datetime.datetime.now().isoformat(timespec="seconds"),
                              "complete": False, "spec": sweep.to_json(), "n_runs": sweep.n_runs(),
                              "shards": shard.count if shard else None, "processes": processes}
                    record |= provenance()
                    written.append(path / RUNS_PARQUET)
                    atomic_parquet(path / RUNS_PARQUET, describe(
                        pa.Table.from_pandas(runs_table(sweep), preserve_index=False), "runs"))
                    written.append(path / SWEEP_JSON)
                    atomic_write_bytes(path / SWEEP_JSON, json.dumps(record, indent=2).encode())
        except (UserError, OSError) as e:
            rd.close(remove_lock=created_lock)
            _undo(path, written, created_dir)
            if isinstance(e, UserError):
                raise
            raise UserError(f"--out {path}: cannot write there ({e.strerror}); choose a writable directory "
                            f"with free space")
        return rd

    @staticmethod
    def preflight(path: Path, sweep: Sweep, resume: bool, shard: Shard | None = None, judge: bool = True,
                  needed_bytes: int = 0) -> None:
        """The checks of ``open`` that need no lock and write nothing, so a sweep can be refused before it
        compiles (``open`` repeats them under the lock): among them, ``needed_bytes`` of free space."""
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise UserError(f"--out {path}: exists and is not a directory; choose a new directory")
        parent = next((p for p in [path, *path.parents] if p.exists()), Path("."))
        if parent.is_dir() and shutil.disk_usage(parent).total == 0:  # /proc, /sys: no disk behind them
            raise UserError(f"--out {path}: {parent} is not on a disk file system (it holds no space); choose a "
                            f"writable directory")
        if parent.is_dir() and needed_bytes and shutil.disk_usage(parent).free < needed_bytes:
            free = shutil.disk_usage(parent).free
            raise UserError(f"--out {path}: {_size(free)} free, the sweep needs about {_size(needed_bytes)}; free "
                            f"space or choose another --out")
        # One listing, judged once: a writer that starts at this moment creates its lock before anything else.
        names = [p.name for p in path.iterdir()] if path.is_dir() else []
        ours = any(n == SWEEP_JSON or n.startswith(LOCK) for n in names)
        if names and not ours:
            raise UserError(f"--out {path}: is not empty and holds no grokjax sweep; choose a new or empty "
                            f"directory")
        if resume and not ours and shard is None:
            raise UserError(f"--out {path}: there is no sweep to resume here (no {SWEEP_JSON})")
        if judge and ours:
            if _held(path, _lock_name(shard)):
                raise UserError(f"--out {path}: {_holder(shard)} (it is writing there right now); wait for it to "
                                f"finish or choose another --out")
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

    def clear_group(self, group: int) -> None:
        """Remove every metric part and checkpoint of a group (before training it again from step 0)."""
        for f in [*(p for _, p in self._batch_parts(group)), *self.group_checkpoints(group)]:
            f.unlink()
        self.clear_group_params(group)

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


def _size(n: int) -> str:
    """Bytes in words: 0 B, 38 KiB, 12 MiB, 3.1 GiB."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}" if unit == "GiB" else f"{n / scale:.0f} {unit}"
    return f"{n} B"


def _holder(shard: Shard | None) -> str:
    return "another sweep holds this directory" if shard is None else \
        f"shard {shard.label} is already running in this directory"


def _held(path: Path, lock: str) -> bool:
    """Whether a running writer holds the lock file ``lock`` of DIR now (tried without waiting)."""
    try:
        fd = os.open(path / lock, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)  # releases the lock if it was taken here


@contextlib.contextmanager
def _directory_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on the directory itself (flock on its descriptor), held while a writer judges DIR
    and writes its header files: no file is left behind, and a waiting writer blocks only that long."""
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _undo(path: Path, written: list[Path], created_dir: bool) -> None:
    """After a refused or failed open: remove the files and folders this writer made, never another
    writer's (a folder is removed only while empty; DIR only if this writer created it and it is empty)."""
    for p in reversed(written):
        with contextlib.suppress(OSError):
            p.rmdir() if p.is_dir() else p.unlink()
    if created_dir:
        with contextlib.suppress(OSError):
            path.rmdir()


def process_prefix(index: int, count: int) -> str:
    """The start of the part names process ``index`` of ``count`` writes (jax.distributed)."""
    return f"proc{index:05d}of{count:05d}-"


def _lock_name(shard: Shard | None) -> str:
    return LOCK if shard is None else f"{LOCK}-{shard.prefix.rstrip('-')}"


def _has_files(path: Path, prefix: str) -> bool:
    """Whether the writer with this name prefix (a shard, or "" unsharded) has written a part or checkpoint."""
    return any(any((path / d).glob(f"{prefix}g*")) for d in (*PART_DIRS, CHECKPOINT_DIR))


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

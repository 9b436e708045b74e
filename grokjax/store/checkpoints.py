"""Checkpoints of a results directory: a model batch's state as a plain NumPy archive of its leaves.

NumPy needs no extra dependency, and write-then-rename makes each file atomic. A SHA-256 digest of the
arrays is stored with them, so a damaged file is detected. Random keys are not stored because every key is
derived from (seed, step).
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from grokjax.store.files import atomic_file
from grokjax.store.layout import CHECKPOINT_DIR


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


class CheckpointStore:
    """Saves, loads and lists the checkpoints of one writer. Needs ``path``, ``prefix`` and ``_guard``."""

    path: Path
    prefix: str

    def _guard(self, write: Any) -> None:  # pragma: no cover - ResultsDir's
        raise NotImplementedError

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



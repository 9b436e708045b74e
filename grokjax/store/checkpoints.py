"""Checkpoints of a results directory: a group's program (its slots' state, runs and steps) as a plain
NumPy archive.

NumPy needs no extra dependency, and write-then-rename makes each file atomic. A SHA-256 digest of the
arrays is stored with them, so a damaged file is detected. Random keys are not stored because every key is
derived from (seed, step).
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from grokjax.store.files import atomic_file
from grokjax.store.layout import CHECKPOINT_DIR


SLOT_FIELDS = ("slot_runs", "slot_steps", "streak", "memorized")  # [S] arrays, one row per slot
COUNTERS = ("queued", "done_steps", "dropped_steps", "n_stopped", "rounds")  # whole numbers
DESIGN_FIELDS = ("order", "outcome")  # design=boundary: the runs taken, in order, and every candidate's outcome


@dataclass
class Checkpoint:
    """A group's program after ``step`` steps of its clock: the state of its slots and what they hold.
    ``slot_runs`` [S] (int64): each slot's run (its position in the group's queue of runs, -1 empty);
    ``slot_steps`` [S]: that run's own step; ``streak`` / ``memorized`` [S]: its stop=resolved counters;
    ``queued``: how many runs of the queue have been taken into a slot. ``done_steps`` / ``dropped_steps``
    / ``n_stopped``: the model-steps trained and given up (stops) so far and the runs stopped, for progress.
    design=boundary: ``order`` (int64): the candidates taken into a slot so far, in order; ``outcome`` [R]
    (int8, ``design.chooser``): each candidate's outcome; ``rounds``: the refills that chose runs so far."""

    step: int
    leaves: list[np.ndarray]  # leading axis: the program's rows (slots, then padding)
    slot_runs: np.ndarray
    slot_steps: np.ndarray
    streak: np.ndarray
    memorized: np.ndarray
    queued: int
    done_steps: int = 0
    dropped_steps: int = 0
    n_stopped: int = 0
    rounds: int = 0
    order: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    outcome: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int8))

    @property
    def n_slots(self) -> int:
        return len(self.slot_runs)


class CheckpointStore:
    """Saves, loads and lists the checkpoints of one writer. Needs ``path``, ``prefix`` and ``_guard``."""

    path: Path
    prefix: str

    def _guard(self, write: Any) -> None:  # pragma: no cover - ResultsDir's
        raise NotImplementedError

    def _checkpoint_path(self, group: int, batch: int) -> Path:
        return self.path / CHECKPOINT_DIR / f"{self.prefix}g{group:03d}-b{batch:03d}.npz"

    def save_checkpoint(self, group: int, batch: int, ckpt: Checkpoint) -> None:
        """Write the state's leaves and the slots' runs, steps and counters with a SHA-256 digest of their
        bytes, so a damaged file is detected."""
        path = self._checkpoint_path(group, batch)
        arrays = [np.ascontiguousarray(np.asarray(x)) for x in ckpt.leaves]
        slots = {k: np.asarray(getattr(ckpt, k), bool if k == "memorized" else np.int64) for k in SLOT_FIELDS}
        counters = {k: np.int64(getattr(ckpt, k)) for k in COUNTERS}
        design = {"order": np.asarray(ckpt.order, np.int64), "outcome": np.asarray(ckpt.outcome, np.int8)}

        def write() -> None:
            with atomic_file(path) as tmp, open(tmp, "wb") as f:
                np.savez(f, step=np.int64(ckpt.step), **counters,
                         digest=np.frombuffer(_digest(arrays + list(slots.values()) + list(design.values())),
                                              np.uint8),
                         **{f"leaf_{i:04d}": x for i, x in enumerate(arrays)}, **slots, **design)

        self._guard(write)

    def load_checkpoint(self, group: int, batch: int) -> Checkpoint | None:
        """The group's checkpoint, None if there is none; DamagedFile if it cannot be read, its digest does
        not match, or it holds no slots (written by a grokjax before continuous batching)."""
        path = self._checkpoint_path(group, batch)
        if not path.exists():
            return None
        try:
            with np.load(path) as z:
                leaves = [z[k] for k in sorted(k for k in z.files if k.startswith("leaf_"))]
                slots = [z[k] for k in SLOT_FIELDS]
                design = [z[k] for k in DESIGN_FIELDS if k in z.files]  # none before design=boundary
                ckpt = Checkpoint(int(z["step"]), leaves, *slots, *(int(z[k]) if k in z.files else 0
                                                                     for k in COUNTERS), *design)
                stored = bytes(z["digest"])
        except Exception as e:  # a truncated or garbled archive fails in many ways (zipfile, numpy, OSError)
            raise DamagedFile(path, f"{type(e).__name__}: {e}") from e
        if stored != _digest(leaves + slots + design):
            raise DamagedFile(path, "its contents do not match the digest written with it")
        return ckpt

    def discard_checkpoint(self, group: int, batch: int) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._checkpoint_path(group, batch).unlink()

    def group_checkpoints(self, group: int) -> list[Path]:
        return sorted((self.path / CHECKPOINT_DIR).glob(f"{self.prefix}g{group:03d}-b*.npz"))

    def checkpoint_batches(self, group: int) -> list[int]:
        """Program indices of the group that have a checkpoint file (readable or not)."""
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



"""Streamed parts of a results directory: one metrics part (and its spectra and stops parts) per chunk of
one group's program (named by the chunk's start on the program's clock), written to a hidden temporary name and renamed, so a visible part is always complete.

``PartWriter`` is the part of ``store.directory.ResultsDir`` that writes, lists and clears them; the
results directory's layout (``store.layout``) names them.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from grokjax.config.schedule import TRAIN_COLUMNS, is_eval_step, is_logged_step
from grokjax.store.columns import column_rank, describe
from grokjax.store.files import atomic_parquet, parquet_ok
from grokjax.store.layout import DESIGN_DIR, METRICS_DIR, PART_DIRS, SPECTRA_DIR, SPECTRUM, STOPS_DIR


class PartWriter:
    """Writes and clears the parts of one writer (a sweep, a shard, or one process of a multi-process
    sweep). Needs ``path``, ``shard``, ``prefix`` (checkpoint names), ``part_prefix`` and ``_guard``."""

    path: Path
    shard: Any
    prefix: str
    part_prefix: str

    def _guard(self, write: Any) -> None:  # pragma: no cover - ResultsDir's
        raise NotImplementedError

    def write_chunk(self, group: int, batch: int, start: int, run_ids: np.ndarray,
                    metrics: dict[str, np.ndarray], rows: np.ndarray, log_every: int, eval_every: int, steps: int,
                    train_columns: tuple[str, ...] = TRAIN_COLUMNS) -> int:
        """Write one chunk of the runs ``run_ids`` [N] (``metrics``: [K, N] arrays; ``rows`` [K, N]: each row's
        own step of its run, -1 for none, ``schedule.chunk_rows``) as one complete metrics part named by the
        chunk's ``start``, and its Fourier spectra (``spectrum`` [K, N, F], F > 0) as one spectra part. Keeps
        rows at multiples of log_every and at evaluation steps; every column not in ``train_columns`` is an
        evaluation column, null elsewhere. Returns the number of metric rows written."""
        real = rows >= 0
        keep = (real & is_logged_step(rows, log_every, eval_every, steps)).T  # [N, K]: by run, then step
        is_eval = (real & is_eval_step(rows, eval_every, steps)).T
        cols: dict[str, pa.Array] = {
            "run_id": pa.array(np.broadcast_to(run_ids.astype(np.int64)[:, None], keep.shape)[keep]),
            "step": pa.array(rows.T[keep].astype(np.int64)),
        }
        eval_mask = ~is_eval[keep]
        names = sorted((c for c in metrics if c != SPECTRUM), key=column_rank)
        for name in names:
            values = metrics[name].T[keep]  # [rows kept] ordered by run, then step
            cols[name] = pa.array(values, mask=None if name in train_columns else eval_mask,
                                  type=pa.from_numpy_dtype(values.dtype))
        name = self._part_name(group, batch, start)
        spectrum = metrics.get(SPECTRUM)
        if spectrum is not None and spectrum.shape[-1] > 0:
            self._write_spectra(name, run_ids, rows, spectrum, is_eval)
        self._guard(lambda: atomic_parquet(self.path / METRICS_DIR / name, describe(pa.table(cols), "metrics")))
        return int(keep.sum())

    def _write_spectra(self, name: str, run_ids: np.ndarray, rows: np.ndarray, spectrum: np.ndarray,
                       is_eval: np.ndarray) -> None:
        """The long table (run_id, step, freq, norm) of the evaluation rows (``is_eval`` [N, K]) of one chunk."""
        spec = spectrum.transpose(1, 0, 2)[is_eval]  # [E, F], by run then step
        f = spec.shape[-1]
        ids = np.broadcast_to(run_ids.astype(np.int64)[:, None], is_eval.shape)[is_eval]
        table = pa.table({
            "run_id": pa.array(np.repeat(ids, f)),
            "step": pa.array(np.repeat(rows.T[is_eval].astype(np.int64), f)),
            "freq": pa.array(np.tile(np.arange(f, dtype=np.int64), len(spec))),
            "norm": pa.array(spec.ravel()),
        })
        (self.path / SPECTRA_DIR).mkdir(exist_ok=True)
        self._guard(lambda: atomic_parquet(self.path / SPECTRA_DIR / name, describe(table, "spectra")))

    def write_stops(self, group: int, batch: int, start: int, run_ids: np.ndarray, stop_steps: np.ndarray,
                    reasons: list[str]) -> None:
        """Record runs that left the program after the chunk starting at ``start`` (stop=resolved), each at
        its own ``stop_steps``: one part per chunk, named like its metrics part so a resume removes both
        together."""
        table = pa.table({"run_id": pa.array(run_ids.astype(np.int64)),
                          "stop_step": pa.array(np.broadcast_to(np.asarray(stop_steps, np.int64), len(run_ids))),
                          "reason": pa.array(reasons, pa.string())})
        (self.path / STOPS_DIR).mkdir(exist_ok=True)
        name = self._part_name(group, batch, start)
        self._guard(lambda: atomic_parquet(self.path / STOPS_DIR / name, describe(table, "stops")))

    def write_choices(self, group: int, batch: int, clock: int, run_ids: np.ndarray, design_round: int,
                      columns: dict[str, np.ndarray]) -> None:
        """Record the runs a design chose at the program's ``clock`` (its ``design_round``-th refill) with
        ``columns`` (name -> [L] floats, or strings: the rule, the acquisition and the estimate then): one part
        per refill, named by its clock so a resume from a checkpoint at or before it removes it (the resume
        chooses again)."""
        table = pa.table({"run_id": pa.array(run_ids.astype(np.int64)),
                          "design_round": pa.array(np.full(len(run_ids), design_round, np.int64)),
                          **{k: _arrow(v) for k, v in columns.items()}})
        (self.path / DESIGN_DIR).mkdir(exist_ok=True)
        name = self._part_name(group, batch, clock)
        self._guard(lambda: atomic_parquet(self.path / DESIGN_DIR / name, describe(table, "design")))

    def _part_name(self, group: int, batch: int, start: int) -> str:
        return f"{self.part_prefix}g{group:03d}-b{batch:03d}-s{start:09d}.parquet"

    def _parts(self, pattern: str) -> list[Path]:
        return [p for d in PART_DIRS for p in (self.path / d).glob(pattern)]

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
        for tmp in self._parts(f".{self.prefix}*.tmp" if self.shard else ".*.tmp"):  # never another shard's
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    def has_parts(self, group: int) -> bool:
        return any(p.parent.name == METRICS_DIR for _, p in self._batch_parts(group))

    def first_damaged_part(self, group: int, batch: int) -> tuple[int, Path] | None:
        """(start step, file) of this batch's earliest metric part that cannot be read, if any."""
        for start, part in sorted(self._batch_parts(group, batch)):
            if not parquet_ok(part):
                return start, part
        return None


def _arrow(values: np.ndarray) -> pa.Array:
    """A design column as Arrow: strings as strings, numbers as float64."""
    values = np.asarray(values)
    return pa.array(values.tolist(), pa.string()) if values.dtype.kind in "OUS" else pa.array(values.astype(np.float64))

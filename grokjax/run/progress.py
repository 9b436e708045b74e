"""Live per-run facts and the progress display of a running sweep."""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np

from grokjax.config.schedule import THRESHOLD


@dataclass
class Tracker:
    """Live per-run facts for the progress bar and the end summary (first steps reaching the threshold)."""

    n_runs: int
    t_train: dict[int, int] = field(default_factory=dict)
    t_val: dict[int, int] = field(default_factory=dict)
    val_now: dict[int, float] = field(default_factory=dict)
    diverged: dict[int, int] = field(default_factory=dict)
    n_stopped: int = 0  # stop=resolved: runs that left the program before their budget

    def update(self, ids: np.ndarray, rows: np.ndarray, metrics: dict[str, np.ndarray], dead: np.ndarray) -> None:
        """Take one chunk of the runs ``ids`` [N]: ``metrics`` [K, N] whose rows are at the runs' own steps
        ``rows`` [K, N] (-1: none of its run's)."""
        for j, rid in enumerate(ids.tolist()):
            for name, seen in (("train_acc", self.t_train), ("val_acc", self.t_val)):
                hit = np.flatnonzero((metrics[name][:, j] >= THRESHOLD) & (rows[:, j] >= 0))
                if rid not in seen and hit.size:
                    seen[rid] = int(rows[hit[0], j])
            vals = metrics["val_acc"][:, j]
            vals = vals[np.isfinite(vals)]
            if vals.size:
                self.val_now[rid] = float(vals[-1])
            if dead[j] >= 0:
                self.diverged[rid] = int(dead[j])

    @property
    def n_grokked(self) -> int:
        return sum(v >= THRESHOLD for v in self.val_now.values())


class Reporter:
    """Progress: a rich bar on a terminal, plain lines every ``interval`` seconds otherwise (also while one
    long chunk or a compilation runs: a heartbeat thread prints them), nothing with quiet."""

    def __init__(self, total_model_steps: int, quiet: bool, interval: float = 10.0):
        self.total = total_model_steps
        self.done = 0
        self.quiet = quiet
        self.t0 = time.perf_counter()
        self.last_line = time.perf_counter()
        self.is_tty = sys.stderr.isatty()
        self.progress: Any = None
        self.resumed = 0
        self.first: tuple[float, int] | None = None  # (time, model-steps done) after the first chunk
        self.interval = interval
        self.compile_s = 0.0  # time spent compiling (announced through ``compiling``)
        self.compile_after_first = 0.0
        self.status = "starting"  # the last thing said or updated, repeated by the heartbeat
        self.last_event = time.perf_counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None

    def __enter__(self) -> "Reporter":
        if not self.quiet and self.is_tty:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
            )

            self.progress = Progress(TextColumn("{task.description}"), BarColumn(bar_width=16),
                                     TextColumn("{task.fields[info]}"), TimeRemainingColumn(),
                                     console=Console(stderr=True))
            self.progress.start()
            self.task = self.progress.add_task("sweep", total=self.total, info="")
        elif not self.quiet:
            self._heartbeat = threading.Thread(target=self._beat, name="grokjax-progress", daemon=True)
            self._heartbeat.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join()
        if self.progress is not None:
            self.progress.stop()

    def _beat(self) -> None:
        """Print the last status again whenever ``interval`` seconds pass without a line."""
        while not self._stop.wait(min(1.0, self.interval / 4)):
            now = time.perf_counter()
            with self._lock:
                if now - self.last_line < self.interval or now - self.last_event < self.interval:
                    continue
                self.last_line = now
                print(f"[grokjax] {self.status} (still running: {now - self.last_event:,.0f} s since the last "
                      f"update)", file=sys.stderr, flush=True)

    def skip(self, model_steps: int) -> None:
        """Work done before a resume: counted for the bar, not for the speed."""
        self.done += model_steps
        self.resumed += model_steps
        if self.progress is not None:
            self.progress.update(self.task, completed=self.done)

    def drop(self, model_steps: int) -> None:
        """Work that will not be done (stop=resolved: the rest of a stopped run's budget): the bar's total
        and the ETA shrink to what the live runs still need."""
        self.total -= model_steps
        if self.progress is not None:
            self.progress.update(self.task, total=self.total)

    def rate(self) -> float:
        """Training model-steps/s: measured from the end of the first chunk (which may include lazy
        one-off work), or until then over the wall time minus the compilations announced through
        ``compiling``; either way compilation is excluded."""
        if self.first is not None and self.done > self.first[1]:
            t_first, done_first = self.first
            return (self.done - done_first) / max(time.perf_counter() - t_first - self.compile_after_first, 1e-9)
        return (self.done - self.resumed) / max(time.perf_counter() - self.t0 - self.compile_s, 1e-9)

    @contextlib.contextmanager
    def compiling(self, what: str) -> Iterator[None]:
        """A line when compiling ``what`` starts and one when it ends; its time is kept out of the rate."""
        self.say(f"compiling {what} ...")
        t0 = time.perf_counter()
        try:
            yield
        finally:
            took = time.perf_counter() - t0
            self.compile_s += took
            if self.first is not None:
                self.compile_after_first += took
            self.say(f"compiled {what} in {took:.1f} s")

    def update(self, model_steps: int, where: str, tracker: Tracker, slots: str = "") -> None:
        """After a chunk of ``model_steps``: the bar or a line naming ``where`` (the group) and ``slots`` (the
        busy slots and the queue)."""
        self.done += model_steps
        if self.first is None:
            self.first = (time.perf_counter(), self.done)
        if self.quiet:
            return
        rate = self.rate()
        info = (f"{slots + ' · ' if slots else ''}{rate:,.0f} model-steps/s · "
                f"{tracker.n_grokked}/{tracker.n_runs} at val≥{THRESHOLD} now")
        if tracker.n_stopped:
            info += f" · {tracker.n_runs - tracker.n_stopped} live, {tracker.n_stopped} stopped"
        if self.progress is not None:
            self.progress.update(self.task, completed=self.done, description=where, info=info)
            return
        now = time.perf_counter()
        left = (self.total - self.done) / max(rate, 1e-9)
        pct = 100 * self.done / max(self.total, 1)
        with self._lock:
            self.status = f"{where} {pct:5.1f}%  {info}  ETA {left:,.0f}s"
            self.last_event = now
            if now - self.last_line >= self.interval or self.done >= self.total:
                self.last_line = now
                print(f"[grokjax] {self.status}", file=sys.stderr, flush=True)

    def warn(self, text: str) -> None:
        """A line the user must see, even with --quiet (repairs of a damaged results directory)."""
        if self.progress is not None:
            self.progress.console.print(f"grokjax: {text}")
        else:
            print(f"grokjax: {text}", file=sys.stderr, flush=True)

    def say(self, text: str) -> None:
        if self.quiet:
            return
        if self.progress is not None:
            self.progress.console.print(text)
            return
        with self._lock:
            self.status, self.last_event = text, time.perf_counter()
            self.last_line = self.last_event
            print(text, file=sys.stderr, flush=True)



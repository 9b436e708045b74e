"""Run a whole sweep: groups x model batches x chunks, streaming metrics and checkpoints to one results
directory. The host touches data only at chunk boundaries; ``store.ResultsDir`` owns all I/O."""

from __future__ import annotations

import contextlib
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import jax
import numpy as np

from grokjax.config import Sweep
from grokjax.store import ResultsDir, default_out, estimated_bytes, run_ids
from grokjax.train import Hparams, Program, choose_models_per_batch, engine_for, hparams_for, pad_models

THRESHOLD = 0.99


class Interrupted(Exception):
    """SIGINT/SIGTERM arrived; a checkpoint was written at ``step``."""

    def __init__(self, signum: int, path: Path):
        super().__init__(f"stopped by {signal.Signals(signum).name}; checkpoint written. Continue with: "
                         f"grokjax sweep ... --out {path} --resume")
        self.signum = signum


@dataclass
class Tracker:
    """Live per-run facts for the progress bar and the end summary (first steps reaching the threshold)."""

    n_runs: int
    t_train: dict[int, int] = field(default_factory=dict)
    t_val: dict[int, int] = field(default_factory=dict)
    val_now: dict[int, float] = field(default_factory=dict)
    diverged: dict[int, int] = field(default_factory=dict)

    def update(self, ids: np.ndarray, start: int, metrics: dict[str, np.ndarray], dead: np.ndarray) -> None:
        for j, rid in enumerate(ids.tolist()):
            for name, seen in (("train_acc", self.t_train), ("val_acc", self.t_val)):
                hit = np.flatnonzero(metrics[name][:, j] >= THRESHOLD)
                if rid not in seen and hit.size:
                    seen[rid] = start + int(hit[0])
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
    """Progress: a rich bar on a terminal, plain periodic lines otherwise, nothing with quiet."""

    def __init__(self, total_model_steps: int, quiet: bool):
        self.total = total_model_steps
        self.done = 0
        self.quiet = quiet
        self.t0 = time.perf_counter()
        self.last_line = 0.0
        self.is_tty = sys.stderr.isatty()
        self.progress: Any = None
        self.resumed = 0
        self.first: tuple[float, int] | None = None  # (time, model-steps done) after the first chunk

    def __enter__(self) -> "Reporter":
        if not self.quiet and self.is_tty:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            self.progress = Progress(TextColumn("{task.description}"), BarColumn(bar_width=16),
                                     TextColumn("{task.fields[info]}"), TimeRemainingColumn(),
                                     console=Console(stderr=True))
            self.progress.start()
            self.task = self.progress.add_task("sweep", total=self.total, info="")
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.progress is not None:
            self.progress.stop()

    def skip(self, model_steps: int) -> None:
        """Work done before a resume: counted for the bar, not for the speed."""
        self.done += model_steps
        self.resumed += model_steps
        if self.progress is not None:
            self.progress.update(self.task, completed=self.done)

    def rate(self) -> float:
        """Training model-steps/s: measured from the end of the first chunk, so compilation is excluded
        (the whole wall time, compile included, only while a single chunk has finished)."""
        if self.first is not None and self.done > self.first[1]:
            t_first, done_first = self.first
            return (self.done - done_first) / max(time.perf_counter() - t_first, 1e-9)
        return (self.done - self.resumed) / max(time.perf_counter() - self.t0, 1e-9)

    def update(self, model_steps: int, where: str, step: int, steps: int, tracker: Tracker) -> None:
        self.done += model_steps
        if self.first is None:
            self.first = (time.perf_counter(), self.done)
        if self.quiet:
            return
        rate = self.rate()
        info = (f"step {step}/{steps} · {rate:,.0f} model-steps/s · "
                f"{tracker.n_grokked}/{tracker.n_runs} at val≥{THRESHOLD}")
        if self.progress is not None:
            self.progress.update(self.task, completed=self.done, description=where, info=info)
            return
        now = time.perf_counter()
        if now - self.last_line >= 10 or self.done >= self.total:
            self.last_line = now
            left = (self.total - self.done) / max(rate, 1e-9)
            pct = 100 * self.done / max(self.total, 1)
            print(f"[grokjax] group/batch {where} {pct:5.1f}%  {info}  ETA {left:,.0f}s", file=sys.stderr,
                  flush=True)

    def say(self, text: str) -> None:
        if self.quiet:
            return
        if self.progress is not None:
            self.progress.console.print(text)
        else:
            print(text, file=sys.stderr, flush=True)


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[list[int]]:
    """SIGINT/SIGTERM set a flag that the training loop checks before each chunk."""
    got: list[int] = []
    handler = lambda signum, frame: got.append(signum)  # noqa: E731
    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield got
    finally:
        for s, h in old.items():
            signal.signal(s, h)


@dataclass
class SweepOutcome:
    path: Path
    tracker: Tracker
    model_steps_per_s: float
    seconds: float


def run_sweep(sweep: Sweep, out: Path | None = None, resume: bool = False, quiet: bool = False,
              command: list[str] | None = None) -> SweepOutcome:
    """Train every run of the sweep into ``out`` (default results/<timestamp>-<hash>)."""
    path = Path(out) if out is not None else default_out(sweep)
    groups = sweep.groups()
    if any(g.train.dtype == "float64" for g, _ in groups):
        jax.config.update("jax_enable_x64", True)
    total = sum(g.train.steps * len(runs) for g, runs in groups)
    tracker = Tracker(sweep.n_runs())
    t0 = time.perf_counter()
    with ResultsDir.open(path, sweep, resume, command or [], estimated_bytes(sweep)) as rd, Reporter(total, quiet) as rep, \
            _stop_on_signals() as signals:
        rep.say(f"grokjax: {sweep.n_runs()} runs in {len(groups)} group(s) -> {path}")
        for gi, (group, runs) in enumerate(groups):
            t = group.train
            engine = engine_for(group, runs)
            first = rd.load_checkpoint(gi, 0) if resume else None
            if first is not None:  # the checkpoints' layout fixes the batches, whatever memory is free now
                per_batch, why = first.models_per_batch, f"{first.models_per_batch} models per batch (as checkpointed)"
            else:
                per_batch, why = choose_models_per_batch(engine, len(runs), t.models_per_batch)
            rep.say(f"group {gi}: {group.task.op} p={group.task.p} {group.model.n_layers} layer(s) "
                    f"d_model={group.model.d_model}; {why}")
            for bi, lo in enumerate(range(0, len(runs), per_batch)):
                batch = runs[lo: lo + per_batch]
                ids = run_ids(batch)
                prog = Program.get(engine, per_batch)
                hps: Hparams = prog.put(hparams_for(batch, engine.table.n_pairs))
                state, splits = prog.init(hps)
                start = 0
                ckpt = rd.load_checkpoint(gi, bi) if resume else None
                if ckpt is not None:
                    # Re-pad the models axis: the checkpoint may come from a different number of devices.
                    real = [leaf[: len(batch)] for leaf in ckpt.leaves]
                    host = pad_models(jax.tree.unflatten(jax.tree.structure(state), real), prog.n_models)
                    state = prog.restore(host)
                    start = ckpt.step
                    rep.skip(start * len(batch))
                if resume:
                    rd.clear_parts_from(gi, bi, start)
                every = t.checkpoint_every
                k = prog.chunk_steps
                where = f"g{gi + 1}/{len(groups)} b{bi + 1}"
                for res in prog.run(state, splits, hps, start, len(batch),
                                    want_state=lambda end: end // every != (end - k) // every,
                                    should_stop=lambda: bool(signals)):
                    rd.write_chunk(gi, bi, res.start, ids, res.metrics, t.log_every, t.eval_every, t.steps)
                    tracker.update(ids, res.start, res.metrics, res.diverged_step)
                    if res.state is not None:
                        rd.save_checkpoint(gi, bi, res.end, jax.tree.leaves(res.state), per_batch)
                    rep.update((res.end - res.start) * len(batch), where, res.end, t.steps, tracker)
                if signals:
                    raise Interrupted(signals[0], path)
        rd.mark_complete()
        rate = rep.rate()
    return SweepOutcome(path, tracker, rate, time.perf_counter() - t0)

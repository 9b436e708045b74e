"""One model batch of a group, trained chunk by chunk from a step to its budget.

With ``stop=resolved`` a run leaves the program at the first chunk boundary where its fate is known:
grokked (validation accuracy >= ``THRESHOLD`` at ``patience`` evaluations in a row, once a logged train
accuracy has reached it) or diverged. The live runs are then re-packed into the program of the next
bucket size (the smallest power of two that holds them, at most the batch size), so a batch compiles at
most log2(batch) extra programs and its compute follows its unresolved runs.

A re-pack must pay for its compilation. With ``repack="auto"`` (one process) training never waits for one:
the live runs stay in the current program (the stopped rows dropped, the rest moved up) while the smaller
program compiles in a background thread, and move into it at the first chunk boundary after it is ready.
A re-pack whose saving (the model-steps it saves over the rest of the budget, timed at the current
program's speed) is below what the current program took to compile is not compiled at all.
Which program sizes a batch visits then depends on timing; a run's own numbers do not, as long as the
program shapes round alike (float64; see tests/test_stop.py). ``repack="always"`` re-packs at every stop,
the same way in every process (several processes must agree on every program).

Each chunk's metrics are fetched before the next chunk is dispatched (the stop decision needs them), and
the chunk is handed to the caller (to be written) only after the next one is running, so writing does not
stall the device.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterator, Literal

import jax
import jax.numpy as jnp
import numpy as np

from grokjax.config.schedule import THRESHOLD, chunk_end, is_eval_steps, is_logged_steps
from grokjax.config.structure import GroupConfig
from grokjax.engine.data import hparams_for, pad_models
from grokjax.engine.program import Program
from grokjax.engine.single import Engine, engine_for
from grokjax.grid.expand import Run
from grokjax.store.checkpoints import Checkpoint


def bucket_size(n_live: int, per_batch: int) -> int:
    """Models in the program that trains ``n_live`` runs of a batch of ``per_batch``: the smallest power of
    two >= n_live, at most per_batch (so a shrinking batch visits only a few program sizes)."""
    return min(per_batch, 1 << max(n_live - 1, 0).bit_length())


@dataclass
class Resolver:
    """The stop=resolved counters of the live runs ([L] arrays, in live order)."""

    patience: int
    streak: np.ndarray  # int64: evaluations in a row with val_acc >= THRESHOLD, up to now
    memorized: np.ndarray  # bool: a logged train_acc has reached THRESHOLD

    @classmethod
    def fresh(cls, patience: int, n: int) -> "Resolver":
        return cls(patience, np.zeros(n, np.int64), np.zeros(n, bool))

    def update(self, metrics: dict[str, np.ndarray], logged: np.ndarray, is_eval: np.ndarray,
               diverged_step: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Take one chunk's metrics ([K, L]; ``logged``/``is_eval`` [K] select the rows fit reads) and return
        (resolved [L] bool, reason [L] str)."""
        self.memorized |= (metrics["train_acc"][logged] >= THRESHOLD).any(axis=0)
        for row in metrics["val_acc"][is_eval]:
            self.streak = np.where(row >= THRESHOLD, self.streak + 1, 0)
        diverged = diverged_step >= 0
        grokked = self.memorized & (self.streak >= self.patience)
        return grokked | diverged, np.where(diverged, "diverged", "grokked")

    def keep(self, mask: np.ndarray) -> None:
        self.streak, self.memorized = self.streak[mask], self.memorized[mask]


@dataclass
class BatchChunk:
    """One chunk of a batch as the caller sees it: metrics name -> [K, n] for the runs ``ids`` (those live
    during the chunk), their diverged steps [n], the runs that left the program after it (``stopped``,
    with ``reasons``), and, where asked, the checkpoint of the state after it (the re-packed one)."""

    start: int
    end: int
    ids: np.ndarray
    metrics: dict[str, np.ndarray]
    diverged_step: np.ndarray
    stopped: np.ndarray
    reasons: list[str]
    checkpoint: Checkpoint | None
    own: np.ndarray  # [n] bool: the runs whose rows this process's devices held (it writes their metrics)
    stopped_rows: list[np.ndarray] | None = None  # the state leaves of the ``stopped`` runs, at ``end``
    # snapshot_at_transitions: (run_ids [R], steps [R], parameter leaves [R, ...]) of the t_train and
    # t_val_first the chunk reached
    transitions: tuple[np.ndarray, np.ndarray, list[np.ndarray]] | None = None


class BatchTrainer:
    """Trains the runs ``batch`` (one model batch of a group, ``per_batch`` models at most) in programs
    from ``program(n_models)`` (``program(n_models, repack=True)`` for a re-pack), from a checkpoint or
    from step 0."""

    def __init__(self, engine: Engine, batch: list[Run], per_batch: int, program: Callable[..., Program],
                 ckpt: Checkpoint | None = None, repack: Literal["auto", "always"] = "always"):
        self.engine, self.batch, self.per_batch, self.program = engine, batch, per_batch, program
        self.repack = repack
        self.step_s: float | None = None  # wall seconds per step of the current program, last chunk
        self._last_fetch: float | None = None
        t = engine.group.train
        self.resolving = t.stop == "resolved"
        self.ids = np.array([r.run_id for r in batch], np.int64)
        self.live = np.arange(len(batch)) if ckpt is None or ckpt.live is None else np.asarray(ckpt.live, np.int64)
        self.start = 0 if ckpt is None else ckpt.step
        self.resolver: Resolver | None = None
        if self.resolving:
            self.resolver = (Resolver.fresh(t.patience, len(self.live)) if ckpt is None or ckpt.live is None
                             else Resolver(t.patience, np.asarray(ckpt.streak), np.asarray(ckpt.memorized)))
        self.model_steps = 0  # model-steps computed, padding included
        if len(self.live) and self.start < t.steps:
            size = bucket_size(len(self.live), self.per_batch) if self.resolving else self.per_batch
            self._pack(None if ckpt is None else ckpt.leaves, size)

    def _pack(self, rows: list[np.ndarray] | None, size: int, repack: bool = False) -> None:
        """Build the program of ``size`` models for the live runs, with fresh state or the given host rows
        (live order)."""
        self.size = size
        self.prog = self.program(size, repack=True) if repack else self.program(size)
        runs = [self.batch[i] for i in self.live]
        self.hps = self.prog.put(hparams_for(runs, self.engine.table.n_pairs))
        self.state, self.splits = self.prog.init(self.hps)  # the splits follow from each run's seed
        if rows is not None:
            real = [x[: len(self.live)] for x in rows]
            host = pad_models(jax.tree.unflatten(jax.tree.structure(self.state), real), self.prog.n_models)
            self.state = self.prog.restore(host)
        if self.state.transitions is not None:  # the transitions already reached (and written)
            tr = self.prog.host((self.state.transitions.train_step, self.state.transitions.val_step))
            self._reached = np.stack(tr)[:, : len(self.live)] >= 0

    def _next_size(self, end: int) -> int:
        """The program size for the live runs after the chunk ending at ``end``: their bucket, or, with
        ``auto``, the current size while the bucket's program is not compiled yet. Its compilation then
        starts in the background, unless the model-steps it would save over the rest of the budget, timed at
        the current program's speed, are worth less than what the current program took to compile (on the
        CPU a background compile takes cores from training)."""
        target = bucket_size(len(self.live), self.per_batch)
        if self.repack == "always" or target >= self.size or Program.cached(self.engine, target):
            return target
        left = self.engine.group.train.steps - end
        if self.step_s is None or left * self.step_s * (1 - target / self.size) >= self.prog.compile_s:
            Program.prepare(self.engine, target)
        return self.size

    def _checkpoint(self, end: int, rows: list[np.ndarray] | None = None) -> Checkpoint:
        if rows is None:
            rows = jax.tree.leaves(self.prog.host(self.state)) if len(self.live) else []
        extra = (self.live, self.resolver.streak, self.resolver.memorized) if self.resolver else (None,) * 3
        return Checkpoint(end, rows, self.per_batch, *extra)

    def chunks(self, want_state: Callable[[int], bool] = lambda end: False,
               should_stop: Callable[[], bool] = lambda: False) -> Iterator[BatchChunk]:
        """Train to the budget (or until ``should_stop()``, checked before each dispatch, or until every run
        has stopped), yielding each chunk. The last chunk yielded always carries a checkpoint, as does each
        chunk whose end ``want_state`` asks for."""
        t = self.engine.group.train
        steps, s = t.steps, self.start
        pending: BatchChunk | None = None
        while s < steps and len(self.live) and not should_stop():
            end = chunk_end(s, self.prog.chunk_steps, steps)
            state, metrics, dead = self.prog.train_chunk(self.state, self.splits, self.hps, jnp.int32(s), end - s)
            self.state = state
            self.model_steps += (end - s) * self.prog.n_models
            if pending is not None:
                yield pending  # written while this chunk runs
            pending = self._after_chunk(s, end, metrics, dead, want_state(end) or end == steps)
            s = end
        if pending is not None:
            if pending.checkpoint is None:  # stopped by a signal: the state after the last chunk was kept
                pending.checkpoint = self._checkpoint(pending.end)
            yield pending

    def _after_chunk(self, s: int, end: int, metrics: dict, dead: jax.Array, want: bool) -> BatchChunk:
        """Fetch a chunk's results, drop the runs it resolved (re-packing the rest), and keep a checkpoint
        where wanted or where every run has stopped."""
        t = self.engine.group.train
        res = self.prog.fetch(s, end, metrics, dead, len(self.live))
        now = time.perf_counter()
        if self._last_fetch is not None:  # one chunk's compute (the next one was queued before this fetch)
            self.step_s = (now - self._last_fetch) / (end - s)
        ids = self.ids[self.live]
        own = self.prog.own_rows[: len(self.live)].copy()
        transitions = None
        if res.transition_steps is not None:
            transitions = self._transitions(ids, res.transition_steps)
        stopped, reasons = ids[:0], []
        rows = stopped_rows = None
        if self.resolver is not None and end < t.steps:
            is_eval = is_eval_steps(s, end - s, t.eval_every, t.steps)
            logged = is_logged_steps(s, end - s, t.log_every, t.eval_every, t.steps)
            done, why = self.resolver.update(res.metrics, logged, is_eval, res.diverged_step)
            size = self.size
            if done.any():
                stopped, reasons = ids[done], why[done].tolist()
                self.live = self.live[~done]
                self.resolver.keep(~done)
            if len(self.live):
                size = self._next_size(end)
            if done.any() or size != self.size:
                keep = np.ones(len(ids), bool) if not done.any() else ~done
                host = jax.tree.leaves(self.prog.host(self.state))
                rows = [x[: len(ids)][keep] for x in host]
                stopped_rows = [x[: len(ids)][~keep] for x in host] if done.any() else None
                if len(self.live):
                    self._pack(rows, size, repack=size != self.size)
        self._last_fetch = time.perf_counter()
        ckpt = self._checkpoint(end, rows) if want or not len(self.live) else None
        return BatchChunk(s, end, ids, res.metrics, res.diverged_step, stopped, reasons, ckpt, own, stopped_rows,
                          transitions)

    def _transitions(self, ids: np.ndarray, steps: np.ndarray) -> tuple[np.ndarray, np.ndarray, list] | None:
        """The transitions (t_train, t_val_first: ``steps`` [2, L], live order) first reached in the last
        chunk: their runs, steps and parameters, fetched from the device only when there are some."""
        new = (steps >= 0) & ~self._reached
        self._reached = steps >= 0
        if not new.any():
            return None
        tr = self.prog.host(self.state.transitions)
        kinds = [jax.tree.leaves(tr.train_params), jax.tree.leaves(tr.val_params)]
        rows = [np.flatnonzero(new[k]) for k in range(2)]
        leaves = [np.concatenate([kinds[k][j][rows[k]] for k in range(2)]) for j in range(len(kinds[0]))]
        return (np.concatenate([ids[r] for r in rows]), np.concatenate([steps[k][rows[k]] for k in range(2)]),
                leaves)


def train_alone(group: GroupConfig, runs: list[Run]) -> dict[str, np.ndarray]:
    """Train some runs in one program through the sweep's own loop (``BatchTrainer``), without writing,
    and return stacked metrics name -> [steps + 1, N, ...] (row s: after s updates; the last row measures the
    final parameters; NaN after a run left the program under stop=resolved). For tests and notebooks; the sweep streams its chunks instead of holding them."""
    engine = engine_for(group, runs)
    trainer = BatchTrainer(engine, runs, len(runs), lambda n, repack=False: Program.get(engine, n))
    column = {r.run_id: j for j, r in enumerate(runs)}
    out: dict[str, np.ndarray] = {}
    for c in trainer.chunks():
        cols = [column[i] for i in c.ids.tolist()]
        for name, v in c.metrics.items():
            if name not in out:
                out[name] = np.full((group.train.steps + 1, len(runs), *v.shape[2:]), np.nan, v.dtype)
            out[name][c.start: c.start + len(v), cols] = v
    return out

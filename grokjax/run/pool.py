"""A group's runs trained in one compiled program of S slots, fed by a queue (continuous batching).

Each slot holds one run at the run's own step. At every chunk boundary, a slot whose run has finished (at
its budget, or at a stop under ``stop=resolved``: grokked or diverged) takes the next run of the queue:
fresh parameters, optimizer state and train/validation split from the run's own seeds and hyperparameters,
at step 0 (``Program.refill``: one fixed-shape program, so nothing compiles after the first program).
Warmup, the evaluation and log steps, the budget end and the batch stream all follow the run's own step,
so a run's numbers depend neither on its slot nor on when it was born into one. Runs are born only at chunk
boundaries and every chunk is ``chunk_steps`` long (but a last one that every busy slot ends inside), so a
run's chunk ends, where its stops, snapshots and checkpoints fall, are multiples of ``chunk_steps`` of its
own steps.

A run stops under stop=resolved at the first chunk boundary where its fate is known: grokked (validation
accuracy >= ``THRESHOLD`` at ``patience`` evaluations in a row, once a logged train accuracy has reached it)
or diverged. Each chunk's metrics are fetched before the next chunk is dispatched (the stop and refill
decisions need them), and the chunk is handed to the caller (to be written) only after the next one is
running, so writing does not stall the device.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, NamedTuple

import jax
import numpy as np

from grokjax.config.schedule import THRESHOLD, chunk_rows, is_eval_step, is_logged_step
from grokjax.engine.data import Hparams, hparams_for, pad_models
from grokjax.config.structure import GroupConfig
from grokjax.design.chooser import GROKKED, NOT_GROKKED, PENDING, BoundaryDesign, Pick
from grokjax.engine.program import ChunkResult, Program, optimizer_names, param_names
from grokjax.engine.single import Engine, engine_for
from grokjax.grid.expand import Run
from grokjax.run.warm import WarmStarts
from grokjax.store.checkpoints import Checkpoint


@dataclass
class Resolver:
    """The stop=resolved counters of the slots' runs ([S] arrays, in slot order)."""

    patience: int
    streak: np.ndarray  # int64: evaluations in a row with val_acc >= THRESHOLD, up to now
    memorized: np.ndarray  # bool: a logged train_acc has reached THRESHOLD

    @classmethod
    def fresh(cls, patience: int, n: int) -> "Resolver":
        return cls(patience, np.zeros(n, np.int64), np.zeros(n, bool))

    def update(self, metrics: dict[str, np.ndarray], logged: np.ndarray, is_eval: np.ndarray,
               diverged_step: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Take one chunk's metrics ([K, S]; ``logged`` / ``is_eval``, [K] or [K, S], select the rows fit
        reads) and return (resolved [S] bool, reason [S] str)."""
        logged, is_eval = (np.broadcast_to(m if m.ndim == 2 else m[:, None], metrics["val_acc"].shape)
                           for m in (logged, is_eval))
        self.memorized |= (logged & (metrics["train_acc"] >= THRESHOLD)).any(axis=0)
        for evaluated, row in zip(is_eval, metrics["val_acc"]):
            self.streak = np.where(evaluated, np.where(row >= THRESHOLD, self.streak + 1, 0), self.streak)
        diverged = diverged_step >= 0
        grokked = self.memorized & (self.streak >= self.patience)
        return grokked | diverged, np.where(diverged, "diverged", "grokked")

    def reset(self, slots: np.ndarray) -> None:
        self.streak[slots], self.memorized[slots] = 0, False


class Kept(NamedTuple):
    """Parameters to keep: ``kind`` ("" final or snapshot, "stop", "at" transitions) of the runs
    ``run_ids`` [L], each at its own ``steps`` [L], parameter leaves [L, ...]; with snapshot_optimizer their
    optimizer states' leaves by name [L, ...] ("" and "stop" only)."""

    kind: str
    run_ids: np.ndarray
    steps: np.ndarray
    leaves: list[np.ndarray]
    optimizer: dict[str, np.ndarray] | None = None


@dataclass
class PoolChunk:
    """One chunk of the program as the caller sees it, for the runs ``ids`` [N] busy during it (slot order):
    metrics name -> [K + 1, N] with ``rows`` [K + 1, N] each row's own step (-1: none of its run's,
    ``schedule.chunk_rows``), the diverged steps [N], the parameters to keep, the runs that stopped after it
    (stop=resolved: at their own ``stop_steps``, with ``reasons``) and, where asked, a checkpoint."""

    start: int  # the program's clock: steps of chunks trained so far
    end: int
    ids: np.ndarray
    rows: np.ndarray
    metrics: dict[str, np.ndarray]
    diverged_step: np.ndarray
    own: np.ndarray  # [N] bool: the runs whose rows this process's devices held (it writes their metrics)
    model_steps: int  # the busy runs' steps trained in the chunk
    kept: list[Kept] = field(default_factory=list)
    stopped: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    stop_steps: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    reasons: list[str] = field(default_factory=list)
    dropped: int = 0  # model-steps the stopped runs give up (the rest of their budgets)
    checkpoint: Checkpoint | None = None
    choices: list["Choice"] = field(default_factory=list)  # design=boundary|law: made up to the refill after it


@dataclass(frozen=True)
class Choice:
    """design=boundary|law: the runs ``run_ids`` chosen at the program's ``clock`` (its ``design_round``-th
    refill), each with the pick that chose it."""

    clock: int
    design_round: int
    run_ids: np.ndarray
    picks: list[Pick]

    def columns(self) -> dict[str, np.ndarray]:
        """The records of the data dictionary's design table, [L] each."""
        est = [pk.estimate for pk in self.picks]
        value = lambda f: np.array([getattr(e, f) if e is not None else np.nan for e in est])  # noqa: E731
        return {"design_rule": np.array([pk.rule for pk in self.picks]),
                "acquisition": np.array([pk.acquisition for pk in self.picks]), "x_star_then": value("x_star"),
                "x_star_low_then": value("low"), "x_star_high_then": value("high")}


class SlotPool:
    """Trains the runs ``runs`` of one group (in this order: the queue) in the program of ``n_slots``
    models from ``program(n_models)``, from a checkpoint (its slots) or from the start. With ``design``
    (design=boundary|law) ``runs`` are candidates, and each freed slot takes the one the design picks. With
    ``warm`` (init_from) a run taken into a slot starts from its source's leaves, not a fresh init."""

    def __init__(self, engine: Engine, runs: list[Run], n_slots: int, program: Callable[[int], Program],
                 ckpt: Checkpoint | None = None, repack: str = "auto", design: BoundaryDesign | None = None,
                 warm: WarmStarts | None = None):
        t = engine.group.train
        self.engine, self.runs, self.steps, self.program, self.repack = engine, runs, t.steps, program, repack
        self.step_s: float | None = None  # wall seconds per step of the current program, last chunk
        self.prog = program(n_slots if ckpt is None else ckpt.n_slots)
        m = self.prog.n_models
        self.n_slots = m if ckpt is None else ckpt.n_slots  # padding rows are slots too
        self.ids = np.array([r.run_id for r in runs], np.int64)
        self.table = hparams_for(runs, engine.table.n_pairs)
        self.slot_runs, self.slot_steps = np.full(m, -1, np.int64), np.full(m, t.steps, np.int64)
        self.design, self.choices = design, []  # choices: made since the last chunk handed out
        self.order, self.outcome = np.zeros(0, np.int64), np.full(len(runs) if design else 0, PENDING, np.int8)
        outcomes = t.stop == "resolved" or design is not None  # the design learns each run's outcome
        self.resolver = Resolver.fresh(t.patience, m) if outcomes else None
        self.queued, self.clock, self.done_steps, self.dropped_steps, self.n_stopped = 0, 0, 0, 0, 0
        self.rounds = 0
        self.model_steps = 0  # model-steps computed, empty slots and padding included
        self.n_params = len(param_names(engine))  # the state's first leaves are the parameters
        self.opt_names = optimizer_names(engine) if t.snapshot_optimizer else []  # the leaves after them
        self.warm = warm
        if ckpt is None:
            first = self._take(min(self.n_waiting, self.n_slots))
            self.slot_runs[: len(first)], self.slot_steps[: len(first)] = first, 0
            self.hps = self.prog.put(self._slot_hparams())
            self.state, self.splits = self.prog.init(self.hps)  # the splits follow from each run's seed
            self._warm_start(np.arange(len(first)))
        else:
            self._restore(ckpt)
        self._reached = np.zeros((2, m), bool)
        if self.state.transitions is not None:  # the transitions already reached (and written)
            tr = self.prog.host((self.state.transitions.train_step, self.state.transitions.val_step))
            self._reached = np.stack(tr) >= 0
        if self.queued < len(runs):
            self.prog.prepare_refill()

    def _restore(self, ckpt: Checkpoint) -> None:
        s = ckpt.n_slots
        self.clock, self.queued = ckpt.step, ckpt.queued
        self.done_steps, self.dropped_steps, self.n_stopped = ckpt.done_steps, ckpt.dropped_steps, ckpt.n_stopped
        if self.design is not None:
            self.order, self.outcome, self.rounds = ckpt.order.copy(), ckpt.outcome.copy(), ckpt.rounds
        self.slot_runs[:s], self.slot_steps[:s] = ckpt.slot_runs, ckpt.slot_steps
        if self.resolver is not None:
            self.resolver.streak[:s], self.resolver.memorized[:s] = ckpt.streak, ckpt.memorized
        self.hps = self.prog.put(self._slot_hparams())
        self.state, self.splits = self.prog.init(self.hps)
        rows = [x[:s] for x in ckpt.leaves]
        self.state = self.prog.restore(pad_models(jax.tree.unflatten(jax.tree.structure(self.state), rows),
                                                  self.prog.n_models))

    def _slot_hparams(self) -> Hparams:
        """Host hyperparameters [n_models] of the slots' runs (an empty slot: the first run's)."""
        return jax.tree.map(lambda x: x[np.maximum(self.slot_runs, 0)], self.table)

    @property
    def n_busy(self) -> int:
        return int((self.slot_runs >= 0).sum())

    @property
    def n_waiting(self) -> int:
        """Runs still to be taken into a slot: the queue's, or the design's runs not yet chosen (none once the
        chosen runs have trained model_step_budget model-steps)."""
        if self.design is not None:
            limit = self.engine.group.train.model_step_budget
            if limit and self.done_steps >= limit:  # the model-step budget is spent: the busy runs finish
                return 0
            return min(self.design.budget, len(self.runs)) - self.queued
        return len(self.runs) - self.queued

    def _take(self, k: int) -> np.ndarray:
        """The next ``k`` runs (indices into ``runs``): the queue's, or the design's picks (recorded)."""
        if self.design is None:
            taken = np.arange(self.queued, self.queued + k)
        else:
            picks = self.design.pick(k, self.order, self.outcome)
            taken = np.array([pk.index for pk in picks], np.int64)
            self.order = np.concatenate([self.order, taken])
            self.choices.append(Choice(self.clock, self.rounds, self.ids[taken], picks))
            self.rounds += 1
        self.queued += len(taken)
        return taken

    def _fill(self) -> None:
        """Give each free slot the next queued run: fresh state from its own seeds, step 0."""
        free = np.flatnonzero(self.slot_runs[: self.n_slots] < 0)[: self.n_waiting]
        if not len(free):
            return
        taken = self._take(len(free))
        free = free[: len(taken)]
        self.slot_runs[free], self.slot_steps[free] = taken, 0
        self._reached[:, free] = False
        if self.resolver is not None:
            self.resolver.reset(free)
        self.hps = self.prog.put(self._slot_hparams())
        mask = np.zeros(self.prog.n_models, bool)
        mask[free] = True
        self.state, self.splits = self.prog.refill(self.state, self.splits, self.hps, mask)
        self._warm_start(free)

    def _warm_start(self, slots: np.ndarray) -> None:
        """Warm starts: the runs just taken into ``slots`` whose source is another sweep's kept state start from
        it (its leaves written over the fresh ones on the host, then put back on the devices)."""
        starts = [] if self.warm is None else [(s, self.warm.leaves(int(self.slot_runs[s]))) for s in slots]
        starts = [(s, leaves) for s, leaves in starts if leaves is not None]
        if not starts:
            return
        host = [np.array(x) for x in jax.tree.leaves(self.prog.host(self.state))]
        for slot, leaves in starts:
            for i, value in leaves:
                host[i][slot] = value
        self.state = self.prog.restore(jax.tree.unflatten(jax.tree.structure(self.state), host))

    def _shrink(self) -> None:
        """stop=resolved, once the queue is empty: move the busy runs into the program of their bucket (the
        smallest power of two that holds them) when that is smaller and pays: with repack=auto, when the
        model-steps it saves over the longest busy run's rest, timed at the current program's speed, are
        worth more than what the current program took to compile (or it is compiled already); with
        repack=always at once (the same programs every time, as over several processes)."""
        busy = np.flatnonzero(self.slot_runs >= 0)
        if self.engine.group.train.stop != "resolved" or self.n_waiting or not len(busy):
            return
        size = self.prog.n_models
        target = min(size, 1 << max(len(busy) - 1, 0).bit_length())
        if target >= size:
            return
        left = int((self.steps - self.slot_steps[busy]).max())
        if self.repack == "auto" and not Program.cached(self.engine, target) and self.step_s is not None and (
                left * self.step_s * (1 - target / size) < self.prog.compile_s):
            return
        smaller = self.program(target)
        host = jax.tree.leaves(self.prog.host(self.state))
        self.prog = smaller
        m = self.prog.n_models
        runs, steps = self.slot_runs[busy], self.slot_steps[busy]
        self.slot_runs, self.slot_steps = np.full(m, -1, np.int64), np.full(m, self.steps, np.int64)
        self.slot_runs[: len(busy)], self.slot_steps[: len(busy)] = runs, steps
        self.n_slots, self._reached = m, pad_models(self._reached.T[busy], m).T
        self.resolver.streak, self.resolver.memorized = (pad_models(x[busy], m) for x in (
            self.resolver.streak, self.resolver.memorized))
        self.hps = self.prog.put(self._slot_hparams())
        self.state, self.splits = self.prog.init(self.hps)
        self.state = self.prog.restore(pad_models(jax.tree.unflatten(jax.tree.structure(self.state),
                                                                     [x[busy] for x in host]), m))

    def chunks(self, want_state: Callable[[int, int], bool] = lambda end, n: False,
               should_stop: Callable[[], bool] = lambda: False) -> Iterator[PoolChunk]:
        """Train until every run has finished (or until ``should_stop()``, checked once per chunk boundary,
        before the refill), yielding each chunk with the design's choices made after it. The last chunk
        yielded always carries a checkpoint, as does each chunk of ``n`` steps ending at clock ``end`` where
        ``want_state(end, n)``; every checkpoint holds the slots as they were before that boundary's refill,
        so a resume makes the same refill (and the same choices) again."""
        pending: PoolChunk | None = None
        stopping = should_stop()
        if not stopping:
            self._fill()
            self._shrink()
        self._since = 0.0
        while self.n_busy and not stopping:
            busy = self.slot_runs >= 0
            n = int(min(self.prog.chunk_steps, (self.steps - self.slot_steps[busy]).max()))
            starts = self.slot_steps.copy()
            self.state, metrics, dead = self.prog.train_chunk(self.state, self.splits, self.hps, starts, n)
            self.model_steps += n * self.prog.n_models
            if pending is not None:
                t_yield = time.perf_counter()
                yield pending  # written while this chunk runs
                self._since = time.perf_counter() - t_yield
            t0 = time.perf_counter()
            res = self.prog.fetch(metrics, dead, self.prog.n_models)
            if pending is not None:  # a whole chunk's compute (the next was queued before this fetch)
                self.step_s = (time.perf_counter() - t0 + self._since) / n
            pending = self._after_chunk(starts, n, res, want_state)
            stopping = should_stop()
            if not stopping:
                self._fill()
                self._shrink()
            pending.choices, self.choices = self.choices, []
            self._since = 0.0
        if pending is not None:
            if pending.checkpoint is None:  # stopped by a signal: the state after the last chunk is kept
                pending.checkpoint = self._checkpoint(jax.tree.leaves(self.prog.host(self.state)))
            yield pending

    def _after_chunk(self, starts: np.ndarray, n: int, res: ChunkResult, want_state: Callable) -> PoolChunk:
        """Advance the busy slots' steps, stop the runs the chunk resolved, free the slots of finished runs,
        and gather what the chunk keeps: parameters (final, snapshots, stops, transitions) and a checkpoint
        where wanted or where the last run has finished."""
        rows = chunk_rows(starts, n, self.steps)
        cols = np.flatnonzero(self.slot_runs >= 0)
        ends = np.minimum(starts + n, self.steps)
        start, self.clock = self.clock, self.clock + n
        c = PoolChunk(start, self.clock, self.ids[self.slot_runs[cols]], rows[:, cols],
                      {k: v[:, cols] for k, v in res.metrics.items()}, res.diverged_step[cols],
                      self.prog.own_rows[cols].copy(), int((ends - starts)[cols].sum()))
        self.slot_steps[cols] = ends[cols]
        if res.transition_steps is not None:
            c.kept += self._transitions(cols, res.transition_steps)
        stopped, reasons = self._resolve(rows, res, cols)
        final = cols[self.slot_steps[cols] == self.steps]
        every = self.engine.group.train.snapshot_every
        snap = np.setdiff1d(cols[(self.slot_steps[cols] == self.steps) | (
            (every > 0) & (self.slot_steps[cols] % max(every, 1) == 0))], stopped)
        finished = np.union1d(final, stopped)
        if self.design is not None:
            self._note_outcomes(final, stopped, reasons)
        want = want_state(self.clock, n) or (not self.n_waiting and len(finished) == len(cols))
        host = jax.tree.leaves(self.prog.host(self.state)) if len(snap) or len(stopped) or want else None
        c.kept += self._kept("", snap, host) + self._kept("stop", stopped, host)
        c.stopped, c.stop_steps, c.reasons = self.ids[self.slot_runs[stopped]], self.slot_steps[stopped], reasons
        c.dropped = int((self.steps - self.slot_steps[stopped]).sum())
        self.done_steps, self.dropped_steps = self.done_steps + c.model_steps, self.dropped_steps + c.dropped
        self.n_stopped += len(stopped)
        self.slot_runs[finished], self.slot_steps[finished] = -1, self.steps
        if want:
            c.checkpoint = self._checkpoint(host)
        return c

    def _note_outcomes(self, final: np.ndarray, stopped: np.ndarray, reasons: list[str]) -> None:
        """design=boundary|law: the outcomes of the runs that finished: grokked if it stopped grokked, or if it
        reached its budget memorized with its last evaluation at validation accuracy >= THRESHOLD."""
        r = self.resolver
        at_budget = np.where(r.memorized[final] & (r.streak[final] >= 1), GROKKED, NOT_GROKKED)
        by_stop = np.array([GROKKED if why == "grokked" else NOT_GROKKED for why in reasons], np.int8)
        for slots, outcome in ((final, at_budget), (stopped, by_stop)):
            self.outcome[self.slot_runs[slots]] = outcome

    def _resolve(self, rows: np.ndarray, res: ChunkResult, cols: np.ndarray) -> tuple[np.ndarray, list[str]]:
        """stop=resolved: the slots (of ``cols``, short of their budget) whose runs the chunk resolved
        (with design=boundary under stop=budget, the counters are kept but no run stops)."""
        if self.resolver is None:
            return cols[:0], []
        t = self.engine.group.train
        logged = (rows >= 0) & is_logged_step(rows, t.log_every, t.eval_every, t.steps)
        is_eval = (rows >= 0) & is_eval_step(rows, t.eval_every, t.steps)
        done, why = self.resolver.update(res.metrics, logged, is_eval, res.diverged_step)
        if t.stop != "resolved":
            return cols[:0], []
        slots = cols[done[cols] & (self.slot_steps[cols] < self.steps)]
        return slots, why[slots].tolist()

    def _kept(self, kind: str, slots: np.ndarray, host: list[np.ndarray] | None) -> list[Kept]:
        """The parameters of the runs in ``slots`` at their steps, from the host state leaves."""
        if not len(slots):
            return []
        leaves = [x[slots] for x in host[: self.n_params]]
        opt = dict(zip(self.opt_names, (x[slots] for x in host[self.n_params:]))) if self.opt_names else None
        return [Kept(kind, self.ids[self.slot_runs[slots]], self.slot_steps[slots].copy(), leaves, opt)]

    def _transitions(self, cols: np.ndarray, steps: np.ndarray) -> list[Kept]:
        """The transitions (t_train, t_val_first: ``steps`` [2, n_models]) that the busy slots ``cols`` first
        reached in the last chunk, with their parameters (fetched from the device only when there are
        some)."""
        new = (steps >= 0) & ~self._reached
        new[:, np.setdiff1d(np.arange(new.shape[1]), cols)] = False
        self._reached = steps >= 0
        if not new.any():
            return []
        tr = self.prog.host(self.state.transitions)
        kinds = [jax.tree.leaves(tr.train_params), jax.tree.leaves(tr.val_params)]
        slots = [np.flatnonzero(new[k]) for k in range(2)]
        leaves = [np.concatenate([kinds[k][j][slots[k]] for k in range(2)]) for j in range(len(kinds[0]))]
        at = np.concatenate(slots)
        return [Kept("at", self.ids[self.slot_runs[at]], np.concatenate([steps[k][slots[k]] for k in range(2)]),
                     leaves)]

    def _checkpoint(self, host: list[np.ndarray]) -> Checkpoint:
        s, r = self.n_slots, self.resolver
        streak, memorized = (r.streak, r.memorized) if r else (np.zeros(s, np.int64), np.zeros(s, bool))
        return Checkpoint(self.clock, [x[:s] for x in host], self.slot_runs[:s].copy(), self.slot_steps[:s].copy(),
                          streak[:s].copy(), memorized[:s].copy(), self.queued, self.done_steps,
                          self.dropped_steps, self.n_stopped, self.rounds, self.order.copy(),
                          self.outcome.copy())


def train_alone(group: GroupConfig, runs: list[Run], n_slots: int | None = None) -> dict[str, np.ndarray]:
    """Train some runs through the sweep's own loop (``SlotPool``: ``n_slots`` slots, default one per run),
    without writing, and return stacked metrics name -> [steps + 1, N, ...] by each run's own step (row s:
    after s updates; the last row measures the final parameters; NaN after a run left the program under
    stop=resolved). For tests and notebooks; the sweep streams its chunks instead."""
    engine = engine_for(group, runs)
    pool = SlotPool(engine, runs, n_slots or len(runs), lambda n: Program.get(engine, n))
    column = {r.run_id: j for j, r in enumerate(runs)}
    out: dict[str, np.ndarray] = {}
    for c in pool.chunks():
        for j, rid in enumerate(c.ids.tolist()):
            real = c.rows[:, j] >= 0
            for name, v in c.metrics.items():
                if name not in out:
                    out[name] = np.full((group.train.steps + 1, len(runs), *v.shape[2:]), np.nan, v.dtype)
                out[name][c.rows[real, j], column[rid]] = v[real, j]
    return out

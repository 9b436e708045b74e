"""Run a whole sweep: each group one program of slots fed by a queue of its runs, trained chunk by chunk,
streaming metrics and checkpoints to one results directory. The host touches data only at chunk boundaries; ``store.directory.ResultsDir`` owns all I/O."""

from __future__ import annotations

import contextlib
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from grokjax.config.schedule import crosses
from grokjax.config.structure import GroupConfig
from grokjax.engine.memory import choose_models_per_batch
from grokjax.engine.program import Program, param_names, state_shapes
from grokjax.engine.single import Engine, engine_for
from grokjax.errors import Interrupted, UserError
from grokjax.design.chooser import BoundaryDesign
from grokjax.design.designs import CHOOSERS
from grokjax.grid.design import design_axes, design_runs, design_slots
from grokjax.grid.expand import Sweep, changed_settings
from grokjax.grid.plan import disk_bytes
from grokjax.grid.shard import Shard
from grokjax.run.pool import PoolChunk, SlotPool
from grokjax.run.cluster import Peers
from grokjax.run.progress import Reporter, Tracker
from grokjax.run.warm import WarmStarts, warm_starts
from grokjax.store.checkpoints import Checkpoint, DamagedFile
from grokjax.store.directory import ResultsDir, default_out


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


def describe(group: GroupConfig) -> str:
    """One line naming a group's task and network, for progress output."""
    m, t = group.model, group.train
    task = ("digits" if group.task.dataset == "digits" else "s5" if group.task.op == "s5"
            else f"{group.task.op} mod {group.task.p}")
    if m.arch == "mlp":
        inputs = "64 pixels" if group.task.dataset == "digits" else m.mlp_input
        net = f"MLP {m.n_layers}x{m.d_mlp} ({inputs}, {m.act})"
    else:
        net = f"transformer {m.n_layers} layer(s) d_model={m.d_model}" + (f" {m.block}" if m.block != "prenorm" else "")
    extras = [t.optimizer] + (["orthograd"] if t.orthograd else []) + \
        ([f"grokfast={t.grokfast}"] if t.grokfast != "none" else []) + ([t.loss] if t.loss != "softmax" else [])
    return f"{task}, {net}, {' '.join(extras)}"


def _checkpointed_slots(rd: ResultsDir, group: int, rep: Reporter) -> int | None:
    """The slots of the group's readable checkpoint, or None (naming a damaged one)."""
    try:
        ckpt = rd.load_checkpoint(group, 0)
    except DamagedFile as e:
        rep.warn(str(e))
        return None
    return None if ckpt is None else ckpt.n_slots


def _usable_checkpoint(rd: ResultsDir, group: int, batch: int, state: list[Any], rep: Reporter
                       ) -> Checkpoint | None:
    """The group's checkpoint if it is readable and holds this group's state (``state``: one model's
    leaves, shapes and dtypes); otherwise None (the group then trains again from the start), saying why."""
    try:
        ckpt = rd.load_checkpoint(group, batch)
    except DamagedFile as e:
        rep.warn(f"{e}: training group {group + 1} again from the start")
        rd.discard_checkpoint(group, batch)
        return None
    if ckpt is None:
        return None
    if len(ckpt.leaves) != len(state) or any(
            a.shape[1:] != b.shape or a.dtype != b.dtype for a, b in zip(ckpt.leaves, state)):
        rep.warn(f"{rd.path}: the checkpoint of group {group + 1} does not hold this program's state (written "
                 f"by another grokjax version?): training the group again from the start")
        rd.discard_checkpoint(group, batch)
        return None
    return ckpt


def _resume_point(rd: ResultsDir, group: int, batch: int, engine: Engine, rep: Reporter, peers: Peers
                  ) -> Checkpoint | None:
    """The checkpoint a group resumes from, or None (from the start): judged by process 0 (which discards an
    unusable checkpoint), whose verdict the other processes take before they read the same file."""
    step = -1
    if peers.leader:
        ckpt = _usable_checkpoint(rd, group, batch, state_shapes(engine), rep)
        part, params = rd.first_damaged_part(group, batch), rd.first_damaged_params(group, batch)
        # A damaged file from before the checkpoint is not written again by resuming from it: the group trains
        # again from the start (later files are cleared, and written again, either way).
        for damaged, before in ((part, part is not None and ckpt is not None and part[0] < ckpt.step),
                                (params, params is not None and ckpt is not None and params[0] <= ckpt.step)):
            if before:
                rep.warn(f"{damaged[1]} is damaged and its checkpoint is later: training group {group + 1} "
                         f"again from the start")
                ckpt = None
        step = -1 if ckpt is None else ckpt.step
    if peers.agree(step) < 0:
        return None
    return ckpt if peers.leader else rd.load_checkpoint(group, batch)


@contextlib.contextmanager
def _out_of_memory_is_one_line(path: Path | None) -> Iterator[None]:
    """An allocation that fails while compiling or training (XLA's RESOURCE_EXHAUSTED, or MemoryError on the
    host) becomes one line: what ran out and how to go on. The results directory (``path``, once open) is
    closed on the way out, its lock released; what was checkpointed stays, so --resume continues."""
    try:
        yield
    except (MemoryError, RuntimeError) as e:  # jaxlib's XlaRuntimeError is a RuntimeError
        if not isinstance(e, MemoryError) and "RESOURCE_EXHAUSTED" not in str(e) and "out of memory" not in str(
                e).lower():
            raise
        what = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        if path is None:
            raise UserError(f"out of memory while compiling: {what}; nothing was written: use fewer models per "
                            f"program (models_per_batch=N), a smaller model, or more memory") from None
        raise UserError(f"out of memory while training: {what}; what was checkpointed is kept: with more memory, "
                        f"continue with grokjax sweep ... --out {path} --resume (or train again into a new --out "
                        f"with models_per_batch=N or a smaller model)") from None


@dataclass
class SweepOutcome:
    path: Path
    tracker: Tracker
    model_steps_per_s: float
    seconds: float
    model_steps: int  # computed by this process, padding included (stop=resolved: fewer than the budget's)


def run_sweep(sweep: Sweep, out: Path | None = None, resume: bool = False, quiet: bool = False,
              command: list[str] | None = None, shard: Shard | None = None, peers: Peers | None = None
              ) -> SweepOutcome:
    """Train every run of the sweep (or of one ``shard`` of it) into ``out`` (default
    results/<timestamp>-<hash>). With ``peers`` of several processes (``run.cluster.start``), every
    process calls this with the same arguments and trains its share of each program; process 0 prints."""
    peers = peers or Peers()
    if peers.count > 1 and shard is not None:
        raise UserError(f"--shard {shard.label}: not supported with several processes; run either one sweep "
                        f"over all processes or independent shards")
    if peers.count > 1 and out is None:
        raise UserError("a multi-process sweep needs --out DIR, a directory every process sees")
    if shard is not None and sweep.values["train.design"] != ["grid"]:
        raise UserError(f"--shard {shard.label}: not supported with design={sweep.values['train.design'][0]} "
                        f"(each choice needs every outcome so far); run the design as one sweep, over several "
                        f"processes if need be")
    quiet = quiet or not peers.leader
    path = Path(out) if out is not None else default_out(sweep)
    groups = [(g, [r for r in runs if shard is None or shard.has(r.run_id)]) for g, runs in sweep.groups()]
    total = sum(g.train.steps * _n_trained(g, runs) for g, runs in groups)
    tracker = Tracker(sum(_n_trained(g, runs) for g, runs in groups))
    t0 = time.perf_counter()
    ResultsDir.preflight(path, sweep, resume, shard, needed_bytes=disk_bytes(sweep))  # before anything compiles
    engines = [engine_for(group, runs) if runs else None for group, runs in groups]
    warm = [warm_starts(e, runs) if runs else None for e, (_, runs) in zip(engines, groups)]  # checked now
    peers.sync("grokjax-preflight")  # no process judges DIR after process 0 has started writing there
    with Reporter(total, quiet) as rep:
        rep.say(changed_settings(sweep))
        # A new sweep plans its slots (compiling, and refusing what cannot fit) before anything is
        # written; a resumed one takes the slots its checkpoints were written with.
        plans = {}
        for gi, (e, (g, runs)) in enumerate(zip(engines, groups)):
            if not resume and runs:
                with rep.compiling(f"group {gi + 1} of {len(groups)} ({_n_trained(g, runs)} runs)"), \
                        _out_of_memory_is_one_line(None):
                    n, why = _choose_slots(e, g, runs)
                # Free memory may differ between hosts: every process takes process 0's batch size.
                plans[gi] = (peers.agree(n), why)
        with _open(path, sweep, resume, command or [], shard, peers) as rd, _stop_on_signals() as signals, \
                _out_of_memory_is_one_line(path):
            model_steps = _train_groups(sweep, groups, engines, plans, rd, rep, tracker, resume, signals, path,
                                        shard, peers, warm)
            peers.sync("grokjax-trained")  # every process's parts are written
            if peers.leader:
                rd.mark_complete()
        rate = rep.rate()
    return SweepOutcome(path, tracker, rate, time.perf_counter() - t0, model_steps)


def _open(path: Path, sweep: Sweep, resume: bool, command: list[str], shard: Shard | None, peers: Peers
          ) -> ResultsDir:
    """Process 0 opens DIR (lock, sweep.json, runs.parquet); the others follow once it has."""
    rd = None
    if peers.leader:
        rd = ResultsDir.open(path, sweep, resume, command, disk_bytes(sweep), shard, peers.count)
    peers.sync("grokjax-opened")
    return rd if rd is not None else ResultsDir.follow(path, sweep, (peers.index, peers.count))


def _program(engine: Engine, n_models: int, rep: Reporter, what: str) -> Program:
    if Program.cached(engine, n_models):
        return Program.get(engine, n_models)
    with rep.compiling(what):
        return Program.get(engine, n_models)


def _train_groups(sweep: Sweep, groups: list, engines: list, plans: dict, rd: ResultsDir, rep: Reporter,
                  tracker: Tracker, resume: bool, signals: list[int], path: Path, shard: Shard | None = None,
                  peers: Peers = Peers(), warm: list | None = None) -> int:
    """Train every group's runs, each group in one program of slots fed by a queue (``SlotPool``), into
    ``rd`` and return the model-steps computed; raises Interrupted on SIGINT/SIGTERM, naming the last
    checkpoint written.

    Over several processes, process 0 judges what a resume finds (and repairs it) and the others take its
    word; it alone writes checkpoints and stops, and each process writes the metrics of its own models.
    Every refill follows from the chunk's metrics, which every process holds whole, so all agree on it."""
    saved: tuple[int, int] | None = None
    model_steps = 0
    of_shard = f" (shard {shard.label} of {sweep.n_runs()} runs)" if shard else ""
    rep.say(f"grokjax: {tracker.n_runs} runs{of_shard} in {sum(bool(r) for _, r in groups)} group(s) -> {path}")
    stop = lambda: peers.largest(signals[0] if signals else 0) > 0  # noqa: E731
    for gi, (group, runs) in enumerate(groups):
        if not runs:  # this shard has no run in the group
            continue
        axes = design_axes(sweep) if group.train.design != "grid" else None
        pool = _open_pool(gi, len(groups), group, runs, engines[gi], plans, rd, rep, tracker, resume, peers, axes,
                          warm[gi] if warm else None)
        where = f"group {gi + 1}/{len(groups)}"
        every = group.train.checkpoint_every
        for c in pool.chunks(want_state=lambda end, n: crosses(end, every, n), should_stop=stop):
            _keep_chunk(rd, gi, c, engines[gi], peers, tracker)
            if c.checkpoint is not None:
                saved = (gi, c.checkpoint.step)
            rep.drop(c.dropped)
            waiting = "to choose" if pool.design else "queued"
            rep.update(c.model_steps, where, tracker, f"{pool.n_busy}/{pool.n_slots} slots busy, "
                                                      f"{pool.n_waiting} {waiting}")
        model_steps += pool.model_steps
        if signum := peers.largest(signals[0] if signals else 0):
            raise Interrupted(signum, path, saved, shard.label if shard else None)
    return model_steps


def _keep_chunk(rd: ResultsDir, gi: int, c: PoolChunk, engine: Engine, peers: Peers, tracker: Tracker) -> None:
    """Every write of one chunk: this process's metrics rows; on process 0 the parameters it keeps (before
    the checkpoint that counts them as kept), its stops and its checkpoint."""
    t = engine.group.train
    if c.own.any():
        rd.write_chunk(gi, 0, c.start, c.ids[c.own], {k: v[:, c.own] for k, v in c.metrics.items()},
                       c.rows[:, c.own], t.log_every, t.eval_every, t.steps, engine.train_metric_names)
    tracker.update(c.ids, c.rows, c.metrics, c.diverged_step)
    tracker.n_stopped += len(c.stopped)
    if not peers.leader:
        return
    for kept in c.kept:
        rd.save_params(gi, 0, c.end, kept.run_ids, param_names(engine), kept.leaves, kept.steps, kept.kind,
                       kept.optimizer)
    if len(c.stopped):
        rd.write_stops(gi, 0, c.start, c.stopped, c.stop_steps, c.reasons)
    for choice in c.choices:
        rd.write_choices(gi, 0, choice.clock, choice.run_ids, choice.design_round, choice.columns())
    if c.checkpoint is not None:
        rd.save_checkpoint(gi, 0, c.checkpoint)


def _n_trained(group: GroupConfig, runs: list) -> int:
    """The runs of a group that will train: all of them, or the design's share."""
    return design_runs(group.train.runs, len(runs)) if group.train.design != "grid" and runs else len(runs)


def _choose_slots(engine: Engine, group: GroupConfig, runs: list) -> tuple[int, str]:
    """The group's slots: as many as fit (at most one per run), or for a design a quarter of its runs
    (``grid.design.design_slots``), either at most ``models_per_batch``."""
    t = group.train
    if t.design == "grid":
        return choose_models_per_batch(engine, len(runs), t.models_per_batch)
    n_runs = _n_trained(group, runs)
    n, why = choose_models_per_batch(engine, t.models_per_batch or design_slots(n_runs), t.models_per_batch)
    return n, why if t.models_per_batch else f"{n} slots (design={t.design}: a quarter of its {n_runs} runs)"


def _design(axes: tuple[str, str | None] | None, group: GroupConfig, runs: list,
            n_slots: int) -> BoundaryDesign | None:
    """design=boundary|law: the chooser over the group's runs along ``axes`` (x, and the second axis or
    None), its first ``n_slots`` picks space-filling."""
    if axes is None:
        return None
    x = np.array([float(r.get(axes[0])) for r in runs])
    by = None if axes[1] is None else np.unique([r.get(axes[1]) for r in runs], return_inverse=True)[1]
    return CHOOSERS[group.train.design](x, design_runs(group.train.runs, len(runs)), n_slots, by)


def _open_pool(gi: int, n_groups: int, group: GroupConfig, runs: list, engine: Engine, plans: dict,
               rd: ResultsDir, rep: Reporter, tracker: Tracker, resume: bool, peers: Peers,
               axes: tuple[str, str | None] | None = None, warm: WarmStarts | None = None) -> SlotPool:
    """The group's slot pool: from its checkpoint when resuming (the files written after it cleared), else
    from the start with the planned number of slots (a resume without a usable checkpoint clears the
    group's files first)."""
    checkpointed = _checkpointed_slots(rd, gi, rep) if resume and peers.leader else None
    checkpointed = peers.agree(checkpointed or 0) or None if resume else None
    ckpt = None
    if checkpointed is not None:  # the checkpoint's layout fixes the slots, whatever memory is free now
        n_slots, why = checkpointed, f"{checkpointed} slots (as checkpointed)"
        ckpt = _resume_point(rd, gi, 0, engine, rep, peers)
    if ckpt is None:
        if resume and peers.leader and (rd.checkpoint_batches(gi) or rd.has_parts(gi)):
            rep.warn(f"group {gi + 1}: no readable checkpoint; training the group again from the start")
            rd.clear_group(gi)
        peers.sync(f"grokjax-group-{gi}")
        n_slots, why = plans.get(gi) or _choose_slots(engine, group, runs)
    design = _design(axes, group, runs, n_slots)
    queue = (f"{design.budget} of its {len(runs)} runs to be chosen" if design else f"{len(runs)} runs queued")
    rep.say(f"group {gi + 1} of {n_groups}: {describe(group)}; {why}, {queue}")
    program = lambda n: _program(engine, n, rep, f"group {gi + 1} of {n_groups} ({n} slots)")  # noqa: E731
    pool = SlotPool(engine, runs, n_slots, program, ckpt, group.train.repack if peers.count == 1 else "always",
                    design, warm)
    if ckpt is not None:
        rep.skip(ckpt.done_steps)
        rep.drop(ckpt.dropped_steps)
        tracker.n_stopped += ckpt.n_stopped
        if peers.leader:
            rd.clear_parts_from(gi, 0, ckpt.step)
            rd.clear_params_after(gi, 0, ckpt.step)
    peers.sync(f"grokjax-pool-{gi}")  # no process writes before the leader has cleared
    return pool

"""Run a whole sweep: groups x model batches x chunks, streaming metrics and checkpoints to one results
directory. The host touches data only at chunk boundaries; ``store.results.ResultsDir`` owns all I/O."""

from __future__ import annotations

import contextlib
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import jax

from grokjax.engine.data import Hparams, hparams_for, pad_models
from grokjax.engine.memory import choose_models_per_batch
from grokjax.engine.program import Program
from grokjax.engine.single import engine_for
from grokjax.run.progress import Reporter, Tracker
from grokjax.spec.grid import Sweep
from grokjax.store.results import ResultsDir, default_out, estimated_bytes, run_ids


class Interrupted(Exception):
    """SIGINT/SIGTERM arrived; a checkpoint was written at ``step``."""

    def __init__(self, signum: int, path: Path):
        super().__init__(f"stopped by {signal.Signals(signum).name}; checkpoint written. Continue with: "
                         f"grokjax sweep ... --out {path} --resume")
        self.signum = signum


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

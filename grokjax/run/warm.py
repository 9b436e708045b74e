"""Warm starts: a run with ``init_run`` >= 0 starts from the parameters that the results directory
``init_from`` kept for its run ``init_run`` at ``init_step`` (-1: the last kept, its final parameters),
instead of a fresh initialisation. Everything else about the run is its own: its split, batches, per-model
numbers and budget, its steps counted from 0. With ``init_optimizer=true`` it also takes that run's
optimizer state (the Adam moments, the step counts that drive the warmup and Grokfast's filter; kept by a
source sweep with ``snapshot_optimizer=true``), except the per-model numbers the state holds
(``optax.inject_hyperparams``' ``hyperparams``), which stay this run's. So a warm start with the source's
settings at step S continues the source run as if it had not stopped (for full batch; minibatches are drawn
by the run's own step).

All sources are checked before anything is written: the run exists, the step was kept, the shapes fit.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any

import numpy as np

from grokjax.engine.program import optimizer_names, param_names, state_shapes
from grokjax.engine.single import Engine
from grokjax.errors import UserError
from grokjax.grid.expand import Run

# The keys that fix a network's parameter shapes, named in a mismatch (those a runs table has).
SHAPE_KEYS = ("dataset", "op", "p", "tokens", "arch", "n_layers", "d_model", "n_heads", "d_mlp", "mlp_input",
              "layer_norm", "bias", "init", "pos")
OPTIMIZER_KEYS = ("optimizer", "grokfast", "orthograd", "warmup_steps")
KEEP_OWN = "hyperparams"  # optimizer-state leaves under this name (per-model numbers) stay the run's own


def describe(values: dict[str, Any], keys: tuple[str, ...]) -> str:
    return " ".join(f"{k}={str(values[k]).lower() if isinstance(values[k], bool) else values[k]}"
                    for k in keys if k in values)


def _own(engine: Engine) -> dict[str, Any]:
    g = engine.group
    return dataclasses.asdict(g.task) | dataclasses.asdict(g.model) | dataclasses.asdict(g.train)


class WarmStarts:
    """The warm starts of one group's ``runs``: ``leaves(i)`` gives the state leaves that run ``i`` (an index
    into ``runs``) starts from, each as (position in the state's leaves, value), or None for a fresh start."""

    def __init__(self, engine: Engine, runs: list[Run]):
        import grokjax.store.load as load

        t = engine.group.train
        self.path = Path(t.init_from)
        self.with_optimizer = t.init_optimizer
        self.sources = [(int(r.get("hp.init_run")), int(r.get("hp.init_step"))) for r in runs]
        if all(run < 0 for run, _ in self.sources):
            raise UserError(f"init_from={t.init_from}: no run starts from it; give init_run=N (a run_id of "
                            f"{t.init_from}, or a list of them) too")
        try:
            self.source = load.load(self.path)
        except UserError as e:
            raise UserError(f"init_from={t.init_from}: {e}") from None
        self.names, self.shapes = param_names(engine), state_shapes(engine)
        self.opt_names = optimizer_names(engine)
        self.own = _own(engine)
        self._rows = self.source.runs.set_index("run_id")
        for key in dict.fromkeys(s for s in self.sources if s[0] >= 0):
            self._load(*key)  # every source checked (and cached) before anything trains

    @functools.lru_cache(maxsize=64)
    def _load(self, run: int, step: int) -> list[tuple[int, np.ndarray]]:
        try:
            at, tree = self.source._params(run, None if step < 0 else step)
        except UserError as e:
            raise UserError(f"init_run={run}, init_step={step} (init_from={self.path}): {e}") from None
        flat = {}
        _flatten(tree, "", flat)
        row = self._rows.loc[run].to_dict()
        if set(flat) != set(self.names) or any(flat[n].shape != self.shapes[i].shape
                                               for i, n in enumerate(self.names)):
            raise UserError(f"init_run={run} of {self.path}: its parameters ({describe(row, SHAPE_KEYS)}) do not "
                            f"fit this sweep's model ({describe(self.own, SHAPE_KEYS)})")
        out = [(i, flat[n].astype(self.shapes[i].dtype)) for i, n in enumerate(self.names)]
        if self.with_optimizer:
            out += self._optimizer(run, at, row)
        return out

    def _optimizer(self, run: int, at: int, row: dict[str, Any]) -> list[tuple[int, np.ndarray]]:
        state = self.source.optimizer_state(run, at)
        if not state:
            raise UserError(f"init_optimizer=true: run {run} of {self.path} kept no optimizer state at step {at} "
                            f"(its sweep needs snapshot_optimizer=true); or drop init_optimizer")
        first = len(self.names)
        taken = [(first + j, n) for j, n in enumerate(self.opt_names) if KEEP_OWN not in n]
        if any(n not in state or state[n].shape != self.shapes[i].shape for i, n in taken):
            raise UserError(f"init_optimizer=true: the optimizer state of run {run} of {self.path} "
                            f"({describe(row, OPTIMIZER_KEYS)}) does not fit this sweep's "
                            f"({describe(self.own, OPTIMIZER_KEYS)})")
        return [(i, state[n].astype(self.shapes[i].dtype)) for i, n in taken]

    def leaves(self, index: int) -> list[tuple[int, np.ndarray]] | None:
        run, step = self.sources[index]
        return None if run < 0 else self._load(run, step)


def _flatten(tree: dict[str, Any], prefix: str, out: dict[str, np.ndarray]) -> None:
    for k, v in tree.items():
        if isinstance(v, dict):
            _flatten(v, f"{prefix}{k}.", out)
        else:
            out[prefix + k] = np.asarray(v)


def warm_starts(engine: Engine, runs: list[Run]) -> WarmStarts | None:
    """The group's warm starts, checked; None without init_from."""
    return WarmStarts(engine, runs) if engine.group.train.init_from else None

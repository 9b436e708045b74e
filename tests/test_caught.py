"""Fast tests for bugs a reviewer would miss (each was planted once, and went uncaught, or was caught only by
the slow tier): the arm keys in sweep.json's axes, the censored delay, bfloat16 on every layout, and the
stop=resolved bookkeeping (the confirm rule's skipped evaluations, hyperparameters after a re-pack,
transition snapshots before the update)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from conftest import merged

import grokjax
from grokjax.analysis.fit import fit_results
from grokjax.analysis.survival import cells, survival_arrays
from grokjax.engine.data import pad_models
from grokjax.engine.program import ChunkResult
from grokjax.engine.single import ModelState, engine_for
from grokjax.grid.expand import build_sweep
from grokjax.config.schedule import chunk_rows
from grokjax.run.pool import SlotPool
from grokjax.run.sweep import run_sweep
from grokjax.store.load import Results

MLP = ["arch=mlp", "p=11", "d_mlp=16", "frac=0.5", "lr=1e-2", "eval_every=5", "chunk_steps=10", "dtype=float64"]


def test_the_arm_keys_are_axes_of_the_record_and_cells_of_the_fit(tmp_path):
    """Two arms differing only in an arm key: sweep.json's axes name it, so the fit keeps one cell per arm
    (without it both arms' seeds were pooled into one cell)."""
    sweep = build_sweep(None, merged(MLP, ["steps=10", "seeds=2", "wd=1"]), arms=["lr=0.01", "lr=0.003"])
    assert "hp.lr" in sweep.to_json()["axes"]
    run_sweep(sweep, tmp_path / "r", quiet=True)
    r = grokjax.load(tmp_path / "r")
    assert "lr" in r.axes
    table = cells(fit_results(r))
    assert sorted(table["lr"].tolist()) == [0.003, 0.01] and (table["n_seeds"] == 2).all()


def test_a_censored_delay_is_censored_at_the_budget_less_t_train():
    fits = pd.DataFrame({"phase": ["memorization", "grokking"], "budget": [1000.0, 1000.0],
                         "censored": [True, False], "t_val": [math.nan, 700.0], "t_train": [100.0, 200.0],
                         "t_val_first": [math.nan, 650.0]})
    times, observed = survival_arrays(fits, "delay")
    np.testing.assert_array_equal(times, [900.0, 500.0])
    np.testing.assert_array_equal(observed, [False, True])


@pytest.mark.parametrize("args", [["layer_norm=true"], ["block=postnorm"], ["pos=sinusoidal", "tokens=4"],
                                  ["block=ln_residual", "init=torch", "act=gelu"],
                                  ["arch=mlp", "dataset=digits"], ["arch=mlp", "mlp_input=embed"]])
def test_bfloat16_computes_every_layout_in_bfloat16(args):
    """Every matmul of a bfloat16 forward pass takes bfloat16 operands, and its logits differ from float32's
    by bfloat16's rounding (not zero: the float32 model run by mistake; not more: another model)."""
    base = ["p=11", "d_model=16", "n_heads=2", "d_mlp=32", "frac=0.5", "steps=10", "seeds=1"]
    args = merged([b for b in base if not (b == "p=11" and "dataset=digits" in args)], args)
    logits = {}
    for precision in ("float32", "bfloat16"):
        (group, runs), = build_sweep(None, [*args, f"precision={precision}"]).groups()
        engine = engine_for(group, runs)
        inputs = jnp.asarray(engine.table.inputs[:64])
        params = engine.model.init(jax.random.key(0), inputs[:1])["params"]
        if precision == "bfloat16":
            jaxpr = jax.make_jaxpr(engine.forward)(params, inputs)
            dots = [e for e in _equations(jaxpr.jaxpr) if e.primitive.name == "dot_general"]
            assert dots and all(v.aval.dtype == jnp.bfloat16 for e in dots for v in e.invars), args
        logits[precision] = np.asarray(engine.forward(params, inputs), np.float64)
    err = np.abs(logits["bfloat16"] - logits["float32"]).max() / np.abs(logits["float32"]).max()
    assert 1e-5 < err < 5e-2, (args, err)


def _equations(jaxpr):
    for e in jaxpr.eqns:
        yield e
        for sub in jax.core.jaxprs_in_params(e.params):
            yield from _equations(sub)


# -- stop=resolved bookkeeping ---------------------------------------------------------------------

def _results(val: list[float], stop_step: int | None, steps: int = 100, eval_every: int = 10) -> Results:
    """A one-run results directory in memory: evaluations every 10 steps with ``val`` accuracies."""
    ev = np.arange(len(val)) * eval_every
    metrics = pd.DataFrame({"run_id": 0, "step": ev, "train_loss": 0.1, "train_acc": 1.0, "val_loss": 0.1,
                            "val_acc": val, "param_norm": 1.0})
    runs = pd.DataFrame({"run_id": [0], "steps": [steps], "eval_every": [eval_every], "seed": [0]})
    stops = pd.DataFrame({"run_id": [0] if stop_step else [], "stop_step": [stop_step] if stop_step else [],
                          "reason": ["grokked"] if stop_step else []})
    return Results("mem", {"spec": {"axes": ["hp.seed"]}}, runs, metrics,
                   stops=stops.astype({"run_id": "int64", "stop_step": "int64"}))


def test_the_confirm_rule_counts_the_evaluations_a_stopped_run_skipped():
    """A run stopped as grokked at step 60 after three evaluations at 1.0 (t_val 30): the evaluations it
    skipped (60 to its budget of 100) confirm t_val; without them it would be censored as unconfirmed."""
    stopped = fit_results(_results([0.1, 0.1, 0.2, 1.0, 1.0, 1.0], stop_step=60))
    assert stopped.t_val[0] == 30 and not stopped.censored[0] and not stopped.unconfirmed[0]
    unstopped = fit_results(_results([0.1, 0.1, 0.2, 1.0, 1.0, 1.0], stop_step=None))  # still running
    assert unstopped.censored[0] and unstopped.unconfirmed[0]


NEVER_MEMORIZES = 55.0  # the wd of a run whose train accuracy stays 0 (so it never stops)


class _FakeProgram:
    """A program without XLA for SlotPool's bookkeeping: each model's state holds its own wd, and its
    val_acc reaches 1 at the own step its wd names (train_acc 1 throughout, but 0 for NEVER_MEMORIZES), but only while the state's wd equals the hyperparameter
    wd of its row (a run that took another run's state or hyperparameters reads NaN); its opt_state counts
    the steps it trained (none past its budget)."""

    def __init__(self, engine, n: int):
        self.engine, self.n_models, self.chunk_steps, self.compile_s = engine, n, 10, 0.0
        self.own_rows = np.ones(n, bool)

    def put(self, hps):
        return pad_models(hps, self.n_models)

    def init(self, hps):
        w = hps.wd.astype(np.float64)
        return ModelState({"w": w}, {"seen": np.zeros(self.n_models)}, np.full(self.n_models, -1, np.int32), None), None

    def prepare_refill(self):
        pass

    def refill(self, state, splits, hps, mask):
        fresh, _ = self.init(hps)
        return jax.tree.map(lambda new, old: np.where(mask, new, old), fresh, state), splits

    def train_chunk(self, state, splits, hps, starts, n):
        steps = self.engine.group.train.steps
        rows = chunk_rows(np.asarray(starts), n, steps)
        same = state.params["w"] == hps.wd
        val = np.where(same & (rows >= 0), (rows >= state.params["w"]).astype(float), np.nan)
        train = np.where(state.params["w"] == NEVER_MEMORIZES, 0.0, np.ones_like(val))
        metrics = {"train_loss": np.zeros_like(val), "train_acc": train, "val_acc": val,
                   "val_loss": 1 - val, "param_norm": np.ones_like(val)}
        trained = np.clip(steps - np.asarray(starts), 0, n)
        state = state._replace(opt_state={"seen": state.opt_state["seen"] + trained})
        return state, metrics, state.diverged_step

    def fetch(self, metrics, dead, n_real):
        return ChunkResult({k: v[:, :n_real] for k, v in metrics.items()}, dead[:n_real])

    def host(self, state):
        return jax.tree.map(np.array, state)

    def restore(self, host):
        return host


@pytest.mark.parametrize("n_slots, repack", [(8, "always"), (8, "auto"), (2, "always"), (3, "auto")])
def test_runs_keep_their_own_hyperparameters_and_state_through_stops_births_and_repacks(n_slots, repack):
    """Runs that grok at their own step (their wd) stop at the chunk boundary after patience evaluations;
    freed slots take the queued runs, and once the queue is empty the rest move into smaller programs.
    Every run's metrics stay its own, its state counts its own steps from its birth, and it stops where its
    own schedule says: a run born into a slot whose run had just grokked does not inherit its counters (one
    grokked from step 0 still needs patience evaluations, one that never memorizes never stops)."""
    groks_at = [20.0, 70.0, 10.0, 90.0, 40.0, 1000.0, 0.0, NEVER_MEMORIZES]
    sweep = build_sweep(None, merged(MLP, ["steps=100", "stop=resolved", "patience=3", "seeds=1",
                                           f"wd={groks_at}".replace(" ", "")]))
    (group, runs), = sweep.groups()
    engine = engine_for(group, runs)
    sizes = []
    pool = SlotPool(engine, runs, n_slots, lambda n: sizes.append(n) or _FakeProgram(engine, n), repack=repack)
    seen: dict[int, dict[int, float]] = {r.run_id: {} for r in runs}
    stops = {}
    for c in pool.chunks(want_state=lambda end, n: True):
        for j, rid in enumerate(c.ids.tolist()):
            real = c.rows[:, j] >= 0
            seen[rid].update(zip(c.rows[real, j].tolist(), c.metrics["val_acc"][real, j].tolist()))
        stopped = [k for k in c.kept if k.kind == "stop"]
        for rid, step, w, counted in ((r, s, k.leaves[0][i], k.leaves[1][i]) for k in stopped
                                      for i, (r, s) in enumerate(zip(k.run_ids.tolist(), k.steps.tolist()))):
            stops[rid] = step
            assert w == groks_at[rid] and counted == step  # its own wd, and its own steps counted
        assert c.stop_steps.tolist() == [stops[r] for r in c.stopped.tolist()]
    for r in runs:
        steps, got = np.array(sorted(seen[r.run_id])), np.array([seen[r.run_id][s] for s in sorted(seen[r.run_id])])
        assert not np.isnan(got).any(), r.run_id  # never another run's state
        assert steps[0] == 0 and (np.diff(steps) == 1).all()  # every own step, from 0
        np.testing.assert_array_equal(got, (steps >= groks_at[r.run_id]).astype(float))
    # patience 3 (evaluations every 5 steps): resolved at the end of the chunk holding evaluation t + 10
    want = {i: 10 * ((int(t) + 10) // 10 + 1) for i, t in enumerate(groks_at) if t != NEVER_MEMORIZES}
    want = {i: end for i, end in want.items() if end < 100}  # one that resolves at its budget just ends
    assert stops == want
    assert sizes[0] == n_slots and sizes == sorted(sizes, reverse=True) and sizes[-1] < n_slots  # the tail shrank


def test_transition_snapshots_hold_the_parameters_the_step_was_measured_with(tmp_path):
    """With an evaluation at every step, the parameters kept at t_train and t_val_first reproduce the stored
    train accuracy and val loss of those steps (taken after the update, they would not)."""
    from test_params import _val_acc

    sweep = build_sweep(None, merged(MLP, ["steps=60", "eval_every=1", "lr=3e-2", "wd=1", "seeds=1", "frac=0.6",
                                           "snapshot_at_transitions=true"]))
    run_sweep(sweep, tmp_path / "r", quiet=True)
    r = grokjax.load(tmp_path / "r")
    fits = fit_results(r)
    t_train = int(fits.t_train[0])
    assert t_train in r.kept_steps(0)
    row = r.metrics[(r.metrics.run_id == 0) & (r.metrics.step == t_train)].iloc[0]
    acc, loss = _val_acc(sweep, 0, r.model(0, t_train))
    assert loss == pytest.approx(float(row.val_loss), rel=1e-9) and acc == pytest.approx(float(row.val_acc))
    before = r.metrics[(r.metrics.run_id == 0) & (r.metrics.step == t_train - 1)].iloc[0]
    assert before.train_acc < 0.99 <= row.train_acc

"""design=boundary: the boundary estimate against a synthetic logistic ground truth, the rule that picks
runs, the pool that trains the picks (a fake program without XLA, whose runs grok or not as a known rule
says), determinism and resume, the records and the refusals."""

from __future__ import annotations

import jax
import numpy as np
import pandas as pd
import pytest
from conftest import merged

from grokjax.analysis.boundary import boundary_lines, fit_boundaries
from grokjax.cli import main
from grokjax.errors import UserError
from grokjax.config.schedule import chunk_rows
from grokjax.design.boundary import estimate
from grokjax.design.chooser import GROKKED, NOT_GROKKED, PENDING, BoundaryDesign
from grokjax.design.designs import CHOOSERS
from grokjax.engine.data import pad_models
from grokjax.engine.program import ChunkResult
from grokjax.engine.single import ModelState, engine_for
from grokjax.grid.expand import build_sweep
from grokjax.run.pool import SlotPool

X_TRUE, SLOPE = 0.2, 4.0  # the synthetic boundary: P(grok | x) = sigmoid(SLOPE * log10(x / X_TRUE))
LEVELS = np.logspace(-2, 0.5, 24)


def _truth(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-SLOPE * np.log10(x / X_TRUE)))


@pytest.mark.parametrize("draw", range(5))
def test_the_estimate_covers_a_synthetic_boundary(draw):
    """192 runs (24 values x 8 seeds) drawn from a known logistic: x* within 0.15 decades of the truth and
    inside the 95% interval, the interval a fraction of a decade wide; a quarter of the runs gives a wider
    interval that still holds it."""
    rng = np.random.default_rng(draw)
    x = np.repeat(LEVELS, 8)
    grokked = rng.random(x.size) < _truth(x)
    e = estimate(x, grokked)
    assert abs(np.log10(e.x_star / X_TRUE)) < 0.15 and e.low < X_TRUE < e.high, e
    assert np.log10(e.high / e.low) < 0.4 and not e.edge and e.n == 192 and e.n_grokked == grokked.sum()
    few = estimate(x[::4], grokked[::4], x)
    assert few.low < X_TRUE < few.high and few.high / few.low > e.high / e.low


def test_an_estimate_beyond_the_range_says_so():
    x = np.repeat(LEVELS, 2)
    e = estimate(x, x > 0.011)  # only the smallest value fails: the boundary sits at the range's low end
    assert e.edge and e.low < LEVELS[1]


def _simulate(budget: int, slots: int, draw: int) -> tuple[np.ndarray, np.ndarray]:
    """A design over 24 values x 8 seeds in ``slots`` slots: at each refill the two oldest runs resolve
    and two new ones are picked, the others still training. (The order of picks, every outcome.)"""
    x = np.repeat(LEVELS, 8)
    outcomes = (np.random.default_rng(draw).random(x.size) < _truth(x)).astype(np.int8)
    design = BoundaryDesign(x, budget, slots)
    order, outcome = np.zeros(0, np.int64), np.full(x.size, PENDING, np.int8)
    training: list[int] = []
    while len(order) < budget:
        done, training = training[:2], training[2:]
        outcome[done] = outcomes[done]
        picks = [p.index for p in design.pick(slots - len(training), order, outcome)]
        order, training = np.concatenate([order, picks]).astype(np.int64), training + picks
    outcome[order] = outcomes[order]
    return order, outcome


def test_the_design_spreads_first_then_runs_where_outcomes_are_uncertain():
    """The space-filling start covers both ends of the range; later picks gather within half a decade of
    x*, adding seeds there; the same outcomes give the same picks; the estimate from the picks holds x*."""
    x = np.repeat(LEVELS, 8)
    order, outcome = _simulate(64, 16, 0)
    first = x[order[:16]]
    assert first.min() == LEVELS[0] and first.max() == LEVELS[-1] and len(np.unique(first)) == 16
    later = x[order[16:]]
    near = np.abs(np.log10(later / X_TRUE)) < 0.5
    assert near.mean() > 0.75, np.round(later, 3)
    assert np.unique(later, return_counts=True)[1].max() >= 4  # seeds added where outcomes disagree
    assert np.array_equal(order, _simulate(64, 16, 0)[0])
    e = estimate(x[order], outcome[order], x)
    assert e.low < X_TRUE < e.high


def test_picks_stop_at_the_budget_and_at_the_last_candidate():
    design = BoundaryDesign(np.repeat([0.1, 1.0], 2), 3, 2)
    first = design.pick(2, np.zeros(0, np.int64), np.full(4, PENDING, np.int8))
    assert [p.index for p in first] == [0, 2] and first[0].estimate is None  # both ends, nothing known yet
    order = np.array([0, 2])
    outcome = np.array([NOT_GROKKED, PENDING, GROKKED, PENDING], np.int8)
    more = design.pick(5, order, outcome)
    assert len(more) == 1 and more[0].index in (1, 3) and np.isfinite(more[0].acquisition)
    assert more[0].estimate is not None and design.pick(5, np.array([0, 2, 1]), outcome) == []


FRACS = np.array([0.3, 0.5, 0.7])
WD_STAR = {0.3: 0.6, 0.5: 0.2, 0.7: 0.08}  # the boundary curve: more data, less weight decay needed


def _truth_2d(wd: np.ndarray, frac: np.ndarray) -> np.ndarray:
    star = np.vectorize(WD_STAR.get)(frac)
    return 1 / (1 + np.exp(-SLOPE * np.log10(wd / star)))


def test_with_two_axes_the_design_maps_the_boundary_at_each_value_of_the_second():
    """16 wd values x 3 fracs x 6 seeds, 96 of 288 chosen in 16 slots (two resolve per refill): the start
    covers every frac at both ends of wd; later picks spread over the fracs and gather near each one's wd*;
    each frac's estimate from the picks holds its own wd*."""
    levels = np.logspace(-2, 0.5, 16)
    wd, frac = np.meshgrid(levels, FRACS, indexing="ij")
    wd, frac = np.repeat(wd.ravel(), 6), np.repeat(frac.ravel(), 6)
    by = np.searchsorted(FRACS, frac)
    outcomes = (np.random.default_rng(1).random(wd.size) < _truth_2d(wd, frac)).astype(np.int8)

    def simulate():
        design, slots = BoundaryDesign(wd, 96, 16, by), 16
        order, outcome, training = np.zeros(0, np.int64), np.full(wd.size, PENDING, np.int8), []
        while len(order) < 96:
            done, training = training[:2], training[2:]
            outcome[done] = outcomes[done]
            picks = [p.index for p in design.pick(slots - len(training), order, outcome)]
            order, training = np.concatenate([order, picks]).astype(np.int64), training + picks
        outcome[order] = outcomes[order]
        return order, outcome

    order, outcome = simulate()
    later = order[16:]
    near = np.abs(np.log10(wd[later] / np.vectorize(WD_STAR.get)(frac[later]))) < 0.4
    assert near.mean() > 0.45, near.mean()  # 0.29 of the candidates lie this near
    for b, f in enumerate(FRACS):
        start = order[:16][by[order[:16]] == b]
        assert wd[start].min() == levels[0] and wd[start].max() == levels[-1], (f, wd[start])
        assert (by[later] == b).sum() >= 12, (f, np.bincount(by[later]))  # every frac gets its share
        centre = np.median(np.log10(wd[later][by[later] == b] / WD_STAR[f]))
        assert abs(centre) < 0.3, (f, centre)  # around its own wd*, not a wd* pooled over the fracs
        mine = order[by[order] == b]
        e = estimate(wd[mine], outcome[mine], wd)
        assert e.low < WD_STAR[f] < e.high, (f, e)


def test_the_boundary_curve_and_the_critical_fraction_of_a_fitted_grid():
    """A wd x frac grid whose runs grok by a known curve: wd* at each frac and frac* at each wd (the
    critical training fraction) hold the truth, as laws rows naming the other axis; censored runs count as
    not grokked and diverged runs are left out; the summary prints one line per direction."""
    levels = np.logspace(-2, 0.5, 12)
    wd, frac = np.meshgrid(levels, FRACS, indexing="ij")
    wd, frac = np.repeat(wd.ravel(), 8), np.repeat(frac.ravel(), 8)
    rng = np.random.default_rng(0)
    phase = np.where(rng.random(wd.size) < _truth_2d(wd, frac), "grokking", "memorization")
    phase[::17] = "diverged"
    fits = pd.DataFrame({"wd": wd, "frac": frac, "seed": np.tile(range(8), wd.size // 8), "group": 0,
                         "steps": 1000, "phase": phase})
    fits.attrs.update(axes=["wd", "frac", "seed"], arm_keys=[])
    found = fit_boundaries(fits)
    along_wd = {b.by_value: b for b in found if b.x_name == "wd"}
    assert set(along_wd) == set(FRACS) and all(b.by == "frac" for b in along_wd.values())
    for f, b in along_wd.items():
        assert b.estimate.low < WD_STAR[f] < b.estimate.high, (f, b)
        assert b.n_candidates == 96 and b.estimate.n == (phase[frac == f] != "diverged").sum()
    # frac* at each wd: P(grok) = sigmoid(SLOPE log10(wd / wd*(frac))) crosses 1/2 where wd*(frac) = wd
    frac_star = {w: b for b in found if b.x_name == "frac" for w in [b.by_value]}
    assert all(b.by == "wd" for b in frac_star.values()) and len(frac_star) >= 4
    b = frac_star[min(frac_star, key=lambda w: abs(np.log10(w / 0.2)))]  # the wd nearest frac=0.5's wd*
    assert b.estimate.low < 0.5 < b.estimate.high, b
    row = b.row()
    assert row["target"] == "boundary" and row["x_name"] == "frac" and row["by"] == "wd" and row["wd"] == b.by_value
    lines = boundary_lines(found)
    assert len(lines) == 2 and lines[0].startswith("boundary wd* at 1000 steps, by frac: 0.3 → ")
    assert lines[1].startswith("boundary frac* at 1000 steps, by wd: ")


MLP = ["arch=mlp", "p=11", "d_mlp=16", "frac=0.5", "lr=1e-2", "eval_every=5", "chunk_steps=10", "dtype=float64"]


class _Groks:
    """A program without XLA: a run groks at step 0 (val_acc 1, so it stops after patience evaluations)
    when its wd is above its seed's own threshold near X_TRUE, and otherwise never (val_acc 0, to its
    budget); its state holds its wd (a run that took another run's state reads NaN)."""

    def __init__(self, engine, n: int):
        self.engine, self.n_models, self.chunk_steps, self.compile_s = engine, n, 10, 0.0
        self.own_rows = np.ones(n, bool)

    def put(self, hps):
        return pad_models(hps, self.n_models)

    def init(self, hps):
        return ModelState({"w": hps.wd.astype(np.float64), "s": hps.seed.astype(np.float64)}, {},
                          np.full(self.n_models, -1, np.int32), None), None

    def prepare_refill(self):
        pass

    def refill(self, state, splits, hps, mask):
        fresh, _ = self.init(hps)
        return jax.tree.map(lambda new, old: np.where(mask, new, old), fresh, state), splits

    def train_chunk(self, state, splits, hps, starts, n):
        rows = chunk_rows(np.asarray(starts), n, self.engine.group.train.steps)
        w, s = state.params["w"], state.params["s"]
        groks = w > X_TRUE * 10 ** (0.3 * (((s * 0.618) % 1) - 0.5))
        same = (w == hps.wd) & (rows >= 0)
        val = np.where(same, np.broadcast_to(groks.astype(float), rows.shape), np.nan)
        metrics = {"train_loss": np.zeros_like(val), "train_acc": np.ones_like(val), "val_acc": val,
                   "val_loss": 1 - val, "param_norm": np.ones_like(val)}
        return state, metrics, state.diverged_step

    def fetch(self, metrics, dead, n_real):
        return ChunkResult({k: v[:, :n_real] for k, v in metrics.items()}, dead[:n_real])

    def host(self, state):
        return jax.tree.map(np.array, state)

    def restore(self, host):
        return host


def _design_pool(ckpt=None, extra=(), design="boundary"):
    sweep = build_sweep(None, merged(MLP, ["steps=100", "stop=resolved", f"design={design}", "runs=24",
                                           "wd=logspace(-2,0.5,12)", "seeds=8", *extra]))
    (group, runs), = sweep.groups()
    engine = engine_for(group, runs)
    x = np.array([r.get("hp.wd") for r in runs])
    design = CHOOSERS[design](x, 24, 6)
    return SlotPool(engine, runs, 6, lambda n: _Groks(engine, n), ckpt, "always", design), x


def _drain(pool, stop_after=None):
    """Train the pool; return the chunks' choices (clock, run_ids) and the last checkpoint."""
    chosen, last = [], None
    for i, c in enumerate(pool.chunks(want_state=lambda end, n: True,
                                      should_stop=lambda: stop_after is not None and len(chosen) >= stop_after)):
        chosen += [(ch.clock, ch.design_round, ch.run_ids.tolist()) for ch in c.choices]
        last = c.checkpoint
    return chosen, last


@pytest.mark.parametrize("design", ["boundary", "law"])
def test_the_pool_trains_the_designs_picks_and_resumes_to_the_same_picks(design):
    """24 of 96 candidates in 6 slots: grokked runs free their slots early and the design fills them; every
    outcome recorded is the run's own; a pool resumed from a checkpoint after a few refills makes the same
    later choices; the picks hold the boundary (design=boundary)."""
    pool, x = _design_pool(design=design)
    chosen, _ = _drain(pool)
    ids = [rid for _, _, run_ids in chosen for rid in run_ids]
    assert len(ids) == len(set(ids)) == 24 and chosen[0][:2] == (0, 0) and len(chosen[0][2]) == 6
    assert [r for _, r, _ in chosen] == list(range(len(chosen))) and len(chosen) > 4
    assert np.array_equal(np.sort(pool.order), np.sort(ids)) and (pool.outcome[pool.order] != PENDING).all()
    seeds = np.array([pool.runs[i].get("hp.seed") for i in pool.order], np.float64)
    groks = x[pool.order] > X_TRUE * 10 ** (0.3 * (((seeds * 0.618) % 1) - 0.5))
    np.testing.assert_array_equal(pool.outcome[pool.order], groks.astype(np.int8))
    e = estimate(x[pool.order], pool.outcome[pool.order], x)
    assert e.low < X_TRUE < e.high or design == "law"
    again, _ = _drain(_design_pool(design=design)[0])
    assert again == chosen
    first, ckpt = _drain(_design_pool(design=design)[0], stop_after=3)
    assert ckpt is not None and len(first) == 3 and len(ckpt.order) == sum(len(c[2]) for c in first)
    resumed, _ = _drain(_design_pool(ckpt, design=design)[0])
    assert first + resumed == chosen


def test_a_model_step_budget_ends_the_choosing():
    """model_step_budget=B: a refill chooses runs only while the chosen runs have trained < B model-steps;
    after that the busy runs finish and nothing more is chosen, so fewer than runs=24 are trained."""
    budget = 600
    pool, _ = _design_pool(extra=[f"model_step_budget={budget}"])
    spent, picked = [], []
    for c in pool.chunks(want_state=lambda end, n: False, should_stop=lambda: False):
        spent.append(pool.done_steps)
        picked.append(sum(len(ch.run_ids) for ch in c.choices))
    over = next(i for i, s in enumerate(spent) if s >= budget)
    assert 6 < sum(picked) < 24 and sum(picked[over + 1:]) == 0 and picked[over] == 0, (spent, picked)
    assert all(s < budget for s, k in zip(spent[1:], picked[1:]) if k), (spent, picked)
    assert pool.n_busy == 0 and spent[-1] < budget + 6 * 100


def test_the_boundary_of_a_fitted_grid():
    """fit_boundary reads the phases of a one-group sweep along its one swept number; none without one."""
    x = np.repeat(LEVELS, 4)
    rng = np.random.default_rng(3)
    fits = pd.DataFrame({"wd": x, "seed": np.tile(range(4), 24), "group": 0, "steps": 1000,
                         "phase": np.where(rng.random(x.size) < _truth(x), "grokking", "memorization")})
    fits.attrs.update(axes=["wd", "seed"], arm_keys=[], n_candidates=200)
    b, = fit_boundaries(fits)
    assert b.estimate.low < X_TRUE < b.estimate.high and b.row()["target"] == "boundary"
    assert str(b).startswith("boundary wd* = ") and "96 of 200 candidates run" in str(b)
    fits.attrs.update(axes=["seed"])
    assert fit_boundaries(fits) == []


@pytest.mark.parametrize("args, says", [
    (["wd=logspace(-2,0,4)", "lr=[1e-3,1e-2]", "frac=[0.3,0.5]"], "sweep one or two of wd"),
    (["wd=[0,1]"], "every value must be > 0"),
    (["wd=[0.1,1]", "seeds=2", "runs=9"], "the grid has only 4 candidate runs"),
    (["wd=[0.1,1]", "d_mlp=[16,32]"], "2 compiled groups"),
    (["wd=logrange(10,1)"], "give 0 < low < high"),
    (["wd=logrange(0.1,1,8)"], "logrange takes 2 arguments"),
    (["design=law", "wd=[0.1,1]", "frac=[0.3,0.5]"], "this grid sweeps frac, wd"),
    (["design=law", "lr=[1e-3,1e-2]"], "sweep wd alone"),
    (["design=law", "wd=[0.1,1]", "d_mlp=[16,32]"], "design=law: the grid has 2 compiled groups"),
])
def test_a_design_the_grid_cannot_carry_is_one_line(args, says, capsys, tmp_path):
    code = main(["sweep", *merged(MLP, ["steps=20", "design=boundary", *args]), "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and says in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "r").exists()


def test_a_continuous_range_gives_the_design_log_spaced_candidates(tmp_path, capsys):
    """wd=logrange(a,b): LOGRANGE_POINTS candidates from a to b, evenly spaced in log wd, for design=boundary;
    a grid refuses it in one line, also from a sweep file, unless the command line replaces the range."""
    from grokjax.grid.expand import build_sweep
    from grokjax.grid.grammar import LOGRANGE_POINTS

    sweep = build_sweep(None, merged(MLP, ["design=boundary", "wd=logrange(1e-3,10)", "seeds=2"]))
    wd = np.array(sweep.values["hp.wd"])
    assert len(wd) == LOGRANGE_POINTS and sweep.n_runs() == 2 * LOGRANGE_POINTS
    np.testing.assert_allclose([wd[0], wd[-1]], [1e-3, 10], rtol=1e-12)
    np.testing.assert_allclose(np.diff(np.log10(wd)), 4 / (LOGRANGE_POINTS - 1), rtol=1e-9)
    assert main(["sweep", *merged(MLP, ["wd=logrange(1e-3,10)"]), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "continuous range is for design=boundary" in err and len(err.strip().splitlines()) == 1
    file = tmp_path / "s.toml"
    file.write_text("wd = 'logrange(1e-3,10)'\n")
    with pytest.raises(UserError, match="continuous range"):
        build_sweep(str(file), MLP)
    assert build_sweep(str(file), merged(MLP, ["wd=[0.1,1]"])).values["hp.wd"] == [0.1, 1]


def test_a_design_cannot_be_sharded(capsys, tmp_path):
    code = main(["sweep", *merged(MLP, ["steps=20", "design=boundary", "wd=[0.1,1]", "seeds=4"]), "--out",
                 str(tmp_path / "r"), "--shard", "0/2"])
    err = capsys.readouterr().err
    assert code == 2 and "not supported with design=boundary" in err and "Traceback" not in err, err


def test_a_design_over_two_axes_starts_on_every_value_of_the_second(tmp_path):
    """The sweep hands the design its second axis: the space-filling start covers both fracs at both ends
    of wd, the records and the heatmap are written, and the boundary rows (if any) name frac."""
    import grokjax

    out = tmp_path / "r"
    mlp = [a for a in MLP if not a.startswith("frac=")]  # so that wd is typed first
    code = main(["sweep", *merged(mlp, ["steps=40", "stop=resolved", "design=boundary", "runs=12",
                                        "wd=logspace(-1,0.5,3)", "frac=[0.4,0.7]", "seeds=3"]),
                 "--out", str(out), "--quiet"])
    assert code == 0  # x = wd, typed first; 3 slots: both fracs at the smallest wd, then one at the largest
    r = grokjax.load(out)
    chosen = r.runs[r.runs.design_round >= 0]
    start = chosen[chosen.design_round == 0]
    assert len(chosen) == 12 and len(r.runs) == 18 and len(start) == 3 and start.frac.nunique() == 2
    assert set(start.wd.round(6)) == {0.1, 3.162278}, start
    assert (out / "phase_diagram.png").stat().st_size > 0
    laws = pd.read_parquet(out / "laws.parquet")
    assert (laws[laws.target == "boundary"].get("by", pd.Series(dtype=object)).isin(["frac", "wd"])).all()


REAL = ["op=add", "p=23", "d_model=32", "n_heads=2", "d_mlp=64", "frac=0.8", "lr=3e-3", "wd=logspace(-1,0.2,6)",
        "seeds=4", "steps=700", "eval_every=25", "chunk_steps=50", "checkpoint_every=50", "stop=resolved",
        "design=boundary", "runs=8"]


@pytest.fixture(scope="module")
def designed(tmp_path_factory):
    from conftest import run_cli

    out = tmp_path_factory.mktemp("design") / "r"
    proc = run_cli(["sweep", *REAL, "--out", str(out)])
    assert proc.returncode == 0, proc.stderr
    return out, proc.stdout


@pytest.mark.slow
def test_a_real_design_records_its_choices_and_its_boundary(designed):
    """8 of 24 candidates in 2 slots (a real transformer, float32): the records name every chosen run and
    why, the summary prints the boundary line, and laws.parquet holds it."""
    import grokjax

    out, printed = designed
    r = grokjax.load(out)
    chosen = r.runs[r.runs.design_round >= 0]
    assert len(chosen) == 8 and len(r.runs) == 24 and set(r.metrics.run_id) == set(chosen.run_id)
    assert chosen.acquisition.isna().sum() == 2 and chosen.design_round.max() >= 3
    assert "8 runs (design=boundary: chosen of 24 candidates)" in printed
    laws = pd.read_parquet(out / "laws.parquet")
    fits = pd.read_parquet(out / "fits.parquet")
    if fits.phase.isin(["grokking", "comprehension"]).any() and not fits.phase.isin(
            ["grokking", "comprehension"]).all():
        row = laws[laws.target == "boundary"].iloc[0]
        assert row.x_star_low <= row.x_star <= row.x_star_high and "boundary wd* = " in printed


@pytest.mark.slow
@pytest.mark.parametrize("kill_after_parts", [12])
def test_sigkill_of_a_design_then_resume_chooses_the_same_runs(designed, tmp_path, kill_after_parts):
    """SIGKILL after a few refills, then --resume: the same choices and the same bits as uninterrupted."""
    import signal

    import grokjax
    from conftest import run_cli
    from test_resume import _n_parts, _start, _wait_for

    ref = grokjax.load(designed[0])
    out = tmp_path / "r"
    proc = _start(out, REAL)
    finished_first = not _wait_for(lambda: _n_parts(out) >= kill_after_parts, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not finished_first, "the sweep ended before it could be killed"
    resumed = run_cli(["sweep", *REAL, "--out", str(out), "--resume", "--no-plot", "--quiet"])
    assert resumed.returncode == 0, resumed.stderr
    got = grokjax.load(out)
    pd.testing.assert_frame_equal(got.runs, ref.runs, check_exact=True)
    pd.testing.assert_frame_equal(got.metrics, ref.metrics, check_exact=True)

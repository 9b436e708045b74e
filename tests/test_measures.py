"""Progress measures (measures=norms+fourier+excluded) against direct NumPy computations."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import merged

import grokjax
from grokjax.engine.data import hparams_for
from grokjax.engine.measures import (
    fourier_basis,
    frequency_norms,
    gini,
    group_norms,
    key_mask,
    restricted_and_excluded,
    sum_directions,
)
from grokjax.engine.program import Program
from grokjax.engine.single import engine_for
from grokjax.errors import UserError
from grokjax.grid.expand import build_sweep
from grokjax.run.pool import train_alone

BASE = ["op=add", "p=11", "d_model=16", "n_heads=2", "d_mlp=32", "frac=0.5", "lr=3e-3", "steps=40",
        "eval_every=10", "chunk_steps=20", "dtype=float64"]


def _engine_and_state(args):
    group, runs = build_sweep(None, merged(args)).groups()[0]
    engine = engine_for(group, runs[:1])
    hps = jax.tree.map(lambda x: x[0], hparams_for(runs[:1], engine.table.n_pairs))
    with jax.enable_x64(True):
        state, split = engine.init_one(hps)
    return engine, state, split, hps


@pytest.mark.parametrize("arch", ["transformer", "mlp"])
def test_group_norms_match_numpy(arch):
    engine, state, _, _ = _engine_and_state([*BASE, f"arch={arch}", "n_layers=2"])
    params = jax.tree.map(np.asarray, state.params)
    got = {k: float(v) for k, v in group_norms(state.params, arch).items()}
    sq = lambda *trees: sum(float(np.sum(np.square(x))) for t in trees for x in jax.tree.leaves(t))  # noqa: E731
    if arch == "transformer":
        blocks = [params["block_0"], params["block_1"]]
        attn = [{k: v for k, v in b.items() if k in ("query", "key", "value", "out")} for b in blocks]
        mlp = [{k: v for k, v in b.items() if k in ("mlp_in", "mlp_out")} for b in blocks]
        want = {"norm_embed": sq(params["embed"], params["pos_embed"]), "norm_attn": sq(*attn),
                "norm_mlp": sq(*mlp), "norm_unembed": sq(params["unembed"])}
    else:
        want = {"norm_layer_0": sq(params["in_kernel"], params["in_bias"]), "norm_layer_1": sq(params["hidden_1"]),
                "norm_readout": sq(params["readout"])}
    assert set(got) == set(want)
    for k in want:
        assert got[k] == pytest.approx(math.sqrt(want[k]), rel=1e-12)
    total = math.sqrt(sum(v**2 for v in got.values()))
    assert total == pytest.approx(math.sqrt(sq(params)), rel=1e-12)  # the groups partition the parameters


def test_grad_and_update_norms_of_a_step():
    engine, state, split, hps = _engine_and_state([*BASE, "measures=norms"])
    table = engine.table
    inputs, labels = jnp.asarray(table.inputs), jnp.asarray(table.labels)
    with jax.enable_x64(True):
        new, metrics = engine.train_step_one(state, split, hps, jnp.int32(3), inputs, labels)
        idx, w = engine.batch_one(split, hps, jnp.int32(3))
        grads = jax.grad(lambda p: engine.loss_one(p, inputs[idx], labels[idx], w)[0])(state.params)
    g = math.sqrt(sum(float(np.sum(np.square(x))) for x in jax.tree.leaves(grads)))
    u = math.sqrt(sum(float(np.sum(np.square(np.asarray(a) - np.asarray(b))))
                      for a, b in zip(jax.tree.leaves(new.params), jax.tree.leaves(state.params))))
    assert float(metrics["grad_norm"]) == pytest.approx(g, rel=1e-10)
    assert float(metrics["update_norm"]) == pytest.approx(u, rel=1e-8)
    last = np.asarray(state.params["unembed"]["kernel"])  # before the update, as the row's loss
    assert float(metrics["unembed_norm"]) == pytest.approx(math.sqrt(float(np.sum(last**2))), rel=1e-12)
    assert set(metrics) == {"train_loss", "train_acc", "grad_norm", "update_norm", "unembed_norm"}


def test_frequency_norms_match_a_direct_dft():
    p, d = 13, 6
    emb = np.random.default_rng(0).standard_normal((p, d))
    got = np.asarray(frequency_norms(jnp.asarray(emb), jnp.asarray(fourier_basis(p))))
    x = np.arange(p)
    want = [np.linalg.norm(emb.sum(axis=0)) / math.sqrt(p)]
    for k in range(1, (p - 1) // 2 + 1):
        c = np.cos(2 * np.pi * k * x / p) @ emb
        s = np.sin(2 * np.pi * k * x / p) @ emb
        want.append(math.sqrt(2 / p) * math.sqrt(np.sum(c**2) + np.sum(s**2)))
    np.testing.assert_allclose(got, want, rtol=1e-10)


def _direct_spectrum(embed: np.ndarray) -> np.ndarray:
    """Per-frequency norms of a [p, d] embedding by a direct DFT (the constant, then each k's cos and sin)."""
    p = embed.shape[0]
    x = np.arange(p)
    want = [np.linalg.norm(embed.sum(axis=0)) / math.sqrt(p)]
    for k in range(1, (p - 1) // 2 + 1):
        c, s = np.cos(2 * np.pi * k * x / p) @ embed, np.sin(2 * np.pi * k * x / p) @ embed
        want.append(math.sqrt(2 / p) * math.sqrt(np.sum(c**2) + np.sum(s**2)))
    return np.array(want)


@pytest.mark.parametrize("args", [[], ["arch=mlp"], ["arch=mlp", "mlp_input=embed"]])
def test_the_spectrum_is_that_of_the_number_embedding(args):
    """Nanda et al.'s spectrum is of W_E, the input embedding of the p number tokens (the one-hot MLP: its
    first layer's rows for a), not of the unembedding or another layer."""
    engine, state, split, _ = _engine_and_state(BASE + ["measures=fourier"] + args)
    params = jax.tree.map(np.asarray, state.params)
    p = engine.table.n_symbols
    if "arch=mlp" not in args:
        embed = params["embed"]["embedding"][:p]
    elif "mlp_input=embed" in args:
        embed = params["embed"][:p]
    else:
        embed = params["in_kernel"][:p]
    with jax.enable_x64(True):
        _, spectrum = engine.measure_one(state.params, split, jnp.asarray(engine.table.inputs),
                                         jnp.asarray(engine.table.labels))
    np.testing.assert_allclose(np.asarray(spectrum), _direct_spectrum(embed), rtol=1e-10)


def test_an_embedding_of_few_pure_frequencies_has_gini_near_one():
    p = 31
    x = np.arange(p)
    pure = np.stack([np.cos(2 * np.pi * 3 * x / p), np.sin(2 * np.pi * 3 * x / p),
                     0.9 * np.cos(2 * np.pi * 7 * x / p), np.ones(p)], axis=1)
    rand = np.random.default_rng(1).standard_normal((p, 4))
    basis = jnp.asarray(fourier_basis(p))
    norms_pure, norms_rand = (frequency_norms(jnp.asarray(e), basis) for e in (pure, rand))
    assert float(gini(norms_pure[1:])) > 0.85 and float(gini(norms_rand[1:])) < 0.35
    mask = np.asarray(key_mask(norms_pure))
    assert np.flatnonzero(mask).tolist() == [2, 6]  # frequencies 3 and 7 (index k - 1)
    assert int(key_mask(norms_rand).sum()) >= 10
    assert float(gini(jnp.array([0.0, 0.0, 0.0, 5.0]))) == pytest.approx(0.75)  # one of n: 1 - 1/n


@pytest.mark.parametrize("sign", [1, -1])
def test_restricted_and_excluded_logits_have_their_closed_forms(sign):
    p, c = 13, 13
    rng = np.random.default_rng(2)
    dirs = sum_directions(p, sign)  # [K, 2, p*p]
    mask = np.zeros((p - 1) // 2, bool)
    mask[[1, 4]] = True  # key frequencies 2 and 5
    key = sum(rng.standard_normal(c)[None, :] * dirs[k, j][:, None] for k in (1, 4) for j in (0, 1))
    other = sum(rng.standard_normal(c)[None, :] * dirs[k, j][:, None] for k in (0, 3) for j in (0, 1))
    const = rng.standard_normal(c)[None, :]
    logits = jnp.asarray(const + key + other)
    kept, removed = restricted_and_excluded(logits, jnp.asarray(dirs), jnp.asarray(mask))
    np.testing.assert_allclose(kept, const + key, atol=1e-10)  # the mean of the other terms is 0
    np.testing.assert_allclose(removed, const + other, atol=1e-10)


@pytest.mark.slow
def test_measures_in_a_grid_equal_each_run_alone():
    group, runs = build_sweep(None, [*BASE, "measures=norms+fourier+excluded", "wd=[0.3,1]", "seeds=2"]).groups()[0]
    grid = train_alone(group, runs)
    assert {"fourier_gini", "n_key_freqs", "restricted_loss", "excluded_loss", "grad_norm", "norm_attn",
            "spectrum"} <= set(grid)
    for i in (0, 3):
        alone = train_alone(group, [runs[i]])
        for k, v in alone.items():
            np.testing.assert_allclose(grid[k][:, i], v[:, 0], rtol=1e-9, atol=1e-12, err_msg=k)


@pytest.mark.slow
def test_spectra_are_streamed_and_loaded(tmp_path):
    from grokjax.cli import main

    out = tmp_path / "r"
    args = [a for a in BASE if not a.startswith("dtype")] + ["measures=fourier+norms", "wd=[0.3,1]", "seeds=1"]
    assert main(["sweep", *args, "--out", str(out), "--quiet", "--no-plot"]) == 0
    r = grokjax.load(out)
    evals = sorted(r.metrics.loc[r.metrics.val_acc.notna(), "step"].unique())
    assert len(r.spectra) == 2 * len(evals) * 6  # runs x evaluations x (1 + (11 - 1) / 2) frequencies
    one = r.spectra[(r.spectra.run_id == 1) & (r.spectra.step == evals[-1])].sort_values("freq")
    row = r.metrics[(r.metrics.run_id == 1) & (r.metrics.step == evals[-1])].iloc[0]
    assert float(gini(jnp.asarray(one.norm.to_numpy()[1:]))) == pytest.approx(row.fourier_gini, rel=1e-5)
    assert r.metrics.loc[r.metrics.val_acc.isna(), "fourier_gini"].isna().all()
    assert r.metrics["grad_norm"].notna().all()


@pytest.mark.parametrize("args, words", [
    (["measures=foo"], "measures=foo: not accepted"),
    (["measures=norms+norms"], "not accepted"),
    (["measures=fourier", "op=s5"], "needs a mod-p task"),
    (["measures=excluded", "op=mul", "p=11"], "op=add and op=sub"),
])
def test_bad_measures_are_refused(args, words):
    with pytest.raises(UserError, match=words):
        build_sweep(None, args)


@pytest.mark.slow
def test_measures_none_logs_the_base_columns_only():
    group, runs = build_sweep(None, [*BASE, "measures=none"]).groups()[0]
    engine = engine_for(group, runs)
    assert engine.train_metric_names == ("train_loss", "train_acc") and engine.n_freqs == 0
    assert set(train_alone(group, runs)) == {"train_loss", "train_acc", "val_loss", "val_acc", "param_norm",
                                             "spectrum"}
    assert Program.get(engine, 1) is not None


@pytest.mark.slow
def test_plot_measures_draws_the_logged_measures_and_checks_runs_first(tmp_path, capsys):
    from grokjax.analysis.curves import pick_runs, plot_measures
    from grokjax.cli import main

    out = tmp_path / "r"
    args = [a for a in BASE if not a.startswith("dtype")] + ["measures=norms+fourier+excluded", "wd=[0.3,1]",
                                                             "seeds=1"]
    assert main(["sweep", *args, "--out", str(out), "--quiet", "--no-plot"]) == 0
    assert main(["plot", str(out), "--measures", "--runs", "7"]) == 2
    assert "run_id 7 is not in this sweep" in capsys.readouterr().err
    assert not (out / "phase_diagram.png").exists()  # refused before anything was written
    assert main(["plot", str(out), "--measures", "--runs", "1,0"]) == 0 and (out / "measures.png").exists()
    r = grokjax.load(out)
    fits = grokjax.fit(r)
    fig = plot_measures(r.metrics, fits, [1, 0])
    labels = {ax.get_ylabel() for ax in fig.axes}
    assert {"accuracy", "loss", "parameter norms", "gradient and update norms", "Fourier Gini (embedding)",
            "Fourier: key frequencies"} <= labels
    assert [ax.get_title().split(":")[0] for ax in fig.axes[:2]] == ["run 1", "run 0"]
    fits.loc[:, "phase"] = ["memorization", "grokking"]
    fits.loc[:, "t_val"] = [float("nan"), 30.0]
    assert pick_runs(fits) == [1, 0]


def test_the_logit_scale_over_the_training_pairs_matches_numpy():
    """measures=logits: the mean correct-class margin and logit L2 norm over the model's training pairs
    (padding left out), in chunks smaller than the split, equal a float64 NumPy computation."""
    group, runs = build_sweep(None, merged([*BASE, "measures=logits", "eval_batch_size=7", "frac=[0.5,0.7]"])
                              ).groups()[0]
    engine = engine_for(group, runs)  # split padded to frac 0.7's pairs: the 0.5 run's padding is left out
    hps = jax.tree.map(lambda x: x[0], hparams_for(runs, engine.table.n_pairs))
    with jax.enable_x64(True):
        state, split = engine.init_one(hps)
    inputs, labels = jnp.asarray(engine.table.inputs), jnp.asarray(engine.table.labels)
    with jax.enable_x64(True):
        got, _ = engine.measure_one(state.params, split, inputs, labels)
        z = np.asarray(engine.model.apply({"params": state.params}, inputs))
    train = np.asarray(split.train_idx)[np.asarray(split.train_w) > 0]
    zt, yt = z[train], np.asarray(labels)[train]
    correct = zt[np.arange(len(yt)), yt]
    rest = zt.copy()
    rest[np.arange(len(yt)), yt] = -np.inf
    assert len(train) == int(hps.n_train) < engine.n_train_max and len(train) % 7  # chunks of 7, padded
    assert float(got["logit_margin"]) == pytest.approx(float(np.mean(correct - rest.max(axis=1))), rel=1e-10)
    assert float(got["logit_norm"]) == pytest.approx(float(np.mean(np.linalg.norm(zt, axis=1))), rel=1e-10)

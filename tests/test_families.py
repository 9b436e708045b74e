"""Model, optimizer, loss and gradient-filter families: formulas against independent references, each member
trained alone equals the same run inside a grid (float64), numeric settings compile once."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import TINY, CompileCounter, merged

import grokjax
from grokjax.cli import main
from grokjax.config.schedule import METRIC_COLUMNS
from grokjax.config.structure import ModelConfig, TaskConfig, TrainConfig
from grokjax.engine.single import engine_for
from grokjax.grid.expand import build_sweep
from grokjax.losses import LOSSES, first_argmax, log_stablemax
from grokjax.models.mlp import MLP
from grokjax.optim.factory import make_optimizer
from grokjax.optim.grokfast import grokfast_ema, grokfast_ma
from grokjax.optim.orthograd import orthogonalize, orthograd
from grokjax.run.pool import train_alone
from grokjax.tasks.tables import make_table


def _groups(args):
    return build_sweep(None, merged(args)).groups()


# --------------------------------------------------------------------------------------------------
# Grokfast against NumPy transcriptions of ironjr/grokfast's gradfilter_ema / gradfilter_ma.


def _grad_sequence(n=7, shape=(3, 2)):
    return [np.random.default_rng(i).normal(size=shape) for i in range(n)]


def _apply(tx, grads):
    state = tx.init({"w": jnp.zeros_like(jnp.asarray(grads[0]))})
    out = []
    for g in grads:
        u, state = tx.update({"w": jnp.asarray(g)}, state)
        out.append(np.asarray(u["w"]))
    return out


def test_grokfast_ema_matches_the_reference():
    alpha, lamb = 0.9, 2.5
    grads = _grad_sequence()
    mu, expected = None, []
    for g in grads:  # the reference: mu starts as the first gradient, then mu = mu*alpha + g*(1-alpha)
        mu = g.copy() if mu is None else mu
        mu = mu * alpha + g * (1 - alpha)
        expected.append(g + mu * lamb)
    got = _apply(grokfast_ema(jnp.float64(alpha), jnp.float64(lamb)), grads)
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    np.testing.assert_allclose(got[0], grads[0] * (1 + lamb), rtol=1e-12)  # mu_1 = g_1


def test_grokfast_ma_matches_the_reference():
    lamb, window = 1.5, 3
    grads = _grad_sequence()
    held, expected = [], []
    for g in grads:  # the reference: a deque of maxlen w; the mean is added once w are held
        held = (held + [g])[-window:]
        expected.append(g + lamb * sum(held) / len(held) if len(held) == window else g)
    got = _apply(grokfast_ma(jnp.float64(lamb), window), grads)
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    np.testing.assert_array_equal(got[0], grads[0])  # nothing added before the window is full


# --------------------------------------------------------------------------------------------------
# ⊥Grad, StableMax, the optimizers' PyTorch semantics, the MLP.


def test_orthograd_is_orthogonal_to_w_with_the_norm_of_g():
    rng = np.random.default_rng(0)
    params = {"a": jnp.asarray(rng.normal(size=(4, 5))), "b": jnp.asarray(rng.normal(size=(6,)))}
    grads = {"a": jnp.asarray(rng.normal(size=(4, 5))), "b": jnp.asarray(rng.normal(size=(6,)))}
    out, _ = orthograd().update(grads, optax.EmptyState(), params)
    for k in params:
        w, g, o = (np.asarray(t[k]).ravel() for t in (params, grads, out))
        assert abs(np.dot(o, w)) < 1e-12 * np.linalg.norm(o) * np.linalg.norm(w)
        np.testing.assert_allclose(np.linalg.norm(o), np.linalg.norm(g), rtol=1e-12)
        expected = g - np.dot(w, g) / np.dot(w, w) * w  # the formula, before rescaling
        np.testing.assert_allclose(o, expected * np.linalg.norm(g) / np.linalg.norm(expected), rtol=1e-10)
    # a gradient already orthogonal to w is left as it is
    w = jnp.array([1.0, 0.0]); g = jnp.array([0.0, 3.0])
    np.testing.assert_allclose(orthogonalize(w, g), g)


def _stablemax_direct(x):
    s = np.where(x >= 0, x + 1, 1 / (1 - x))
    return s / s.sum(-1, keepdims=True)


def test_accuracy_argmax_takes_the_first_of_tied_maxima():
    """first_argmax (the accuracy's argmax) equals np.argmax, ties (first index wins) and infinities too."""
    rng = np.random.default_rng(0)
    x = rng.integers(-2, 3, size=(200, 7)).astype(np.float32)  # many ties
    x[::7, 3] = np.inf
    x[::5] = -np.inf
    for dtype in (jnp.float32, jnp.float64):
        np.testing.assert_array_equal(jax.jit(first_argmax)(jnp.asarray(x, dtype)), x.argmax(-1))


def test_stablemax_values_and_gradient_against_the_direct_formula():
    rng = np.random.default_rng(1)
    x = rng.normal(scale=4, size=(5, 7))
    np.testing.assert_allclose(np.exp(log_stablemax(jnp.asarray(x))), _stablemax_direct(x), rtol=1e-12)
    labels = rng.integers(0, 7, size=5)
    loss, acc = LOSSES["stablemax"](jnp.asarray(x), jnp.asarray(labels), jnp.ones(5, jnp.float64))
    direct = -np.mean(np.log(_stablemax_direct(x)[np.arange(5), labels]))
    np.testing.assert_allclose(loss, direct, rtol=1e-12)
    assert acc == np.mean(x.argmax(-1) == labels)
    grad = jax.grad(lambda z: LOSSES["stablemax"](z, jnp.asarray(labels), jnp.ones(5, jnp.float64))[0])(jnp.asarray(x))
    eps, num = 1e-6, np.zeros_like(x)
    for idx in np.ndindex(*x.shape):
        d = np.zeros_like(x); d[idx] = eps
        f = lambda z: -np.mean(np.log(_stablemax_direct(z)[np.arange(5), labels]))  # noqa: E731
        num[idx] = (f(x + d) - f(x - d)) / (2 * eps)
    np.testing.assert_allclose(grad, num, rtol=1e-6, atol=1e-9)
    big = jnp.array([[-1e30, 0.0, 1e30]])  # no NaN or inf from either branch at extreme logits
    assert np.isfinite(log_stablemax(big)[0, 2]) and np.isfinite(jax.grad(lambda z: log_stablemax(z)[0, 1])(big)).all()


def _two_steps(train: TrainConfig, hp, p0, g1, g2):
    tx = make_optimizer(train, {k: jnp.float64(v) for k, v in hp.items()})
    params = {"w": jnp.asarray(p0)}
    state = tx.init(params)
    out = []
    for g in (g1, g2):
        u, state = tx.update({"w": jnp.asarray(g)}, state, params)
        params = optax.apply_updates(params, u)
        out.append(np.asarray(params["w"]))
    return out


def test_adam_with_coupled_l2_is_torch_adam():
    lr, wd, b1, b2, eps = 0.1, 0.5, 0.9, 0.98, 1e-8
    p, g1, g2 = np.array([1.0, -2.0]), np.array([0.3, 0.1]), np.array([-0.2, 0.4])
    t = TrainConfig(optimizer="adam", warmup_steps=0, beta1=b1, beta2=b2, eps=eps)
    got = _two_steps(t, {"lr": lr, "wd": wd}, p, g1, g2)
    m = v = np.zeros(2)
    for k, g in enumerate((g1, g2), start=1):  # torch.optim.Adam, weight_decay=wd
        d = g + wd * p
        m, v = b1 * m + (1 - b1) * d, b2 * v + (1 - b2) * d * d
        p = p - lr * (m / (1 - b1**k)) / (np.sqrt(v / (1 - b2**k)) + eps)
        np.testing.assert_allclose(got[k - 1], p, rtol=1e-12)


def test_sgd_with_momentum_and_coupled_l2_is_torch_sgd():
    lr, wd, mom = 0.1, 0.5, 0.8
    p, g1, g2 = np.array([1.0, -2.0]), np.array([0.3, 0.1]), np.array([-0.2, 0.4])
    got = _two_steps(TrainConfig(optimizer="sgd", warmup_steps=0), {"lr": lr, "wd": wd, "momentum": mom}, p, g1, g2)
    buf = None
    for k, g in enumerate((g1, g2)):  # torch.optim.SGD(momentum=mom, dampening=0, weight_decay=wd)
        d = g + wd * p
        buf = d.copy() if buf is None else mom * buf + d
        p = p - lr * buf
        np.testing.assert_allclose(got[k], p, rtol=1e-12)


def test_mlp_init_bounds_and_onehot_gather_equals_the_matmul():
    cfg = ModelConfig(arch="mlp", n_layers=2, d_mlp=64, mlp_input="onehot", bias=True)
    n = 31
    model = MLP(cfg, n + 1, n, dtype=jnp.float64)
    params = model.init(jax.random.key(0), jnp.zeros((1, 3), jnp.int32))["params"]
    fan_ins = {"in_kernel": 2 * n, "in_bias": 2 * n, "hidden_1": 64, "readout": 64}
    for name, fan_in in fan_ins.items():
        for leaf in jax.tree.leaves(params[name]):
            bound = 1 / math.sqrt(fan_in)
            assert np.abs(leaf).max() <= bound and np.abs(leaf).max() > 0.8 * bound  # U(-b, b), and not narrower
    tokens = jnp.array(make_table(TaskConfig("add", n)).inputs[:50])
    onehot = jnp.concatenate([jax.nn.one_hot(tokens[:, 0], n), jax.nn.one_hot(tokens[:, 1], n)], -1)
    h = jax.nn.relu(onehot @ params["in_kernel"] + params["in_bias"])
    h = jax.nn.relu(h @ params["hidden_1"]["kernel"] + params["hidden_1"]["bias"])
    expected = h @ params["readout"]["kernel"] + params["readout"]["bias"]
    np.testing.assert_allclose(model.apply({"params": params}, tokens), expected, rtol=1e-12)


@pytest.mark.parametrize("mlp_input", ["onehot", "embed"])
def test_mlp_works_for_s5_and_without_bias(mlp_input):
    (group, runs), = _groups(TINY + ["arch=mlp", "op=s5", "frac=0.3", f"mlp_input={mlp_input}", "bias=false",
                                     "steps=3", "d_mlp=16", "n_layers=2"])
    params = engine_for(group, runs).model.init(jax.random.key(0), jnp.zeros((1, 3), jnp.int32))["params"]
    assert not any("bias" in jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_leaves_with_path(params))
    m = train_alone(group, runs)
    assert np.isfinite(m["train_loss"]).all()


# --------------------------------------------------------------------------------------------------
# Every member inside a grid equals itself alone (float64), with one compilation per group.

# Each entry is one structural group (one compiled program); together they cover every family member.
MEMBERS = {
    "mlp-onehot-gelu": ["arch=mlp", "n_layers=2", "d_mlp=24", "act=gelu"],
    "mlp-embed-quadratic-nobias": ["arch=mlp", "mlp_input=embed", "act=quadratic", "bias=false", "d_mlp=24"],
    "adam-l2-nobias": ["arch=mlp", "optimizer=adam", "bias=false"],  # the transformer: test_train, test_cli
    # the optimizers and filters act on any parameter tree: on the MLP, which compiles in half the time
    "sgd-momentum": ["arch=mlp", "optimizer=sgd", "lr=0.3", "momentum=[0,0.9]"],
    "orthograd-stablemax": ["arch=mlp", "orthograd=true", "loss=stablemax"],
    "grokfast-ema": ["arch=mlp", "grokfast=ema", "grokfast_lamb=[0.5,2]", "grokfast_alpha=[0.9,0.98]"],
    "grokfast-ma": ["arch=mlp", "grokfast=ma", "grokfast_window=4", "grokfast_lamb=[0.5,2]"],
}


@pytest.mark.parametrize("name", sorted(MEMBERS))
@pytest.mark.slow
def test_member_alone_equals_member_in_grid_and_compiles_once(name):
    counter = CompileCounter("train_chunk")
    args = TINY + ["dtype=float64", "steps=20", "wd=[0.1,1]", "seeds=2"] + MEMBERS[name]
    (group, runs), = _groups(args)
    grid = train_alone(group, runs)
    assert counter.count == 1, "swept numeric settings must not recompile"
    i = len(runs) - 1
    alone = train_alone(group, [runs[i]])
    for k in METRIC_COLUMNS:
        np.testing.assert_allclose(grid[k][:, i], alone[k][:, 0], rtol=1e-10, atol=1e-12, equal_nan=True, err_msg=k)
    assert np.isfinite(grid["train_loss"]).all()
    assert len({float(grid["val_loss"][-1, j]) for j in range(len(runs))}) == len(runs)  # the settings matter


@pytest.mark.slow
def test_grokfast_lamb_zero_trains_like_no_filter():
    """ĝ = g + 0·filter(g) is g exactly (the filter alone is checked bitwise below), but the two are
    different XLA programs, which fuse the optimizer's arithmetic differently (FMA contraction): over 40
    steps that leaves ~1 ulp in float64, so the training comparison allows 1e-12 relative."""
    f = grokfast_ema(jnp.float64(0.9), jnp.float64(0.0))
    state = f.init({"w": jnp.zeros(3)})
    for g in _grad_sequence(4, (3,)):
        out, state = f.update({"w": jnp.asarray(g)}, state)
        np.testing.assert_array_equal(out["w"], g)
    base = TINY + ["dtype=float64", "steps=40", "arch=mlp"]
    (g0, r0), = _groups(base + ["grokfast=none"])
    (g1, r1), = _groups(base + ["grokfast=ema", "grokfast_lamb=0"])
    (g2, r2), = _groups(base + ["grokfast=ma", "grokfast_window=3", "grokfast_lamb=0"])
    none, ema, ma = train_alone(g0, r0), train_alone(g1, r1), train_alone(g2, r2)
    for k in METRIC_COLUMNS:
        np.testing.assert_allclose(none[k], ema[k], rtol=1e-12, atol=1e-14, equal_nan=True, err_msg=k)
        np.testing.assert_allclose(none[k], ma[k], rtol=1e-12, atol=1e-14, equal_nan=True, err_msg=k)
    (g3, r3), = _groups(base + ["grokfast=ema", "grokfast_lamb=2"])
    assert not np.array_equal(none["val_loss"], train_alone(g3, r3)["val_loss"], equal_nan=True)


@pytest.mark.slow
def test_mixed_structural_grid_from_the_cli(tmp_path):
    """One results directory with two optimizers x two filters: 4 groups, per-model columns in runs.parquet,
    and one run of the mixed grid equals the same run swept alone."""
    out, alone = tmp_path / "mixed", tmp_path / "alone"
    base = merged(TINY, ["dtype=float64", "steps=20", "momentum=0.5", "grokfast_lamb=1.5", "arch=mlp"])
    assert main(["sweep", *base, "optimizer=[adam,sgd]", "grokfast=[none,ema]", "--out", str(out),
                 "--quiet", "--no-plot"]) == 0
    r = grokjax.load(out)
    assert r.runs["group"].nunique() == 4
    assert {"optimizer", "grokfast", "momentum", "grokfast_alpha", "grokfast_lamb", "orthograd", "loss", "arch"} \
        <= set(r.runs.columns)
    assert main(["sweep", *base, "optimizer=sgd", "grokfast=ema", "--out", str(alone), "--quiet", "--no-plot"]) == 0
    rid = int(r.runs.query("optimizer == 'sgd' and grokfast == 'ema'")["run_id"].iloc[0])
    a = r.metrics[r.metrics.run_id == rid].drop(columns="run_id").reset_index(drop=True)
    b = grokjax.load(alone).metrics.drop(columns="run_id").reset_index(drop=True)
    np.testing.assert_allclose(a.to_numpy(float), b.to_numpy(float), rtol=1e-10, equal_nan=True)

"""The reference-fidelity options (issue: every preset trains what the paper's code trains), each against
an independent formula in float64: the blocks and positions against a NumPy forward pass, the torch
initialisation by its moments, the 4-token and b != 0 tables, epoch batching, the warmup factors, and
data_seed against seed."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import merged
from scipy.special import erf

from grokjax.cli import main
from grokjax.config.structure import ModelConfig, TaskConfig, TrainConfig
from grokjax.engine.data import hparams_for
from grokjax.engine.single import engine_for
from grokjax.grid.expand import build_sweep
from grokjax.models.transformer import Transformer
from grokjax.optim.factory import make_optimizer
from grokjax.run.pool import train_alone
from grokjax.tasks.tables import make_table


def _layer_norm(x, p, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def _act(name, x):
    if name == "relu":
        return np.maximum(x, 0)
    if name == "gelu":
        return 0.5 * x * (1 + erf(x / math.sqrt(2)))
    if name == "gelu_tanh":
        return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    return x * x


def reference_logits(cfg: ModelConfig, params, tokens: np.ndarray) -> np.ndarray:
    """The textbook forward pass over every position (NumPy, float64), from the papers' definitions."""
    params = jax.tree.map(np.asarray, params)
    eps = 1e-5 if cfg.init == "torch" else 1e-6
    d, h, dh = cfg.d_model, cfg.n_heads, cfg.d_model // cfg.n_heads
    t = tokens.shape[1]
    if cfg.pos == "learned":
        pos = params["pos_embed"][:t]
    else:  # Vaswani et al. 2017: PE[t, 2i] = sin(t / 10000^(2i/d)), PE[t, 2i+1] = cos(t / 10000^(2i/d))
        pos = np.zeros((t, d))
        for k in range(t):
            for i in range(0, d, 2):
                pos[k, i] = math.sin(k / 10000 ** (i / d))
                pos[k, i + 1] = math.cos(k / 10000 ** (i / d))
    x = params["embed"]["embedding"][tokens] + pos[None]
    mask = np.tril(np.ones((t, t), bool))
    for i in range(cfg.n_layers):
        p = params[f"block_{i}"]
        ln = lambda name, v: _layer_norm(v, p[name], eps)  # noqa: E731
        if cfg.block == "ln_residual":
            x = ln("ln_attn", x)
        a_in = ln("ln_attn", x) if cfg.block == "prenorm" and cfg.layer_norm else x

        def proj(name):
            y = a_in @ p[name]["kernel"].reshape(d, d)
            return (y + p[name]["bias"] if cfg.init == "torch" and cfg.bias else y).reshape(*y.shape[:2], h, dh)

        q, k, v = proj("query"), proj("key"), proj("value")
        s = np.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(dh)
        s = np.where(mask, s, -np.inf)
        w = np.exp(s - s.max(-1, keepdims=True))
        w /= w.sum(-1, keepdims=True)
        z = np.einsum("bhqk,bkhd->bqhd", w, v).reshape(*x.shape[:2], d)
        out = z @ p["out"]["kernel"].reshape(d, d) + (p["out"]["bias"] if cfg.init == "torch" and cfg.bias else 0)
        x = x + out
        if cfg.block == "postnorm":
            x = ln("ln_attn", x)
        m_in = ln("ln_mlp", x) if cfg.block == "ln_residual" or (cfg.block == "prenorm" and cfg.layer_norm) else x
        hid = m_in @ p["mlp_in"]["kernel"] + (p["mlp_in"]["bias"] if cfg.bias else 0)
        x = x + _act(cfg.act, hid) @ p["mlp_out"]["kernel"] + (p["mlp_out"]["bias"] if cfg.bias else 0)
        if cfg.block == "postnorm":
            x = ln("ln_mlp", x)
    x = x[:, -1]
    if cfg.block == "ln_residual" or (cfg.block == "prenorm" and cfg.layer_norm):
        x = _layer_norm(x, params["ln_final"], eps)
    return x @ params["unembed"]["kernel"]


BLOCKS = [ModelConfig(n_layers=2, d_model=16, n_heads=2, d_mlp=24, block=b, init=i, pos=pos, act=a, layer_norm=ln,
                      bias=bias)
          for b, i, pos, a, ln, bias in [("postnorm", "torch", "sinusoidal", "relu", False, False),
                                         ("postnorm", "torch", "sinusoidal", "gelu", False, True),
                                         ("ln_residual", "torch", "learned", "gelu", False, True),
                                         ("prenorm", "torch", "learned", "gelu_tanh", True, True),
                                         ("postnorm", "lecun", "learned", "relu", False, True),
                                         ("ln_residual", "lecun", "sinusoidal", "quadratic", False, True)]]


@pytest.mark.parametrize("cfg", BLOCKS, ids=lambda c: f"{c.block}-{c.init}-{c.pos}-{c.act}-{'bias' * c.bias}")
@pytest.mark.parametrize("tokens", [3, 4])
def test_blocks_equal_the_direct_formula(cfg, tokens):
    table = make_table(TaskConfig("mul", 7, tokens=tokens, nonzero_y=True))
    inputs = jnp.array(table.inputs)
    model = Transformer(cfg, table.vocab_size, table.n_classes, seq_len=tokens, dtype=jnp.float64)
    params = model.init(jax.random.key(1), inputs[:1])["params"]
    # LayerNorm scales and biases away from 1 and 0, so a norm applied in the wrong place shows
    params = jax.tree_util.tree_map_with_path(
        lambda path, x: x + 0.3 * jax.random.normal(jax.random.key(len(str(path))), x.shape, x.dtype)
        if "ln_" in str(path) or "bias" in str(path) else x, params)
    got = np.asarray(model.apply({"params": params}, inputs))
    assert got.shape == (table.n_pairs, table.n_classes)
    np.testing.assert_allclose(got, reference_logits(cfg, params, table.inputs), rtol=1e-10, atol=1e-10)


def test_torch_init_has_pytorchs_distributions():
    d, d_mlp = 128, 512
    cfg = ModelConfig(n_layers=1, d_model=d, n_heads=4, d_mlp=d_mlp, block="ln_residual", init="torch", act="gelu")
    params = Transformer(cfg, 99, 99, seq_len=4, dtype=jnp.float64).init(
        jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
    p = jax.tree.map(np.asarray, params)
    b = p["block_0"]

    def uniform(x, bound):  # U(-bound, bound): inside the bound, variance bound^2 / 3
        assert np.abs(x).max() <= bound and np.abs(x).max() > 0.95 * bound
        assert abs(x.var() / (bound**2 / 3) - 1) < 0.1 and abs(x.mean()) < 0.05 * bound

    for name in ("query", "key", "value"):  # xavier-uniform over the stacked [3d, d] in-projection
        uniform(b[name]["kernel"], math.sqrt(6 / (4 * d)))
        assert not b[name]["bias"].any()
    uniform(b["out"]["kernel"], 1 / math.sqrt(d))
    assert not b["out"]["bias"].any()
    uniform(b["mlp_in"]["kernel"], 1 / math.sqrt(d))
    uniform(b["mlp_in"]["bias"], 1 / math.sqrt(d))
    uniform(b["mlp_out"]["kernel"], 1 / math.sqrt(d_mlp))
    uniform(p["unembed"]["kernel"], 1 / math.sqrt(d))
    for x in (p["embed"]["embedding"], p["pos_embed"]):  # nn.Embedding: N(0, 1)
        assert abs(x.std() - 1) < 0.05 and abs(x.mean()) < 0.05
    assert (b["ln_attn"]["scale"] == 1).all() and not b["ln_attn"]["bias"].any()
    lecun = Transformer(ModelConfig(d_model=d, d_mlp=d_mlp), 48, 47, dtype=jnp.float64).init(
        jax.random.key(0), jnp.zeros((1, 3), jnp.int32))["params"]
    assert abs(np.asarray(lecun["embed"]["embedding"]).std() * math.sqrt(d) - 1) < 0.05
    assert "bias" not in lecun["block_0"]["query"]


def test_four_token_and_nonzero_y_tables():
    t = make_table(TaskConfig("mul", 97, tokens=4, nonzero_y=True))
    assert t.n_pairs == 97 * 96 == 9312 and t.inputs.shape == (9312, 4)
    assert (t.inputs[:, 1] == 98).all() and (t.inputs[:, 3] == 97).all() and (t.inputs[:, 2] != 0).all()
    assert t.vocab_size == t.n_classes == 99
    np.testing.assert_array_equal(t.labels, t.inputs[:, 0] * t.inputs[:, 2] % 97)
    three = make_table(TaskConfig("add", 5, nonzero_y=True))
    assert three.n_pairs == 20 and three.vocab_size == 6 and three.n_classes == 5 and (three.inputs[:, 1] > 0).all()


def _engine(args):
    (group, runs), = build_sweep(None, merged(["p=11", "d_model=8", "n_heads=2", "d_mlp=8", "steps=10",
                                               "dtype=float64"], args)).groups()
    return group, runs, engine_for(group, runs)


def test_epoch_batches_cover_the_train_split_once_per_epoch_with_a_short_last_batch():
    group, runs, engine = _engine(["batch_size=16", "batching=epoch", "frac=0.5"])
    hp = jax.tree.map(lambda x: jnp.asarray(x[0]), hparams_for(runs, engine.table.n_pairs))
    _, split = engine.init_one(hp)
    n_train = int(hp.n_train)
    assert n_train == 61  # 4 batches per epoch: 16, 16, 16 and 13
    epochs = []
    for e in range(2):
        seen = []
        for j in range(4):
            idx, w = engine.batch_one(split, hp, jnp.int32(4 * e + j))
            real = np.asarray(idx)[np.asarray(w) > 0]
            assert len(real) == (13 if j == 3 else 16)
            seen += real.tolist()
        assert sorted(seen) == sorted(np.asarray(split.train_idx)[:n_train].tolist())  # each pair once
        epochs.append(seen)
    assert epochs[0] != epochs[1]  # a fresh permutation each epoch


@pytest.mark.parametrize("from_zero, factors", [(False, [0.1, 0.2, 0.3]), (True, [0.0, 0.1, 0.2])])
def test_warmup_factors(from_zero, factors):
    opt = make_optimizer(TrainConfig(optimizer="sgd", warmup_steps=10, warmup_from_zero=from_zero),
                         {"lr": 1.0, "wd": 0.0, "momentum": 0.0})
    params = jnp.zeros(1)
    state = opt.init(params)
    got = []
    for _ in factors:
        updates, state = opt.update(jnp.ones(1), state, params)
        got.append(-float(updates[0]))
    np.testing.assert_allclose(got, factors, atol=1e-12)
    assert isinstance(opt, optax.GradientTransformation)


def test_data_seed_moves_the_split_and_seed_the_initialisation():
    # (seed 0, data_seed -1) and (seed 0, data_seed 0) are the same run: one grid refuses the pair, so two grids
    out = {}
    for grid in (["seeds=[0,1]", "data_seed=[-1,5]"], ["seed=1", "data_seed=0"]):
        _collect(out, _engine([*grid, "batch_size=8"]))
    same = lambda a, b, k: np.array_equal(out[a][k], out[b][k])  # noqa: E731
    assert same((0, -1), (1, 0), 0) and same((0, -1), (1, 0), 1)  # -1 means: the seed's own
    assert same((0, 5), (1, 5), 0) and same((0, 5), (1, 5), 1)  # data_seed fixes the split and batches
    assert not same((0, 5), (1, 5), 2)  # ... while seed still moves the initialisation
    assert same((0, -1), (0, 5), 2) and not same((0, -1), (0, 5), 0)  # and the reverse


def _collect(out: dict, built: tuple) -> None:
    """(split, a batch, embedding) of every run of ``built`` (``_engine``'s), by (seed, data_seed)."""
    group, runs, engine = built
    hps = hparams_for(runs, engine.table.n_pairs)
    by = {(r.get("hp.seed"), r.get("hp.data_seed")): i for i, r in enumerate(runs)}
    for key, i in by.items():
        hp = jax.tree.map(lambda x: jnp.asarray(x[i]), hps)
        state, split = engine.init_one(hp)
        out[key] = (np.asarray(split.train_idx), np.asarray(engine.batch_one(split, hp, jnp.int32(3))[0]),
                    np.asarray(state.params["embed"]["embedding"]))


@pytest.mark.parametrize("args", [
    ["block=postnorm", "init=torch", "pos=sinusoidal", "tokens=4", "embed_std=[0,0.5]", "act=gelu"],
    ["block=ln_residual", "batching=epoch", "batch_size=16", "data_seed=[-1,3]", "seeds=2", "warmup_from_zero=true",
     "nonzero_y=true"],
])
def test_every_option_trains_alone_as_inside_a_mixed_grid(args):
    sweep = build_sweep(None, merged(["p=11", "d_model=8", "n_heads=2", "d_mlp=8", "steps=20", "eval_every=10",
                                      "lr=1e-2", "dtype=float64"], args))
    for group, runs in sweep.groups():
        grid = train_alone(group, runs)
        assert np.isfinite(grid["train_loss"]).all()
        for i, run in enumerate(runs):
            alone = train_alone(group, [run])
            for k, v in alone.items():
                np.testing.assert_allclose(v[:, 0], grid[k][:, i], rtol=1e-10, atol=1e-12, err_msg=k)


@pytest.mark.parametrize("bad, accepted", [
    ("block=pre", "prenorm, postnorm, ln_residual"), ("init=xavier", "lecun, torch"), ("tokens=5", "3 or 4"),
    ("pos=rotary", "learned, sinusoidal"), ("batching=shuffle", "random, epoch"), ("embed_std=-1", ">= 0"),
    ("data_seed=-2", "from -1"), ("act=swish", "gelu_tanh"),
])
def test_bad_values_are_one_line_errors(tmp_path, capsys, bad, accepted):
    assert main(["sweep", "steps=10", bad, "--out", str(tmp_path / "r"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and bad.split("=")[0] in err and accepted in err, err


@pytest.mark.parametrize("args, named", [(["arch=mlp", "block=postnorm"], "block"),
                                         (["arch=mlp", "init=torch"], "init"),
                                         (["arch=mlp", "dataset=digits", "tokens=4"], "tokens"),
                                         (["tokens=4", "measures=excluded"], "excluded")])
def test_options_that_do_not_apply_are_refused(tmp_path, capsys, args, named):
    assert main(["sweep", "steps=10", *args, "--out", str(tmp_path / "r"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and named in err, err


def test_arms_expand_to_the_union_of_their_grids(tmp_path):
    from grokjax.grid.expand import changed_settings

    sweep = build_sweep(None, ["steps=10", "seeds=2", "lr=[1e-3,1e-2]"],
                        arms=["grokfast=none wd=0", "grokfast=ema grokfast_lamb=5 wd=0.005"])
    got = [(r.run_id, r.get("train.grokfast"), r.get("hp.wd"), r.get("hp.grokfast_lamb"), r.get("hp.lr"),
            r.get("hp.seed")) for _, runs in sweep.groups() for r in runs]
    want = [(i, arm, wd, lamb, lr, seed) for i, ((arm, wd, lamb), lr, seed) in enumerate(
        (a, lr, s) for a in (("none", 0.0, 2.0), ("ema", 0.005, 5.0)) for s in (0, 1) for lr in (1e-3, 1e-2))]
    assert sorted(got) == want and sweep.n_runs() == 8  # arm by arm, the axes in the order given
    assert sweep.swept == ["hp.seed", "hp.lr", "train.grokfast", "hp.wd", "hp.grokfast_lamb"]
    assert "arm 2: grokfast=ema grokfast_lamb=5 wd=0.005" in changed_settings(sweep)
    # the same arms from a sweep file's [[arms]] tables; command-line arms replace them
    path = tmp_path / "s.toml"
    path.write_text('steps = 10\nseeds = 2\nlr = [1e-3, 1e-2]\n[[arms]]\ngrokfast = "none"\nwd = 0.0\n'
                    '[[arms]]\ngrokfast = "ema"\ngrokfast_lamb = 5.0\nwd = 0.005\n')
    from_file = build_sweep(str(path))
    keys = ("train.grokfast", "hp.wd", "hp.grokfast_lamb", "hp.lr", "hp.seed")
    assert [tuple(r.get(k) for k in keys) for _, rs in from_file.groups() for r in rs] == [g[1:] for g in got]
    assert from_file.fingerprint() == build_sweep(str(path), []).fingerprint() != build_sweep(str(path), [], arms=[
        "grokfast=none wd=0"]).fingerprint()
    assert build_sweep(None, ["steps=10"]).fingerprint() == build_sweep(None, ["steps=10"], arms=None).fingerprint()


@pytest.mark.parametrize("arm, named", [("grokfast=none wd=[0,1]", "one value per key"), ("wd", "not key=value"),
                                        ("momentum=0.5", "has no effect"), ("wd=x", "wd"), ("nokey=1", "nokey")])
def test_bad_arms_are_one_line_errors(tmp_path, capsys, arm, named):
    assert main(["sweep", "steps=10", "--arm", arm, "--out", str(tmp_path / "r"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and named in err, err
    assert main(["sweep", "steps=10", "wd=[0,1]", "--arm", "wd=0", "--out", str(tmp_path / "r"), "--quiet"]) == 2
    assert "both swept" in capsys.readouterr().err


def test_digits_table_mlp_and_mse_loss_against_direct_formulas():
    from grokjax.losses import LOSSES
    from grokjax.models.mlp import MLP

    t = make_table(TaskConfig(dataset="digits"))
    assert t.inputs.shape == (1797, 64) and t.features and t.n_classes == 10
    assert t.inputs.min() == 0 and t.inputs.max() == 1 and set(np.unique(t.labels)) == set(range(10))
    cfg = ModelConfig(arch="mlp", n_layers=2, d_mlp=20)
    model = MLP(cfg, 0, 10, dtype=jnp.float64)
    x = jnp.asarray(t.inputs[:50], jnp.float64)
    p = jax.tree.map(np.asarray, model.init(jax.random.key(0), x)["params"])
    h = np.maximum(t.inputs[:50] @ p["in"]["kernel"] + p["in"]["bias"], 0)
    h = np.maximum(h @ p["hidden_1"]["kernel"] + p["hidden_1"]["bias"], 0)
    want = h @ p["readout"]["kernel"] + p["readout"]["bias"]
    logits = model.apply({"params": p}, x)
    np.testing.assert_allclose(np.asarray(logits), want, rtol=1e-10, atol=1e-12)
    assert np.abs(p["in"]["kernel"]).max() <= 1 / 8  # nn.Linear: U(+-1/sqrt(64))
    # torch's nn.MSELoss() against one-hot targets: the mean over samples and classes
    labels, w = jnp.asarray(t.labels[:50]), jnp.ones(50, jnp.float64).at[-5:].set(0)
    loss, acc = LOSSES["mse"](logits, labels, w)
    onehot = np.eye(10)[t.labels[:45]]
    np.testing.assert_allclose(float(loss), ((want[:45] - onehot) ** 2).mean(), rtol=1e-12)
    np.testing.assert_allclose(float(acc), (want[:45].argmax(1) == t.labels[:45]).mean(), rtol=1e-12)


@pytest.mark.parametrize("args, named", [(["dataset=digits"], "arch=mlp"),
                                         (["dataset=digits", "arch=mlp", "measures=fourier"], "fourier")])
def test_digits_refuses_what_does_not_apply(tmp_path, capsys, args, named):
    assert main(["sweep", "steps=10", *args, "--out", str(tmp_path / "r"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and named in err, err

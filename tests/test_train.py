"""The engine: vmapped == alone in float64, one compilation per group, real weight decay, per-model
divergence isolation, no host transfer inside a chunk, memory-aware model batches."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import TINY, CompileCounter, merged

from grokjax.config.schedule import METRIC_COLUMNS
from grokjax.engine.data import hparams_for
from grokjax.engine.memory import choose_models_per_batch
from grokjax.engine.program import (CPU_COMPILER_OPTIONS, ONCE_CPU_COMPILER_OPTIONS, Program, compiler_options,
                                    once_compiler_options)
from grokjax.engine.single import engine_for
from grokjax.grid.expand import build_sweep
from grokjax.optim.factory import make_optimizer
from grokjax.run.pool import SlotPool, train_alone


def _group(args):
    (group, runs), = build_sweep(None, merged(args)).groups()
    return group, runs


def _assert_same(a, b, rtol):
    for k in METRIC_COLUMNS:
        np.testing.assert_allclose(a[k], b[k], rtol=rtol, atol=rtol, equal_nan=True, err_msg=k)


def test_model_in_grid_equals_model_alone_float64():
    group, runs = _group(TINY + ["dtype=float64", "wd=[0.01,0.1,1]", "lr=[1e-3,3e-3]", "seeds=2"])
    grid = train_alone(group, runs)
    for i in (0, 5, 9):
        alone = train_alone(group, [runs[i]])
        _assert_same({k: v[:, i:i + 1] for k, v in grid.items()}, alone, rtol=1e-10)


@pytest.mark.slow
def test_same_run_in_grid_of_one_and_six_minibatch():
    """Minibatch sampling depends on the run's own seed only, not on its neighbours (on the MLP, which
    compiles faster: the sampling is the model's neighbours' whatever the model)."""
    args = TINY + ["dtype=float64", "batch_size=8", "arch=mlp"]
    group, runs = _group(args + ["wd=[0.01,0.1,1]", "seeds=2"])
    six = train_alone(group, runs)
    g1, one = _group(args + ["wd=0.1", "seed=1"])
    alone = train_alone(g1, one)
    idx = [(r.get("hp.wd"), r.get("hp.seed")) for r in runs].index((0.1, 1))
    _assert_same({k: v[:, idx:idx + 1] for k, v in six.items()}, alone, rtol=1e-10)


def test_one_compilation_for_a_numeric_grid_and_none_for_the_next():
    counter = CompileCounter("train_chunk")
    base = ["op=add", "p=13", "d_model=8", "n_heads=2", "d_mlp=16", "steps=40", "eval_every=20",
            "chunk_steps=20", "frac=0.5"]
    group, runs = _group(base + ["wd=[0.1,1]", "lr=[1e-3,1e-2]", "seeds=2"])
    train_alone(group, runs)
    assert counter.count == 1
    group2, runs2 = _group(base + ["wd=[0.2,3]", "lr=[2e-3,5e-3]", "seeds=[5,6]"])
    assert group2 == group
    train_alone(group2, runs2)
    assert counter.count == 1


def _final_norms(args):
    group, runs = _group(TINY + ["lr=1e-2", "seeds=1"] + args)
    m = train_alone(group, runs)
    return m["param_norm"][-1]


@pytest.mark.parametrize("mask", ["all", "matrices"])
@pytest.mark.slow
def test_weight_decay_shrinks_parameters(mask):
    """Larger wd => smaller norm. With decay_mask=matrices the mask is a callable: without
    static_args=("mask",) optax would treat it as a schedule and decay would silently vanish."""
    norms = _final_norms([f"decay_mask={mask}", "wd=[0,1,10]"])
    assert norms[0] > norms[1] > norms[2]
    assert norms[2] < 0.8 * norms[0]


@pytest.mark.parametrize("mask", ["all", "matrices"])
def test_decoupled_decay_is_pytorch_adamw(mask):
    """With zero gradients AdamW moves p by exactly -lr*wd*p (times the warmup factor) on decayed leaves."""
    group, runs = _group(TINY + ["dtype=float64", f"decay_mask={mask}", "warmup_steps=10"])
    eng = engine_for(group, runs)
    params = {"w": jnp.ones((2, 3), jnp.float64), "b": jnp.ones((3,), jnp.float64)}
    opt = make_optimizer(eng.group.train, {"lr": jnp.float64(0.1), "wd": jnp.float64(0.5)})
    state = opt.init(params)
    updates, state = eng.optimizer().update(jax.tree.map(jnp.zeros_like, params), state, params)
    new = optax.apply_updates(params, updates)
    factor = 1 / 10  # first warmup step
    np.testing.assert_allclose(new["w"], 1 - 0.1 * 0.5 * factor)
    np.testing.assert_allclose(new["b"], 1 - 0.1 * 0.5 * factor if mask == "all" else 1.0)


@pytest.mark.parametrize("args", [[], ["arch=mlp", "mlp_input=embed"], ["layer_norm=true"]])
@pytest.mark.parametrize("mask", ["all", "matrices"])
def test_weight_decay_reaches_every_parameter_of_the_real_model(mask, args):
    """On the model's own parameters (embeddings, attention, MLP, LayerNorms, unembedding): with zero
    gradients one AdamW update scales every decayed leaf by 1 - lr*wd/10 (first warmup step); decay_mask=all
    decays every leaf, matrices exactly the leaves with 2 or more axes."""
    group, runs = _group(TINY + ["dtype=float64", f"decay_mask={mask}", "warmup_steps=10", "lr=0.1", "wd=0.5",
                                 *args])
    eng = engine_for(group, runs)
    hp = jax.tree.map(lambda x: jnp.asarray(x[0]), hparams_for(runs, eng.table.n_pairs))
    with jax.enable_x64(True):
        state, _ = eng.init_one(hp)
        updates, _ = eng.optimizer().update(jax.tree.map(jnp.zeros_like, state.params), state.opt_state,
                                            state.params)
        new = optax.apply_updates(state.params, updates)
    paths = jax.tree_util.tree_leaves_with_path(state.params)
    assert any("embed" in jax.tree_util.keystr(path) for path, _ in paths)
    for (path, old), fresh in zip(paths, jax.tree.leaves(new)):
        decayed = mask == "all" or old.ndim >= 2
        np.testing.assert_allclose(fresh, old * (1 - 0.1 * 0.5 / 10) if decayed else old, rtol=1e-12,
                                   err_msg=jax.tree_util.keystr(path))


def test_minibatches_come_from_the_models_own_train_split():
    group, runs = _group(TINY + ["batch_size=4", "seeds=2", "frac=[0.3,0.6]"])
    eng = engine_for(group, runs)
    hps = hparams_for(runs, eng.table.n_pairs)
    for i in range(len(runs)):
        hp = jax.tree.map(lambda x: jnp.asarray(x[i]), hps)
        _, split = eng.init_one(hp)
        train = set(np.asarray(split.train_idx)[: int(hp.n_train)].tolist())
        val = set(np.asarray(split.val_idx)[np.asarray(split.val_w) > 0].tolist())
        assert not train & val and len(train) + len(val) == eng.table.n_pairs
        for step in range(5):
            idx, w = eng.batch_one(split, hp, jnp.int32(step))
            assert set(np.asarray(idx).tolist()) <= train and len(set(np.asarray(idx).tolist())) == 4


@pytest.mark.slow
def test_divergence_is_isolated():
    group, runs = _group(TINY + ["dtype=float64", "lr=[0.001,1000000]", "arch=mlp"])
    both = train_alone(group, runs)
    g1, healthy = _group(TINY + ["dtype=float64", "lr=0.001", "arch=mlp"])
    alone = train_alone(g1, healthy)
    _assert_same({k: v[:, :1] for k, v in both.items()}, alone, rtol=1e-10)
    assert np.isnan(both["train_loss"][-1, 1]) and np.isfinite(both["train_loss"][:, 0]).all()


def test_no_host_transfer_inside_a_chunk():
    group, runs = _group(TINY + ["wd=[0.1,1]"])
    eng = engine_for(group, runs)
    prog = Program.get(eng, len(runs))
    hps = prog.put(hparams_for(runs, eng.table.n_pairs))
    state, splits = prog.init(hps)
    start = jax.device_put(jnp.int32(0))
    with jax.transfer_guard("disallow"):
        out = prog.train_chunk(state, splits, hps, start)
        jax.block_until_ready(out)


def test_cpu_programs_are_compiled_without_ynnpack_fusions():
    """The sweep's programs get CPU_COMPILER_OPTIONS on the CPU (YNNPACK fusions off: 1.1-2.5x slower
    for these shapes, benchmarks/PROFILE.md) and no options elsewhere."""
    assert compiler_options("cpu") == CPU_COMPILER_OPTIONS and compiler_options("gpu") == {}
    group, runs = _group(TINY + ["wd=[0.1,1]"])
    prog = Program.get(engine_for(group, runs), len(runs))
    assert prog.compiler_options == CPU_COMPILER_OPTIONS
    assert "%ynn_fusion" not in prog._compiled(prog.chunk_steps).as_text()  # as XLA's defaults make


@pytest.mark.parametrize("args", [["wd=[0.1,1]", "init_scale=[0.5,2]"], ["arch=mlp", "wd=[0.1,1]", "seeds=2"],
                                  ["dtype=float64", "snapshot_at_transitions=true", "wd=[0.1,1]"]])
def test_the_init_compiled_to_build_fast_gives_the_bits_of_the_default_compilation(args):
    """The init program is compiled at LLVM level 1 (ONCE_CPU_COMPILER_OPTIONS: 2-3x faster to build);
    its parameters, optimizer state and splits equal, bitwise, those of the same program compiled with the
    chunk's options (level 2). Level 0 would fail here: it rounds the normal draws differently."""
    assert once_compiler_options("cpu") == CPU_COMPILER_OPTIONS | ONCE_CPU_COMPILER_OPTIONS
    assert once_compiler_options("gpu") == {}
    group, runs = _group(TINY + args)
    engine = engine_for(group, runs)
    prog = Program.get(engine, len(runs))
    hps = hparams_for(runs, engine.table.n_pairs)
    with jax.enable_x64(engine.x64):
        default = jax.jit(jax.vmap(engine.init_one), out_shardings=prog.sharded).lower(
            prog._abstract_hparams()).compile(compiler_options=prog.compiler_options)
        want, got = (jax.device_get(f(prog.put(hps))) for f in (default, prog.init))
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_memory_aware_batching_picks_a_batch_that_fits():
    group, runs = _group(TINY + ["wd=[0.1,0.3,1,3]", "seeds=2", "arch=mlp"])  # the MLP compiles faster
    eng = engine_for(group, runs)
    m_all, why = choose_models_per_batch(eng, 8)
    assert m_all == 8 and "8 slots, one per run" in why
    one, two = Program.get(eng, 1).bytes, Program.get(eng, 2).bytes
    per_model = two - one
    budget = one + 3 * per_model
    m, why = choose_models_per_batch(eng, 8, budget=budget)
    assert 1 <= m < 8 and Program.get(eng, m).bytes <= budget and "budget" in why
    assert choose_models_per_batch(eng, 8, requested=m)[0] == m


@pytest.mark.slow
def test_a_budget_that_chunks_do_not_divide_computes_no_extra_step():
    """steps=50 in chunks of 20: the last chunk runs 10 steps, so the final state is the 50-step state
    (float64: equal to the same run in one 50-step chunk), not a 60-step one."""
    base = ["op=add", "p=11", "arch=mlp", "d_mlp=32", "frac=0.5", "wd=1", "lr=3e-3", "steps=50", "eval_every=10",
            "dtype=float64"]
    finals = []
    for chunk in (20, 50):
        group, runs = build_sweep(None, [*base, f"chunk_steps={chunk}"]).groups()[0]
        engine = engine_for(group, runs)
        prog = Program.get(engine, len(runs))
        before = prog.steps_computed
        results = list(SlotPool(engine, runs, len(runs), lambda n: Program.get(engine, n)).chunks())
        assert prog.steps_computed - before == 50
        assert [(r.start, r.end) for r in results] == [(s, min(s + chunk, 50)) for s in range(0, 50, chunk)]
        finals.append(results[-1].checkpoint.leaves)
    for a, b in zip(*finals):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)

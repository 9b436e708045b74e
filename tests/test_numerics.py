"""Numerics as a swept axis: the loss's precision (loss_dtype) and Prieto et al. 2025's softmax-collapse
measures (measures=collapse), against direct computations."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import merged

from grokjax.engine.data import hparams_for
from grokjax.engine.single import engine_for
from grokjax.grid.expand import build_sweep
from grokjax.losses import collapse_fractions
from grokjax.run.pool import train_alone


def _np_log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def test_collapse_in_float32_and_not_in_float64():
    """A gap of 20 between the label's logit and the rest: exp(-20) ~ 2e-9 is lost against 1 in float32
    (eps 6e-8) but not in float64 (eps 1e-16)."""
    z = np.zeros((4, 5))
    z[:2, 0] = 20.0  # samples 0, 1: collapsed in float32
    z[2, 0] = 3.0  # sample 2: a healthy margin
    labels = np.array([0, 0, 0, 1])
    w = np.array([1.0, 1.0, 1.0, 0.0])  # sample 3 is padding
    f32 = collapse_fractions("softmax", jnp.asarray(z, jnp.float32), jnp.asarray(labels), jnp.asarray(w, jnp.float32))
    f64 = collapse_fractions("softmax", jnp.asarray(z, jnp.float64), jnp.asarray(labels), jnp.asarray(w))
    assert float(f32["collapse_zero_loss"]) == float(f32["collapse_denominator_one"]) == pytest.approx(2 / 3)
    assert float(f64["collapse_zero_loss"]) == float(f64["collapse_denominator_one"]) == 0.0
    # direct: the float32 denominators and losses themselves
    zz = (z - z.max(-1, keepdims=True)).astype(np.float32)
    assert (np.exp(zz).sum(-1, dtype=np.float32)[:2] == 1).all()
    st = collapse_fractions("stablemax", jnp.asarray(z, jnp.float32), jnp.asarray(labels), jnp.asarray(w, jnp.float32))
    assert float(st["collapse_zero_loss"]) == 0.0 and np.isnan(float(st["collapse_denominator_one"]))


def test_a_float64_loss_equals_numpys_on_the_same_float32_logits():
    args = merged(["p=11", "d_model=8", "n_heads=2", "d_mlp=8", "steps=10", "init_scale=6"])
    out = {}
    for loss_dtype in ("float32", "float64"):
        (group, runs), = build_sweep(None, [*args, f"loss_dtype={loss_dtype}"]).groups()
        engine = engine_for(group, runs)
        hp = jax.tree.map(lambda x: jnp.asarray(x[0]), hparams_for(runs, engine.table.n_pairs))
        with jax.enable_x64(loss_dtype == "float64"):
            state, split = engine.init_one(hp)
            inputs, labels = jnp.asarray(engine.table.inputs), jnp.asarray(engine.table.labels)
            logits = np.asarray(engine.model.apply({"params": state.params}, inputs), np.float64)
            loss, _ = engine.loss_one(state.params, inputs, labels, jnp.ones(len(labels), jnp.float32))
        out[loss_dtype] = (float(loss), loss.dtype, logits)
    want = -_np_log_softmax(out["float64"][2])[np.arange(len(labels)), np.asarray(labels)].mean()
    assert out["float64"][1] == jnp.float64 and out["float32"][1] == jnp.float32
    np.testing.assert_allclose(out["float64"][0], want, rtol=1e-13)
    assert out["float32"][0] != out["float64"][0]  # the float32 loss rounds differently
    np.testing.assert_allclose(out["float32"][0], want, rtol=1e-4)


def test_collapse_measures_are_logged_and_a_float64_loss_trains_a_float32_model():
    """At init_scale 15 the MLP's initial logits are far apart: some training samples have collapsed in
    float32 (denominator exactly 1, a few losses exactly 0) and none in float64."""
    args = merged(["arch=mlp", "p=23", "d_mlp=32", "wd=0", "lr=0.03", "frac=0.5", "steps=20", "eval_every=10",
                   "measures=norms+collapse", "seeds=1", "init_scale=15"])
    got = {}
    for loss_dtype in ("float32", "float64"):
        (group, runs), = build_sweep(None, [*args, f"loss_dtype={loss_dtype}"]).groups()
        m = train_alone(group, runs)
        assert m["train_loss"].dtype == np.float32 and np.isfinite(m["train_loss"]).all()
        got[loss_dtype] = (float(m["collapse_zero_loss"][0, 0]), float(m["collapse_denominator_one"][0, 0]))
        assert not np.isnan(m["collapse_zero_loss"]).any()  # every logged step
    n_train = 265  # 0.5 * 23^2 rounded half up: the fractions are counts over 265 training pairs
    zero, one = got["float32"]
    assert 0 < zero < one < 1 and abs(one * n_train - round(one * n_train)) < 1e-3
    assert got["float64"] == (0.0, 0.0)


@pytest.mark.slow  # the fast tier checks every layout's bfloat16 forward (test_caught.py)
def test_bfloat16_and_tf32_train_and_differ_from_float32_by_their_rounding_only():
    """The same float32 initialisation trained 20 steps: bfloat16 compute stays within bfloat16's rounding
    of the float32 run (8 bits of mantissa: ~0.4% per operation) and really differs; tf32 equals float32
    on a CPU, which has no TF32."""
    args = merged(["p=23", "d_model=16", "n_heads=2", "d_mlp=32", "wd=1", "lr=1e-3", "frac=0.5", "steps=20",
                   "eval_every=10", "seeds=1"])
    runs = {}
    for precision in ("float32", "tf32", "bfloat16"):
        (group, rs), = build_sweep(None, [*args, f"precision={precision}"]).groups()
        runs[precision] = train_alone(group, rs)
    ref, half = runs["float32"], runs["bfloat16"]
    for k in ("train_loss", "val_loss", "param_norm", "train_acc"):
        assert half[k].dtype == np.float32 and np.isfinite(half[k][~np.isnan(ref[k])]).all(), k
    for k in ("train_loss", "val_loss", "param_norm"):
        seen = ~np.isnan(ref[k][:, 0])
        err = np.abs(half[k][seen, 0] - ref[k][seen, 0]) / np.abs(ref[k][seen, 0])
        assert err.max() < 2e-2, (k, err.max())
    assert np.abs(half["train_loss"][0, 0] / ref["train_loss"][0, 0] - 1) > 1e-5  # computed in bfloat16
    assert (half["param_norm"][0] == ref["param_norm"][0]).all()  # float32 master weights, same init
    np.testing.assert_array_equal(runs["tf32"]["train_loss"], ref["train_loss"])

"""Task tables and the single-model transformer."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from grokjax.models.transformer import Transformer
from grokjax.spec.structure import ModelConfig, TaskConfig
from grokjax.tasks.tables import OPS, make_table, n_pairs_of


@pytest.mark.parametrize("op", OPS)
def test_tables_are_complete_and_in_range(op):
    t = make_table(TaskConfig(op, 7))
    assert t.inputs.shape == (n_pairs_of(op, 7), 3) and t.labels.shape == (t.n_pairs,)
    assert (t.inputs[:, 2] == t.n_symbols).all() and t.labels.min() >= 0 and t.labels.max() < t.n_symbols
    assert len({tuple(x) for x in t.inputs[:, :2]}) == t.n_pairs


def test_operations_mod_p():
    p = 11
    for op, f in {"add": lambda x, y: x + y, "sub": lambda x, y: x - y, "mul": lambda x, y: x * y,
                  "x2_y2": lambda x, y: x * x + y * y, "x3_xy2_y": lambda x, y: x**3 + x * y * y + y}.items():
        t = make_table(TaskConfig(op, p))
        expected = np.array([f(int(a), int(b)) % p for a, b in t.inputs[:, :2]])
        np.testing.assert_array_equal(t.labels, expected)
    div = make_table(TaskConfig("div", p))
    a, b = div.inputs[:, 0], div.inputs[:, 1]
    assert (b != 0).all() and ((div.labels * b) % p == a).all()  # c = a / b  <=>  c * b = a


def test_s5_is_permutation_composition():
    t = make_table(TaskConfig("s5", 0))
    perms = list(itertools.permutations(range(5)))
    rng = np.random.default_rng(0)
    for i in rng.integers(0, t.n_pairs, 50):
        x, y, z = perms[t.inputs[i, 0]], perms[t.inputs[i, 1]], perms[t.labels[i]]
        assert all(z[k] == x[y[k]] for k in range(5))


@pytest.mark.parametrize("cfg", [ModelConfig(n_layers=1, d_model=16, n_heads=2, d_mlp=32, layer_norm=False, act="relu"),
                                 ModelConfig(n_layers=2, d_model=24, n_heads=3, d_mlp=40, layer_norm=True, act="gelu")])
def test_answer_only_logits_equal_full_computation(cfg):
    """The last block computes queries, MLP and unembedding at the answer position only; same logits."""
    tokens = jnp.array(make_table(TaskConfig("add", 7)).inputs)
    full = Transformer(cfg, 8, 7, answer_only=False, dtype=jnp.float64)
    fast = Transformer(cfg, 8, 7, answer_only=True, dtype=jnp.float64)
    params = full.init(jax.random.key(0), tokens[:1])["params"]
    assert jax.tree.structure(params) == jax.tree.structure(fast.init(jax.random.key(0), tokens[:1])["params"])
    a = jax.jit(full.apply)({"params": params}, tokens)
    b = jax.jit(fast.apply)({"params": params}, tokens)
    assert a.shape == (49, 7)
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)

"""Task tables and the single-model transformer."""

from __future__ import annotations

import importlib.util
import itertools
import math
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REPO
from jax.extend.core import ClosedJaxpr, Jaxpr

from grokjax.config.choices import OPS
from grokjax.config.structure import ModelConfig, TaskConfig
from grokjax.models.layers import matmul
from grokjax.models.transformer import Transformer
from grokjax.tasks.tables import make_table, n_pairs_of


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


def _textbook():
    spec = importlib.util.spec_from_file_location("textbook", REPO / "benchmarks" / "textbook.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["textbook"] = module  # flax's dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("answer_only", [True, False])
@pytest.mark.parametrize("cfg", [ModelConfig(n_layers=1, d_model=16, n_heads=2, d_mlp=32, layer_norm=False, act="relu"),
                                 ModelConfig(n_layers=2, d_model=24, n_heads=3, d_mlp=40, layer_norm=True, act="gelu",
                                             bias=False),
                                 ModelConfig(n_layers=2, d_model=16, n_heads=4, d_mlp=24, layer_norm=False)])
def test_transformer_equals_the_textbook_formulation(cfg, answer_only):
    """grokjax's block (products and sums for attention, ``layers.matmul``, the first block's projections
    as lookups in projected embedding tables) has flax DenseGeneral's parameters (names, shapes, initial
    values) and the textbook block's logits and gradients."""
    tokens = jnp.array(make_table(TaskConfig("add", 7)).inputs)
    ours = Transformer(cfg, 8, 7, answer_only=answer_only, dtype=jnp.float64)
    params = ours.init(jax.random.key(3), tokens[:1])["params"]
    with _textbook().textbook_transformer():
        book = Transformer(cfg, 8, 7, answer_only=answer_only, dtype=jnp.float64)
        book_params = book.init(jax.random.key(3), tokens[:1])["params"]
        book_apply = jax.jit(book.apply)
        book_loss = jax.jit(jax.grad(lambda p: (book.apply({"params": p}, tokens) ** 2).mean()))
        expected = book_apply({"params": params}, tokens), book_loss(params)
    assert jax.tree.structure(params) == jax.tree.structure(book_params)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(book_params)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(jax.jit(ours.apply)({"params": params}, tokens), expected[0], rtol=1e-12, atol=1e-12)
    grads = jax.jit(jax.grad(lambda p: (ours.apply({"params": p}, tokens) ** 2).mean()))(params)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(expected[1])):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def _dot_shapes(jaxpr: Jaxpr) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """The operand shapes of every dot_general in a jaxpr, nested jaxprs (custom VJPs, pjit) included."""
    shapes = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            shapes.append(tuple(v.aval.shape for v in eqn.invars))
        for param in eqn.params.values():
            for sub in param if isinstance(param, (list, tuple)) else [param]:
                if isinstance(sub, ClosedJaxpr):
                    shapes += _dot_shapes(sub.jaxpr)
                elif isinstance(sub, Jaxpr):
                    shapes += _dot_shapes(sub)
    return shapes


@pytest.mark.parametrize("layer_norm", [False, True])
def test_first_block_projects_the_embedding_tables(layer_norm):
    """Without LayerNorm the first block's queries, keys and values are lookups in projected tables
    ([V, D] x [D, F] products): no product in the forward or backward pass runs over the B*T token rows,
    only over the B answer rows (MLP, unembedding). With LayerNorm the projections need x itself."""
    cfg = ModelConfig(n_layers=1, d_model=16, n_heads=2, d_mlp=32, layer_norm=layer_norm)
    tokens = jnp.array(make_table(TaskConfig("add", 7)).inputs)  # [49, 3]
    model = Transformer(cfg, 8, 7)
    params = model.init(jax.random.key(0), tokens[:1])["params"]
    loss = lambda p: (model.apply({"params": p}, tokens) ** 2).mean()  # noqa: E731
    shapes = _dot_shapes(jax.make_jaxpr(jax.value_and_grad(loss))(params).jaxpr)
    n_rows = tokens.shape[0] * tokens.shape[1]
    over_tokens = [s for s in shapes if any(n_rows in (math.prod(x[:-1]), math.prod(x[1:])) for x in s)]
    assert shapes and any(tokens.shape[0] in x for s in shapes for x in s)
    assert bool(over_tokens) == layer_norm, over_tokens


def test_matmul_gradients_equal_autodiff():
    """layers.matmul's hand-written VJP (x^T kept from the forward pass) gives autodiff's gradients of
    x @ w, for a batch of any rank and under vmap over models."""
    kx, kw, kc = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (4, 5, 3, 6), jnp.float64)  # [models, B, T, in]
    w = jax.random.normal(kw, (4, 6, 7), jnp.float64)
    c = jax.random.normal(kc, (4, 5, 3, 7), jnp.float64)

    def loss(mm):
        return jax.vmap(lambda x1, w1, c1: jnp.sum(jnp.tanh(mm(x1, w1)) * c1))

    ours = jax.jit(jax.grad(lambda x, w: loss(matmul)(x, w, c).sum(), argnums=(0, 1)))(x, w)
    plain = jax.jit(jax.grad(lambda x, w: loss(jnp.matmul)(x, w, c).sum(), argnums=(0, 1)))(x, w)
    for a, b in zip(ours, plain):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)

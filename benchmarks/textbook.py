"""The transformer block written the textbook way, as grokjax wrote it before the CPU speed work (flax
``nn.DenseGeneral`` projections, per-head einsums for attention, ``nn.Dense`` with autodiff's own VJP,
``jnp.argmax`` for the accuracy).

``without_embedding_lookups`` is grokjax's block before its first-block projections became table
lookups. The textbook block is the "before" of ``benchmarks/cpu_speed.py`` and the reference that tests/test_tasks_model.py
checks grokjax's faster formulation against (same parameters, same logits and gradients in float64).
"""

from __future__ import annotations

import contextlib
import math
from typing import Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp

import grokjax.losses as losses
import grokjax.models.transformer as transformer
from grokjax.models.layers import activation, matmul


class TextbookBlock(transformer.Block):
    """grokjax's Block (same fields) computed the textbook way."""

    @nn.compact
    def __call__(self, x: jax.Array | transformer.Embedded) -> jax.Array:  # x: [B, T, D]
        x = x.dense() if isinstance(x, transformer.Embedded) else x
        cfg, dense = self.cfg, dict(dtype=self.dtype, param_dtype=self.dtype)
        norm = transformer.pre_norm(cfg, self.dtype)
        h = norm("ln_attn")(x)
        heads = (cfg.n_heads, cfg.d_head)
        q_in = h[:, -1:] if self.last_only else h
        q = nn.DenseGeneral(heads, use_bias=False, name="query", **dense)(q_in)  # [B, Tq, H, Dh]
        k = nn.DenseGeneral(heads, use_bias=False, name="key", **dense)(h)  # [B, T, H, Dh]
        v = nn.DenseGeneral(heads, use_bias=False, name="value", **dense)(h)
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(cfg.d_head)
        t_q, t_k = q.shape[1], k.shape[1]
        causal = jnp.arange(t_k)[None, :] <= (jnp.arange(t_q) + t_k - t_q)[:, None]
        scores = jnp.where(causal, scores, jnp.finfo(scores.dtype).min)
        attn = jax.nn.softmax(scores, axis=-1)
        z = jnp.einsum("bhqk,bkhd->bqhd", attn, v)
        out = nn.DenseGeneral(cfg.d_model, axis=(-2, -1), use_bias=False, name="out", **dense)(z)
        x = (x[:, -1:] if self.last_only else x) + out
        h = norm("ln_mlp")(x)
        h = nn.Dense(cfg.d_mlp, use_bias=cfg.bias, name="mlp_in", **dense)(h)
        h = activation(cfg.act)(h)
        return x + nn.Dense(cfg.d_model, use_bias=cfg.bias, name="mlp_out", **dense)(h)


def textbook_dense(features: int, use_bias: bool, dtype: jnp.dtype, name: str) -> nn.Dense:
    return nn.Dense(features, use_bias=use_bias, dtype=dtype, param_dtype=dtype, name=name)


@contextlib.contextmanager
def textbook_transformer() -> Iterator[None]:
    """Within the block, ``Transformer`` builds (and so traces) the textbook block and unembedding, and the
    losses take their accuracy with ``jnp.argmax``."""
    saved = transformer.Block, transformer.Dense, losses.first_argmax
    transformer.Block, transformer.Dense = TextbookBlock, textbook_dense
    losses.first_argmax = lambda logits: jnp.argmax(logits, axis=-1)
    try:
        yield
    finally:
        transformer.Block, transformer.Dense, losses.first_argmax = saved


@contextlib.contextmanager
def without_embedding_lookups() -> Iterator[None]:
    """Within the block, the first block's queries, keys and values are products over every token row
    (``x @ W``), as grokjax computed them before they became lookups in projected embedding tables."""
    saved = transformer.Embedded.project
    transformer.Embedded.project = lambda self, w, last_only=False: matmul(self.dense(last_only), w)
    try:
        yield
    finally:
        transformer.Embedded.project = saved

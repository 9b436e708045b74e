"""A decoder-only transformer for ONE model; the sweep vmaps it over the model axis.

Input: tokens [B, T] (T = 3 for ``a b =``). Output: logits [B, n_symbols] at the last position, which
predicts the answer. Learned positions, causal attention, optional LayerNorm (pre-norm), ReLU/GELU MLP,
untied unembedding. ``act`` is relu, gelu or quadratic (x^2); ``bias`` switches the MLP's biases.

Exact compute savings (``answer_only=True``): only the last position's output is used, so the last block
needs attention queries, the MLP and the unembedding at that position only; keys and values still come
from every position. For a 1-layer model that is the whole MLP at 1 position instead of 3. The logits are
the same as the full computation (tests check it).
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from grokjax.models.layers import activation
from grokjax.spec.structure import ModelConfig


def _embed_init(d_model: int) -> nn.initializers.Initializer:
    return nn.initializers.normal(stddev=1.0 / math.sqrt(d_model))


class Block(nn.Module):
    """Pre-norm attention + MLP block. With ``last_only`` it returns the last position only: [B, 1, D]."""

    cfg: ModelConfig
    last_only: bool
    dtype: jnp.dtype

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:  # x: [B, T, D]
        cfg = self.cfg
        dense = dict(dtype=self.dtype, param_dtype=self.dtype)
        norm = (lambda name: nn.LayerNorm(name=name, **dense)) if cfg.layer_norm else (lambda name: (lambda h: h))
        h = norm("ln_attn")(x)
        heads = (cfg.n_heads, cfg.d_head)
        q_in = h[:, -1:] if self.last_only else h
        q = nn.DenseGeneral(heads, use_bias=False, name="query", **dense)(q_in)  # [B, Tq, H, Dh]
        k = nn.DenseGeneral(heads, use_bias=False, name="key", **dense)(h)  # [B, T, H, Dh]
        v = nn.DenseGeneral(heads, use_bias=False, name="value", **dense)(h)
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(cfg.d_head)
        t_q, t_k = q.shape[1], k.shape[1]
        # Query i sits at absolute position t_k - t_q + i and may attend to keys at positions <= its own.
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


class Transformer(nn.Module):
    """tokens [B, T] int -> logits [B, n_symbols] at the last position."""

    cfg: ModelConfig
    vocab_size: int
    n_symbols: int
    seq_len: int = 3
    answer_only: bool = True
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, tokens: jax.Array) -> jax.Array:
        cfg = self.cfg
        dense = dict(dtype=self.dtype, param_dtype=self.dtype)
        x = nn.Embed(self.vocab_size, cfg.d_model, embedding_init=_embed_init(cfg.d_model), name="embed",
                     **dense)(tokens)
        pos = self.param("pos_embed", _embed_init(cfg.d_model), (self.seq_len, cfg.d_model), self.dtype)
        x = x + pos[None, : tokens.shape[1]]
        for i in range(cfg.n_layers):
            last = self.answer_only and i == cfg.n_layers - 1
            x = Block(cfg, last_only=last, dtype=self.dtype, name=f"block_{i}")(x)
        x = x[:, -1]
        if cfg.layer_norm:
            x = nn.LayerNorm(name="ln_final", **dense)(x)
        return nn.Dense(self.n_symbols, use_bias=False, name="unembed", **dense)(x)

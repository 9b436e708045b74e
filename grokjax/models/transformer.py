"""A decoder-only transformer for ONE model; the sweep vmaps it over the model axis.

Input: tokens [B, T] (T = 3 for ``a b =``). Output: logits [B, n_symbols] at the last position, which
predicts the answer. Learned positions, causal attention, optional LayerNorm (pre-norm), ReLU/GELU MLP,
untied unembedding. ``act`` is relu, gelu or quadratic (x^2); ``bias`` switches the MLP's biases.

Exact compute savings (``answer_only=True``): only the last position's output is used, so the last block
needs attention queries, the MLP and the unembedding at that position only; keys and values still come
from every position. For a 1-layer model that is the whole MLP at 1 position instead of 3. The logits are
the same as the full computation (tests check it).

Without LayerNorm the first block's queries, keys and values are linear maps of embed[token] + pos[t], so
they are looked up in the projected tables (embed @ W)[token] + (pos @ W)[t] (``Embedded``): products over
the vocabulary (47 rows in the default sweep) instead of over every token of the batch (3,315 rows), in
the forward and the backward pass. Same maths: 77 instead of 124 MFLOP per default-sweep model-step
(benchmarks/PROFILE.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from grokjax.config.structure import ModelConfig
from grokjax.models.layers import Dense, Kernel, activation, matmul


def _embed_init(d_model: int) -> nn.initializers.Initializer:
    return nn.initializers.normal(stddev=1.0 / math.sqrt(d_model))


def pre_norm(layer_norm: bool, dtype: jnp.dtype) -> Callable[[str], Callable[[jax.Array], jax.Array]]:
    """name -> the block's pre-norm: a LayerNorm of that name, or the identity without ``layer_norm``."""
    if layer_norm:
        return lambda name: nn.LayerNorm(name=name, dtype=dtype, param_dtype=dtype)
    return lambda name: (lambda h: h)


@dataclass(frozen=True)
class Embedded:
    """The first block's input kept factored: x[b, t] = table[tokens[b, t]] + pos[t].

    A linear map of x is then a lookup in the mapped tables, (table @ W)[tokens] + (pos @ W)[t]: a
    [V, D] x [D, F] product (V = vocabulary, a few dozen) instead of a [B*T, D] x [D, F] one over every
    sample (B*T = 3,315 rows in the default sweep), and likewise in the backward pass, where the rows'
    gradients are summed per token by the lookup's scatter-add. The first block uses it for its queries,
    keys and values when nothing (no LayerNorm) stands between the embeddings and those projections."""

    table: jax.Array  # [V, D]
    pos: jax.Array  # [T, D]
    tokens: jax.Array  # [B, T] int

    def dense(self, last_only: bool = False) -> jax.Array:
        """x itself: [B, T, D], or [B, 1, D] at the last position."""
        tokens, pos = (self.tokens[:, -1:], self.pos[-1:]) if last_only else (self.tokens, self.pos)
        return jnp.take(self.table, tokens, axis=0) + pos[None]

    def project(self, w: jax.Array, last_only: bool = False) -> jax.Array:
        """x @ w for w [D, F]: [B, T, F], or [B, 1, F] at the last position."""
        return Embedded(self.table @ w, self.pos @ w, self.tokens).dense(last_only)


class Block(nn.Module):
    """Pre-norm attention + MLP block. With ``last_only`` it returns the last position only: [B, 1, D].

    The input is [B, T, D] or, for the first block, ``Embedded`` (whose projections are table lookups
    when there is no LayerNorm). Attention over the few positions (T = 3) is written as broadcast products and sums rather than
    per-(sample, head) einsums: XLA's CPU backend runs those as thousands of tiny [1, d_head] x [d_head,
    T] dots with transposes around them, while products and sums fuse into one loop. Same maths, same
    parameters (``nn.DenseGeneral``'s names, shapes and initial values)."""

    cfg: ModelConfig
    last_only: bool
    dtype: jnp.dtype

    @nn.compact
    def __call__(self, x: jax.Array | Embedded) -> jax.Array:  # x: [B, T, D]
        cfg = self.cfg
        norm = pre_norm(cfg.layer_norm, self.dtype)
        if isinstance(x, Embedded) and not cfg.layer_norm:
            project, x = x.project, x.dense(self.last_only)  # x: the residual stream's positions only
        else:
            x = x.dense() if isinstance(x, Embedded) else x
            h = norm("ln_attn")(x)
            project = lambda w, last_only=False: matmul(h[:, -1:] if last_only else h, w)  # noqa: E731
        n_b = x.shape[0]
        n_h, d_h, d = cfg.n_heads, cfg.d_head, cfg.d_model
        heads = lambda name: Kernel((d, n_h, d_h), 1, self.dtype, name=name)()  # noqa: E731 [D, H*Dh]
        q = project(heads("query"), self.last_only).reshape(n_b, -1, n_h, d_h)  # [B, Tq, H, Dh]
        k = project(heads("key")).reshape(n_b, -1, n_h, d_h)  # [B, T, H, Dh]
        v = project(heads("value")).reshape(n_b, -1, n_h, d_h)
        t_k = k.shape[1]
        scores = (q[:, :, None] * k[:, None]).sum(-1) / math.sqrt(d_h)  # [B, Tq, T, H]
        t_q = q.shape[1]
        # Query i sits at absolute position t_k - t_q + i and may attend to keys at positions <= its own.
        causal = jnp.arange(t_k)[None, :] <= (jnp.arange(t_q) + t_k - t_q)[:, None]
        scores = jnp.where(causal[:, :, None], scores, jnp.finfo(scores.dtype).min)
        attn = jax.nn.softmax(scores, axis=2)
        z = (attn[..., None] * v[:, None]).sum(2)  # [B, Tq, H, Dh]
        out = matmul(z.reshape(n_b, t_q, n_h * d_h), Kernel((n_h, d_h, d), 2, self.dtype, name="out")())
        x = (x[:, -1:] if self.last_only else x) + out
        h = norm("ln_mlp")(x)
        h = Dense(cfg.d_mlp, cfg.bias, self.dtype, name="mlp_in")(h)
        h = activation(cfg.act)(h)
        return x + Dense(cfg.d_model, cfg.bias, self.dtype, name="mlp_out")(h)


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
        table = nn.Embed(self.vocab_size, cfg.d_model, embedding_init=_embed_init(cfg.d_model), name="embed",
                         **dense).embedding
        pos = self.param("pos_embed", _embed_init(cfg.d_model), (self.seq_len, cfg.d_model), self.dtype)
        x: jax.Array | Embedded = Embedded(table, pos[: tokens.shape[1]], tokens)
        for i in range(cfg.n_layers):
            last = self.answer_only and i == cfg.n_layers - 1
            x = Block(cfg, last_only=last, dtype=self.dtype, name=f"block_{i}")(x)
        x = x[:, -1]
        if cfg.layer_norm:
            x = nn.LayerNorm(name="ln_final", **dense)(x)
        return Dense(self.n_symbols, False, self.dtype, name="unembed")(x)

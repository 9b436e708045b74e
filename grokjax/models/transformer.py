"""A decoder-only transformer for ONE model; the sweep vmaps it over the model axis.

Input: tokens [B, T] (T = 3 for ``a b =``, 4 for ``a op b =``). Output: logits [B, n_classes] at the last
position, which predicts the answer. Causal attention, an MLP, untied unembedding without bias.

The options the papers' code differs in (``ModelConfig``):
- ``block``: ``prenorm`` x + attn(N(x)), x + mlp(N(x)) with N a LayerNorm if ``layer_norm`` (then also before
  the unembedding), else the identity; ``postnorm`` (openai/grok) LN(x + attn(x)), LN(x + mlp(x)), no final
  LN; ``ln_residual`` (Grokfast's main.py, a copy of teddykoker/grokking) x = LN(x), x + attn(x),
  x + mlp(LN(x)): the residual stream itself is normalised, with a final LN.
- ``init``: ``lecun`` (flax's defaults: lecun-normal kernels, zero MLP biases, no attention biases,
  embeddings N(0, 1/d_model), LayerNorm eps 1e-6) or ``torch`` (PyTorch's: nn.Linear U(±1/sqrt(fan_in)) for
  weights and biases, nn.MultiheadAttention's in-projection xavier-uniform over the stacked [3d, d] matrix
  with zero biases and its out-projection U(±1/sqrt(d)) with a zero bias (the attention biases only with
  ``bias``, as openai/grok's bias-free heads), nn.Embedding N(0, 1), LayerNorm eps 1e-5). The per-model
  ``embed_std`` rescales the embeddings afterwards (``engine.single``).
- ``pos``: learned position embeddings, or the fixed sinusoids of Vaswani et al. 2017.
- ``act``: relu, gelu (exact), gelu_tanh or quadratic (x^2); ``bias`` switches the MLP's biases.

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
import numpy as np

from grokjax.config.structure import ModelConfig
from grokjax.models.layers import Dense, Kernel, activation, matmul, torch_linear_init, uniform_init


def embed_std(cfg: ModelConfig) -> float:
    """The std of the embeddings' normal init: nn.Embedding's 1 under init=torch, else 1/sqrt(d_model)."""
    return 1.0 if cfg.init == "torch" else 1.0 / math.sqrt(cfg.d_model)


def sinusoids(seq_len: int, d_model: int) -> np.ndarray:
    """Vaswani et al. 2017's positions [T, D]: sin(t / 10000^(2i/D)) at 2i, cos at 2i + 1."""
    t = np.arange(seq_len)[:, None]
    i = np.arange(d_model)[None, :]
    angle = t / np.power(10000.0, (2 * (i // 2)) / d_model)
    return np.where(i % 2 == 0, np.sin(angle), np.cos(angle))


def norm_of(cfg: ModelConfig, dtype: jnp.dtype) -> Callable[[str], Callable[[jax.Array], jax.Array]]:
    """name -> a LayerNorm of that name (eps 1e-5 under init=torch as torch's, flax's 1e-6 otherwise)."""
    eps = 1e-5 if cfg.init == "torch" else 1e-6
    return lambda name: nn.LayerNorm(epsilon=eps, name=name, dtype=dtype, param_dtype=dtype)


def pre_norm(cfg: ModelConfig, dtype: jnp.dtype) -> Callable[[str], Callable[[jax.Array], jax.Array]]:
    """name -> the prenorm block's norm: a LayerNorm of that name, or the identity without ``layer_norm``."""
    if cfg.layer_norm:
        return norm_of(cfg, dtype)
    return lambda name: (lambda h: h)


def has_final_norm(cfg: ModelConfig) -> bool:
    return cfg.block == "ln_residual" or (cfg.block == "prenorm" and cfg.layer_norm)


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
    """An attention + MLP block (``block``: prenorm, postnorm or ln_residual, see the module docstring).
    With ``last_only`` it returns the last position only: [B, 1, D].

    The input is [B, T, D] or, for the first block, ``Embedded`` (whose projections are table lookups when
    nothing normalises the embeddings first). Attention over the few positions (T = 3 or 4) is written as
    broadcast products and sums rather than per-(sample, head) einsums: XLA's CPU backend runs those as
    thousands of tiny [1, d_head] x [d_head, T] dots with transposes around them, while products and sums
    fuse into one loop. Same maths, same parameters (``nn.DenseGeneral``'s names, shapes and initial
    values)."""

    cfg: ModelConfig
    last_only: bool
    dtype: jnp.dtype

    @nn.compact
    def __call__(self, x: jax.Array | Embedded) -> jax.Array:  # x: [B, T, D]
        cfg = self.cfg
        torch = cfg.init == "torch"
        biased = torch and cfg.bias  # nn.MultiheadAttention's biases (openai/grok's heads have none)
        norm = norm_of(cfg, self.dtype)
        pre = pre_norm(cfg, self.dtype) if cfg.block == "prenorm" else (lambda name: (lambda h: h))
        raw_input = cfg.block == "postnorm" or (cfg.block == "prenorm" and not cfg.layer_norm)
        if isinstance(x, Embedded) and raw_input:
            project, x = x.project, x.dense(self.last_only)  # x: the residual stream's positions only
        else:
            x = x.dense() if isinstance(x, Embedded) else x
            if cfg.block == "ln_residual":
                x = norm("ln_attn")(x)  # the residual stream itself is normalised
            h = pre("ln_attn")(x)
            project = lambda w, last_only=False: matmul(h[:, -1:] if last_only else h, w)  # noqa: E731
        n_b = x.shape[0]
        n_h, d_h, d = cfg.n_heads, cfg.d_head, cfg.d_model
        # torch: nn.MultiheadAttention's in-projection, xavier-uniform over the stacked [3d, d] weight
        in_init = uniform_init(math.sqrt(6 / (4 * d))) if torch else None

        def heads(name: str, last_only: bool = False) -> jax.Array:  # [B, T, H, Dh]
            made = Kernel((d, n_h, d_h), 1, self.dtype, init=in_init, with_bias=biased, name=name)()
            y = project(made[0], last_only) + made[1] if biased else project(made, last_only)
            return y.reshape(n_b, -1, n_h, d_h)

        q, k, v = heads("query", self.last_only), heads("key"), heads("value")
        t_k = k.shape[1]
        scores = (q[:, :, None] * k[:, None]).sum(-1) / math.sqrt(d_h)  # [B, Tq, T, H]
        t_q = q.shape[1]
        # Query i sits at absolute position t_k - t_q + i and may attend to keys at positions <= its own.
        causal = jnp.arange(t_k)[None, :] <= (jnp.arange(t_q) + t_k - t_q)[:, None]
        scores = jnp.where(causal[:, :, None], scores, jnp.finfo(scores.dtype).min)
        attn = jax.nn.softmax(scores, axis=2)
        z = (attn[..., None] * v[:, None]).sum(2).reshape(n_b, t_q, n_h * d_h)  # [B, Tq, H*Dh]
        if biased:  # out-projection: nn.Linear's U(+-1/sqrt(d)) weight, a zero bias (MultiheadAttention's reset)
            w_out, b_out = Kernel((n_h, d_h, d), 2, self.dtype, init=torch_linear_init(d), with_bias=True,
                                  name="out")()
            out = matmul(z, w_out) + b_out
        elif torch:
            out = matmul(z, Kernel((n_h, d_h, d), 2, self.dtype, init=torch_linear_init(d), name="out")())
        else:
            out = matmul(z, Kernel((n_h, d_h, d), 2, self.dtype, name="out")())
        x = (x[:, -1:] if self.last_only else x) + out
        if cfg.block == "postnorm":
            x = norm("ln_attn")(x)
        h = norm("ln_mlp")(x) if cfg.block == "ln_residual" else pre("ln_mlp")(x)
        dense = dict(kernel_init=torch_linear_init, bias_like_kernel=True) if torch else {}
        h = Dense(cfg.d_mlp, cfg.bias, self.dtype, name="mlp_in", **dense)(h)
        h = activation(cfg.act)(h)
        x = x + Dense(cfg.d_model, cfg.bias, self.dtype, name="mlp_out", **dense)(h)
        return norm("ln_mlp")(x) if cfg.block == "postnorm" else x


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
        init = nn.initializers.normal(stddev=embed_std(cfg))
        table = nn.Embed(self.vocab_size, cfg.d_model, embedding_init=init, name="embed", **dense).embedding
        if cfg.pos == "learned":
            pos = self.param("pos_embed", init, (self.seq_len, cfg.d_model), self.dtype)
        else:
            pos = jnp.asarray(sinusoids(self.seq_len, cfg.d_model), self.dtype)
        x: jax.Array | Embedded = Embedded(table, pos[: tokens.shape[1]], tokens)
        for i in range(cfg.n_layers):
            last = self.answer_only and i == cfg.n_layers - 1
            x = Block(cfg, last_only=last, dtype=self.dtype, name=f"block_{i}")(x)
        x = x[:, -1]
        if has_final_norm(cfg):
            x = norm_of(cfg, self.dtype)("ln_final")(x)
        unembed = dict(kernel_init=torch_linear_init) if cfg.init == "torch" else {}
        return Dense(self.n_symbols, False, self.dtype, name="unembed", **unembed)(x)

"""The "2-hot" MLP of Liu et al. 2022 / Omnigrok, Gromov 2023 and Prieto et al. 2025, for ONE model.

Input: tokens [B, T], ``a b =`` (T = 3) or ``a op b =`` (T = 4): the MLP reads a (column 0) and b (column
T - 2); the ``op`` and ``=`` tokens are ignored, and with 4 tokens it predicts over the same p + 2 classes
as the transformer. ``mlp_input="onehot"``: the concatenated
one-hot codes of a and b (2 * n_symbols features), so the first layer is W[a] + W[n_symbols + b], a
gather of two rows rather than a matmul with one-hot vectors. ``mlp_input="embed"``: learned embeddings
of size d_model for a and b, concatenated (2 * d_model features) into the first layer. Then ``n_layers``
hidden layers of width ``d_mlp`` with the activation, and a linear readout to n_symbols logits.

Initialisation follows the papers' PyTorch code: nn.Linear's default, weights and biases uniform in
±1/sqrt(fan_in); nn.Embedding's default, N(0, 1). ``init_scale`` multiplies all of it afterwards (in
``engine.single``), as for the transformer.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from grokjax.config.structure import ModelConfig
from grokjax.models.layers import Dense, activation, torch_linear_init


def torch_dense(features: int, use_bias: bool, dtype: jnp.dtype, name: str) -> Dense:
    """x @ W + b with nn.Linear's initialisation (weights and bias U(±1/sqrt(fan_in))). kernel [fan_in,
    features]."""
    return Dense(features, use_bias, dtype, kernel_init=torch_linear_init, bias_like_kernel=True, name=name)


class MLP(nn.Module):
    """tokens [B, T] int (T = 3 or 4), or features [B, 64] float (digits) -> logits [B, n_symbols]
    (n_symbols: the table's output classes)."""

    cfg: ModelConfig
    vocab_size: int
    n_symbols: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, tokens: jax.Array) -> jax.Array:
        cfg, n = self.cfg, self.n_symbols
        if jnp.issubdtype(tokens.dtype, jnp.floating):  # real-valued features (dataset=digits): a dense layer
            h = torch_dense(cfg.d_mlp, cfg.bias, self.dtype, name="in")(tokens.astype(self.dtype))
            h = activation(cfg.act)(h)
            for i in range(1, cfg.n_layers):
                h = activation(cfg.act)(torch_dense(cfg.d_mlp, cfg.bias, self.dtype, name=f"hidden_{i}")(h))
            return torch_dense(n, cfg.bias, self.dtype, name="readout")(h)
        a, b = tokens[:, 0], tokens[:, -2]  # a b = or a op b =
        if cfg.mlp_input == "onehot":
            fan_in = 2 * n
            w = self.param("in_kernel", torch_linear_init(fan_in), (fan_in, cfg.d_mlp), self.dtype)
            h = w[a] + w[n + b]  # == concat(onehot(a), onehot(b)) @ w, as a gather
            if cfg.bias:
                h = h + self.param("in_bias", torch_linear_init(fan_in), (cfg.d_mlp,), self.dtype)
        else:
            emb = self.param("embed", nn.initializers.normal(stddev=1.0), (n, cfg.d_model), self.dtype)
            h = torch_dense(cfg.d_mlp, cfg.bias, self.dtype, name="in")(jnp.concatenate([emb[a], emb[b]], -1))
        h = activation(cfg.act)(h)
        for i in range(1, cfg.n_layers):
            h = activation(cfg.act)(torch_dense(cfg.d_mlp, cfg.bias, self.dtype, name=f"hidden_{i}")(h))
        return torch_dense(n, cfg.bias, self.dtype, name="readout")(h)

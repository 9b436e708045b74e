"""Grokfast gradient filters (Lee et al. 2024, "Grokfast: accelerated grokking by amplifying slow
gradients"), as optax transformations applied to the raw gradient before the optimizer.

Both return ĝ = g + λ·filter(g), as ironjr/grokfast ``grokfast.py`` does:

- EMA (``gradfilter_ema``): μ ← α μ + (1 − α) g, with μ starting at the first gradient (so μ₁ = g₁), and
  ĝ = g + λ μ from the first step on.
- MA (``gradfilter_ma`` with its defaults, ``warmup=True``, ``filter_type="mean"``): the last w gradients are
  held; once w are held (from the w-th step on) ĝ = g + λ · mean of them, the current one included; before
  that ĝ = g.

α and λ are per-model hyperparameters (``optax.inject_hyperparams`` keeps them in the state); w is static,
because the MA state holds w gradients per parameter (memory: w × the model's parameters).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax


class EmaState(NamedTuple):
    count: jax.Array  # int32, gradients seen
    mu: Any  # the filtered gradient, like params


class MaState(NamedTuple):
    count: jax.Array  # int32, gradients seen
    window: Any  # like params with a leading [w] axis: a ring buffer of the last w gradients


def grokfast_ema(alpha: Any, lamb: Any) -> optax.GradientTransformation:
    def init(params: Any) -> EmaState:
        return EmaState(jnp.zeros((), jnp.int32), jax.tree.map(jnp.zeros_like, params))

    def update(updates: Any, state: EmaState, params: Any = None) -> tuple[Any, EmaState]:
        del params
        first = state.count == 0
        mu = jax.tree.map(lambda m, g: jnp.where(first, g, m * alpha + g * (1 - alpha)).astype(g.dtype),
                          state.mu, updates)
        out = jax.tree.map(lambda g, m: (g + m * lamb).astype(g.dtype), updates, mu)
        return out, EmaState(state.count + 1, mu)

    return optax.GradientTransformation(init, update)


def grokfast_ma(lamb: Any, window: int) -> optax.GradientTransformation:
    def init(params: Any) -> MaState:
        return MaState(jnp.zeros((), jnp.int32), jax.tree.map(lambda p: jnp.zeros((window, *p.shape), p.dtype), params))

    def update(updates: Any, state: MaState, params: Any = None) -> tuple[Any, MaState]:
        del params
        slot = state.count % window
        buf = jax.tree.map(lambda b, g: b.at[slot].set(g), state.window, updates)
        full = state.count + 1 >= window
        out = jax.tree.map(lambda g, b: jnp.where(full, g + jnp.mean(b, axis=0) * lamb, g).astype(g.dtype),
                           updates, buf)
        return out, MaState(state.count + 1, buf)

    return optax.GradientTransformation(init, update)

"""⊥Grad (Prieto et al. 2025, "Grokking at the edge of numerical stability"), as an optax transformation.

Per parameter tensor w with gradient g: g⊥ = g - (w·g)/(w·w) w, rescaled to the norm of g, so the step
cannot grow w along itself (the "naive loss minimisation" direction that leads to softmax collapse). The
1e-30 guards follow the reference implementation (OrthoGrad in the paper's code).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

_TINY = 1e-30


def orthogonalize(w: jax.Array, g: jax.Array) -> jax.Array:
    """g with its component along w removed, rescaled to ||g||. Any shape; treated as flat vectors."""
    w_flat, g_flat = w.reshape(-1), g.reshape(-1)
    proj = jnp.dot(w_flat, g_flat) / (jnp.dot(w_flat, w_flat) + _TINY)
    g_orth = g_flat - proj * w_flat
    scale = jnp.linalg.norm(g_flat) / (jnp.linalg.norm(g_orth) + _TINY)
    return (g_orth * scale).reshape(g.shape).astype(g.dtype)


def orthograd() -> optax.GradientTransformation:
    """Stateless: needs the parameters in ``update``."""

    def init(params: Any) -> optax.EmptyState:
        del params
        return optax.EmptyState()

    def update(updates: Any, state: optax.EmptyState, params: Any = None) -> tuple[Any, optax.EmptyState]:
        if params is None:
            raise ValueError("orthograd needs the parameters: call update(grads, state, params)")
        return jax.tree.map(orthogonalize, params, updates), state

    return optax.GradientTransformation(init, update)

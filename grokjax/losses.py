"""Classification losses on the answer token, for one model; pick one by name in ``LOSSES``.

Each takes logits [B, C], labels [B] int and weights [B] (0 for padding) and returns the weighted mean
loss and accuracy (the argmax, whatever the loss). float32 logits are reduced in float32, float64 stays
float64.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from grokjax.config import choices
from grokjax.config.choices import check_registry


def log_softmax(logits: jax.Array) -> jax.Array:
    return jax.nn.log_softmax(logits, axis=-1)


def log_stablemax(logits: jax.Array) -> jax.Array:
    """log StableMax (Prieto et al. 2025): s(x) = x + 1 for x >= 0, 1/(1 - x) for x < 0, and
    log p_i = log s(x_i) - log sum_j s(x_j). log s is taken as log1p(x) or -log1p(-x), each on its own side
    only, so neither branch sees an argument where it is undefined (no NaN in the gradient)."""
    pos = logits >= 0
    log_s = jnp.where(pos, jnp.log1p(jnp.where(pos, logits, 0.0)), -jnp.log1p(-jnp.where(pos, 0.0, logits)))
    s = jnp.exp(log_s)
    return log_s - jnp.log(jnp.sum(s, axis=-1, keepdims=True))


def first_argmax(logits: jax.Array) -> jax.Array:
    """``jnp.argmax`` over the last axis (the first index of the largest value), as two plain reductions:
    XLA's CPU backend runs argmax's joint (value, index) reduction as a scalar loop, 3% of a default-sweep
    step. Only a row holding NaN differs (C here, never a label; argmax gives the NaN's index)."""
    largest = logits.max(axis=-1, keepdims=True)
    n = logits.shape[-1]
    return jnp.min(jnp.where(logits == largest, jnp.arange(n), n), axis=-1)


def _cross_entropy(log_probs: Callable[[jax.Array], jax.Array]) -> Callable:
    def loss(logits: jax.Array, labels: jax.Array, weights: jax.Array) -> tuple[jax.Array, jax.Array]:
        if logits.dtype != jnp.float64:
            logits = logits.astype(jnp.float32)
        logp = log_probs(logits)
        nll = -jnp.take_along_axis(logp, labels[:, None], axis=1)[:, 0]
        correct = (first_argmax(logits) == labels).astype(weights.dtype)
        total = jnp.maximum(weights.sum(), 1)
        return (nll * weights).sum() / total, (correct * weights).sum() / total

    return loss


def mse(logits: jax.Array, labels: jax.Array, weights: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Omnigrok's loss: torch's nn.MSELoss() between the outputs and one-hot targets, the mean over samples
    and classes of (z - onehot)^2 (weighted over samples)."""
    if logits.dtype != jnp.float64:
        logits = logits.astype(jnp.float32)
    target = jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
    per_sample = jnp.mean(jnp.square(logits - target), axis=-1)
    correct = (first_argmax(logits) == labels).astype(weights.dtype)
    total = jnp.maximum(weights.sum(), 1)
    return (per_sample * weights).sum() / total, (correct * weights).sum() / total


def per_sample_losses(name: str, logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Each sample's loss [B] in the logits' own precision (no cast): for the collapse measures."""
    if name == "mse":
        return jnp.mean(jnp.square(logits - jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)), -1)
    logp = (log_stablemax if name == "stablemax" else log_softmax)(logits)
    return -jnp.take_along_axis(logp, labels[:, None], axis=1)[:, 0]


def collapse_fractions(name: str, logits: jax.Array, labels: jax.Array, weights: jax.Array
                       ) -> dict[str, jax.Array]:
    """Prieto et al. 2025's two diagnostics of softmax collapse, in the logits' precision: the weighted
    fraction of samples whose loss is exactly 0, and (softmax only; NaN otherwise) whose softmax
    denominator sum_k exp(z_k - max z) is exactly 1, every other class's term having rounded away."""
    total = jnp.maximum(weights.sum(), 1)
    zero = ((per_sample_losses(name, logits, labels) == 0) * weights).sum() / total
    if name != "softmax":
        return {"collapse_zero_loss": zero, "collapse_denominator_one": jnp.full((), jnp.nan, zero.dtype)}
    denominator = jnp.exp(logits - logits.max(-1, keepdims=True)).sum(-1)
    return {"collapse_zero_loss": zero, "collapse_denominator_one": ((denominator == 1) * weights).sum() / total}


LOSSES: dict[str, Callable[[jax.Array, jax.Array, jax.Array], tuple[jax.Array, jax.Array]]] = {
    "softmax": _cross_entropy(log_softmax),
    "stablemax": _cross_entropy(log_stablemax),
    "mse": mse,
}
check_registry("loss", LOSSES, choices.LOSSES)
cross_entropy = LOSSES["softmax"]

"""Build one model's optimizer from the group's static settings and its per-model numbers.

The chain, in order: the Grokfast filter on the raw gradient (``grokfast``), ⊥Grad (``orthograd``), the
optimizer (``optimizer``; coupled L2 is added inside it, as torch does), and the linear warmup, which
scales the whole update as PyTorch's LambdaLR scales lr. Per-model numbers (lr, wd, momentum,
grokfast_alpha, grokfast_lamb) live in the optimizer state; ``update`` reads them from there, so it can be
built with none given.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from grokjax.config.structure import OPTIMIZER_HPARAMS, TrainConfig
from grokjax.optim.orthograd import orthograd
from grokjax.optim.registry import GRADIENT_FILTERS, OPTIMIZERS


def make_optimizer(t: TrainConfig, hp: dict[str, Any] | None = None) -> optax.GradientTransformation:
    """hp: per-model numbers by name (scalars for one model); missing ones are 0 (enough for ``update``)."""
    hp = {name: 0.0 for name in OPTIMIZER_HPARAMS} | (hp or {})
    parts: list[optax.GradientTransformation] = []
    grad_filter = GRADIENT_FILTERS[t.grokfast](t, hp)
    if grad_filter is not None:
        parts.append(grad_filter)
    if t.orthograd:
        parts.append(orthograd())
    mask = (lambda params: jax.tree.map(lambda x: x.ndim >= 2, params)) if t.decay_mask == "matrices" else None
    parts.append(optax.inject_hyperparams(OPTIMIZERS[t.optimizer], static_args=("mask",))(
        learning_rate=hp["lr"], weight_decay=hp["wd"], momentum=hp["momentum"], b1=t.beta1, b2=t.beta2, eps=t.eps,
        mask=mask))
    if t.warmup_steps:
        warmup = float(t.warmup_steps)
        first = 0 if t.warmup_from_zero else 1  # torch's LambdaLR starts at update 0: factor 0
        parts.append(optax.scale_by_schedule(lambda count: jnp.minimum(1.0, (count + first) / warmup)))
    return parts[0] if len(parts) == 1 else optax.chain(*parts)


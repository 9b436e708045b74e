"""Optimizers and gradient filters by name: add one with one line here.

Optimizers follow PyTorch's semantics, the ones the papers' code uses:

- ``adamw``: decoupled decay, p <- p - lr*wd*p besides the Adam step (torch.optim.AdamW; optax.adamw).
- ``adam``: coupled L2 as torch.optim.Adam's ``weight_decay``: g <- g + wd*p before the Adam moments
  (Grokfast's baseline).
- ``sgd``: coupled L2 as torch.optim.SGD's ``weight_decay``, then heavy-ball momentum without dampening
  (buf <- momentum*buf + g, starting from buf = g), p <- p - lr*buf.

Each takes every per-model number as a keyword (what it does not use it ignores), so that
``optax.inject_hyperparams`` keeps lr, wd and momentum in the optimizer state, per model.
"""

from __future__ import annotations

from typing import Any, Callable

import optax

from grokjax.config import choices
from grokjax.config.choices import check_registry
from grokjax.config.structure import TrainConfig
from grokjax.optim.grokfast import grokfast_ema, grokfast_ma


def adamw(learning_rate: Any, weight_decay: Any, momentum: Any, b1: Any, b2: Any, eps: Any,
          mask: Any = None) -> optax.GradientTransformation:
    del momentum
    return optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=mask)


def adam_l2(learning_rate: Any, weight_decay: Any, momentum: Any, b1: Any, b2: Any, eps: Any,
            mask: Any = None) -> optax.GradientTransformation:
    del momentum
    return optax.chain(optax.add_decayed_weights(weight_decay, mask), optax.scale_by_adam(b1=b1, b2=b2, eps=eps),
                       optax.scale_by_learning_rate(learning_rate))


def sgd_l2(learning_rate: Any, weight_decay: Any, momentum: Any, b1: Any, b2: Any, eps: Any,
           mask: Any = None) -> optax.GradientTransformation:
    del b1, b2, eps
    return optax.chain(optax.add_decayed_weights(weight_decay, mask), optax.trace(decay=momentum),
                       optax.scale_by_learning_rate(learning_rate))


OPTIMIZERS: dict[str, Callable[..., optax.GradientTransformation]] = {"adamw": adamw, "adam": adam_l2, "sgd": sgd_l2}
check_registry("optimizer", OPTIMIZERS, choices.OPTIMIZERS)

# name -> (static settings, per-model numbers) -> a filter applied to the raw gradient, or None.
GRADIENT_FILTERS: dict[str, Callable[[TrainConfig, dict[str, Any]], optax.GradientTransformation | None]] = {
    "none": lambda t, hp: None,
    "ema": lambda t, hp: optax.inject_hyperparams(grokfast_ema)(alpha=hp["grokfast_alpha"], lamb=hp["grokfast_lamb"]),
    "ma": lambda t, hp: optax.inject_hyperparams(grokfast_ma, static_args=("window",))(
        lamb=hp["grokfast_lamb"], window=t.grokfast_window),
}
check_registry("gradient filter", GRADIENT_FILTERS, choices.GRADIENT_FILTERS)

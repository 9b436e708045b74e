"""The one place that picks a model for a group: add a model with one line in ``MODELS``."""

from __future__ import annotations

from typing import Any

import flax.linen as nn

from grokjax.config.choices import ARCHS, MLP_INPUTS, check_registry
from grokjax.config.structure import ModelConfig
from grokjax.models.layers import ACTIVATIONS
from grokjax.models.mlp import MLP
from grokjax.models.transformer import Transformer

MODELS: dict[str, type[nn.Module]] = {"transformer": Transformer, "mlp": MLP}
check_registry("model", MODELS, ARCHS)

__all__ = ["ACTIVATIONS", "MLP_INPUTS", "MODELS", "make_model"]


def make_model(cfg: ModelConfig, vocab_size: int, n_classes: int, dtype: Any, seq_len: int = 3) -> nn.Module:
    """A flax module mapping tokens [B, seq_len] to logits [B, n_classes] for ONE model."""
    if cfg.arch == "transformer":
        return MODELS[cfg.arch](cfg, vocab_size, n_classes, seq_len=seq_len, dtype=dtype)
    return MODELS[cfg.arch](cfg, vocab_size, n_classes, dtype=dtype)

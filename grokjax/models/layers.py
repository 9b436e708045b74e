"""Pieces shared by the models: activations by name."""

from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": nn.relu,
    "gelu": nn.gelu,
    "quadratic": lambda x: x * x,  # Gromov 2023: x^2, with which the MLP's solution is analytic
}


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
    return ACTIVATIONS[name]

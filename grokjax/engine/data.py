"""Per-model data: hyperparameter arrays, each model's own train/validation split, padding of the model axis."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import numpy as np

from grokjax.config.structure import INTEGER_HPARAMS, PER_MODEL_FIELDS
from grokjax.grid.expand import Run, n_train_of

# Per-model numeric hyperparameters: the fields of config.structure.PerModel, plus n_train (round(frac *
# n_pairs), computed on the host); scalars for one model, [N] arrays for a batch. Whole numbers are int32.
Hparams = NamedTuple("Hparams", [(name, jax.Array) for name in (*PER_MODEL_FIELDS, "n_train")])
INTEGER_FIELDS = (*INTEGER_HPARAMS, "n_train")


class Split(NamedTuple):
    """A model's own train/validation split, padded to the group's static sizes."""

    train_idx: jax.Array  # [n_train_max] indices into the task table
    train_w: jax.Array  # [n_train_max] 1 for real train pairs, 0 for padding
    val_idx: jax.Array  # [n_val_max]
    val_w: jax.Array  # [n_val_max]


def hparams_for(runs: list[Run], n_pairs: int) -> Hparams:
    """Stack the per-model hyperparameters of some runs into host arrays of shape [N]: float64 (the
    program casts them to its dtype, so a float64 group sees the exact values typed), seeds int32."""
    frac = np.array([r.get("hp.frac") for r in runs], dtype=np.float64)
    n_train = np.array([n_train_of(f, n_pairs) for f in frac], dtype=np.int32)
    cols = {name: np.array([r.get(f"hp.{name}") for r in runs],
                           dtype=np.int32 if name in INTEGER_FIELDS else np.float64)
            for name in PER_MODEL_FIELDS}
    return Hparams(**cols, n_train=n_train)


def pad_models(tree: Any, n: int) -> Any:
    """Pad the leading model axis to n by repeating the last model (padding runs are discarded)."""

    def pad(x: np.ndarray) -> np.ndarray:
        extra = n - x.shape[0]
        return x if extra == 0 else np.concatenate([x, np.repeat(x[-1:], extra, axis=0)])

    return jax.tree.map(pad, tree)



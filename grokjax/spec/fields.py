"""The field registry: kind, domain and default of every key a user may set."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

from grokjax.losses import LOSSES
from grokjax.models.registry import ACTIVATIONS, MLP_INPUTS, MODELS
from grokjax.optim.registry import GRADIENT_FILTERS, OPTIMIZERS
from grokjax.spec.meanings import MEANINGS
from grokjax.spec.measures import MEASURE_NAMES
from grokjax.spec.structure import (
    HP_DEFAULTS,
    ModelConfig,
    Scalar,
    TaskConfig,
    TrainConfig,
)
from grokjax.tasks.tables import OPS


@dataclass(frozen=True)
class Field:
    path: str
    kind: str  # "int" | "float" | "bool" | "choice" | "batch" | "measures"
    default: Scalar
    check: Callable[[Any], str | None] | None = None  # returns what would be accepted, or None if fine
    choices: tuple[str, ...] = ()

    @property
    def short(self) -> str:
        return self.path.rsplit(".", 1)[-1]

    @property
    def per_model(self) -> bool:
        return self.path.startswith("hp.")

    @property
    def group(self) -> str:
        """Where a value lands: per model (a vmapped array) or structural (a compiled group)."""
        return "per-model" if self.per_model else "structural"

    @property
    def meaning(self) -> str:
        return MEANINGS[self.short]

    @property
    def accepted(self) -> str:
        """The values accepted, in words."""
        if self.kind == "measures":
            return "+".join(self.choices) + " (any subset) or none"
        if self.choices:
            return "|".join(self.choices)
        if self.kind == "bool":
            return "true|false"
        if self.kind == "batch":
            return "full|auto|N"
        return "number" if self.kind == "float" else "whole number"


def _at_least(lo: float) -> Callable[[Any], str | None]:
    return lambda v: None if v >= lo else f"a number >= {lo:g}"


def _positive(v: Any) -> str | None:
    return None if v > 0 else "a number > 0"


def _open_unit(v: Any) -> str | None:
    return None if 0 < v < 1 else "a fraction strictly between 0 and 1"


def _in_unit(v: Any) -> str | None:
    return None if 0 <= v < 1 else "a number in [0, 1)"


# Checks and choices of fields that are not plain whole numbers >= 1; the choices come from the registries,
# so a new model, optimizer, filter or loss needs no change here.
_SPECIAL: dict[str, tuple[str, Callable[[Any], str | None] | None, tuple[str, ...]]] = {
    "task.op": ("choice", None, OPS),
    "task.p": ("int", _at_least(3), ()),
    "model.arch": ("choice", None, tuple(MODELS)),
    "model.act": ("choice", None, tuple(ACTIVATIONS)),
    "model.mlp_input": ("choice", None, MLP_INPUTS),
    "model.layer_norm": ("bool", None, ()),
    "model.bias": ("bool", None, ()),
    "train.batch_size": ("batch", None, ()),
    "train.beta1": ("float", _in_unit, ()),
    "train.beta2": ("float", _in_unit, ()),
    "train.eps": ("float", _positive, ()),
    "train.warmup_steps": ("int", _at_least(0), ()),
    "train.models_per_batch": ("int", _at_least(0), ()),
    "train.decay_mask": ("choice", None, ("all", "matrices")),
    "train.optimizer": ("choice", None, tuple(OPTIMIZERS)),
    "train.orthograd": ("bool", None, ()),
    "train.grokfast": ("choice", None, tuple(GRADIENT_FILTERS)),
    "train.loss": ("choice", None, tuple(LOSSES)),
    "train.measures": ("measures", None, MEASURE_NAMES),
    "train.dtype": ("choice", None, ("float32", "float64")),
    "train.stop": ("choice", None, ("budget", "resolved")),
    "hp.wd": ("float", _at_least(0), ()),
    "hp.lr": ("float", _positive, ()),
    "hp.frac": ("float", _open_unit, ()),
    "hp.seed": ("int", _at_least(0), ()),
    "hp.init_scale": ("float", _positive, ()),
    "hp.momentum": ("float", _in_unit, ()),
    "hp.grokfast_alpha": ("float", _in_unit, ()),
    "hp.grokfast_lamb": ("float", _at_least(0), ()),
}


def _fields() -> dict[str, Field]:
    out: list[Field] = []
    for prefix, cls in (("task", TaskConfig), ("model", ModelConfig), ("train", TrainConfig)):
        for f in dataclasses.fields(cls):
            path = f"{prefix}.{f.name}"
            kind, check, choices = _SPECIAL.get(path, ("int", _at_least(1), ()))
            out.append(Field(path, kind, f.default, check, choices))
    for name, default in HP_DEFAULTS.items():
        kind, check, choices = _SPECIAL[f"hp.{name}"]
        out.append(Field(f"hp.{name}", kind, default, check, choices))
    return {f.path: f for f in out}


FIELDS: dict[str, Field] = _fields()
ALIASES: dict[str, str] = {f.short: f.path for f in FIELDS.values()} | {"seeds": "hp.seed"}
SHORT_NAMES: dict[str, str] = {f.path: f.short for f in FIELDS.values()}

"""The field registry, derived from the declarations in ``config.structure``: every key's dotted path,
kind, default, check, accepted values and meaning (read by the parser, ``grokjax keys`` and the data
dictionary)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from grokjax.config.structure import SECTIONS, ActsWith, Check, Scalar


@dataclass(frozen=True)
class Field:
    path: str
    kind: str  # "int" | "float" | "bool" | "choice" | "batch" | "measures" | "path"
    default: Scalar
    check: Check | None
    choices: tuple[str, ...]
    meaning: str
    acts_with: ActsWith | None = None  # (path, values) pairs: the key has an effect where any one holds

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
        if self.kind == "path":
            return "a directory"
        return "number" if self.kind == "float" else "whole number"


def _fields() -> dict[str, Field]:
    out = [Field(f"{section}.{f.name}", f.metadata["kind"], f.default, f.metadata["check"], f.metadata["choices"],
                 f.metadata["meaning"], f.metadata["acts_with"])
           for section, cls in SECTIONS.items() for f in dataclasses.fields(cls)]
    return {f.path: f for f in out}


FIELDS: dict[str, Field] = _fields()
ALIASES: dict[str, str] = {f.short: f.path for f in FIELDS.values()} | {"seeds": "hp.seed"}
SHORT_NAMES: dict[str, str] = {f.path: f.short for f in FIELDS.values()}
MEANINGS: dict[str, str] = {f.short: f.meaning for f in FIELDS.values()}

"""The designs that choose their runs, by the name ``design=`` takes (``design=grid`` trains every run)."""

from __future__ import annotations

from grokjax.design.chooser import BoundaryDesign
from grokjax.design.law import LawDesign

CHOOSERS: dict[str, type[BoundaryDesign]] = {"boundary": BoundaryDesign, "law": LawDesign}

"""The names of the progress measures (``measures=norms+fourier+excluded``) and their canonical form."""

from __future__ import annotations

MEASURE_NAMES = ("norms", "fourier", "excluded")  # the canonical order
OPS_WITH_FOURIER = ("add", "sub", "mul", "div", "x2_y2", "x2_xy_y2", "x2_xy_y2_x", "x3_xy", "x3_xy2_y")
OPS_WITH_EXCLUDED = ("add", "sub")


def canonical_measures(text: str) -> str | None:
    """``a+b`` in canonical order, ``none`` for the empty set, or None when ``text`` is not a set of
    known measures (unknown name, repeated name, empty part)."""
    if text == "none":
        return "none"
    parts = text.split("+")
    if any(p not in MEASURE_NAMES for p in parts) or len(set(parts)) != len(parts):
        return None
    return "+".join(m for m in MEASURE_NAMES if m in parts)

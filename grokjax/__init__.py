"""grokjax: train whole grids of tiny networks at once to study grokking.

Public API: ``sweep`` (``grokjax sweep`` from Python, returns ``Results``), ``build_sweep`` and
``run_sweep`` (its two halves), ``load`` (a results
directory as pandas DataFrames), ``fit`` (grokking times and phases per run), ``report`` (fits, cells and
laws in one call), ``cells`` and ``fit_law``
(per-cell statistics and the wd law), ``plot_phase_diagram`` (a matplotlib Figure),
``hooked_transformer`` (a model exported with ``grokjax export DIR --to transformerlens OUT``, loaded).

Names are imported on first use, so ``import grokjax`` to load and fit results does not import JAX.
"""

from __future__ import annotations

import importlib
from typing import Any

from grokjax.errors import UserError

__version__ = "0.1.0"

_LAZY = {
    "sweep": "grokjax.api",
    "Results": "grokjax.store.load",
    "build_sweep": "grokjax.grid.expand",
    "run_sweep": "grokjax.run.sweep",
    "load": "grokjax.store.load",
    "fit": "grokjax.analysis.fit",
    "report": "grokjax.analysis.report",
    "cells": "grokjax.analysis.survival",
    "fit_law": "grokjax.analysis.law",
    "plot_phase_diagram": "grokjax.analysis.plots",
    "hooked_transformer": "grokjax.store.export",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'grokjax' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


__all__ = ["Results", "UserError", "build_sweep", "cells", "fit", "fit_law", "hooked_transformer", "load",
           "plot_phase_diagram", "report", "run_sweep", "sweep"]

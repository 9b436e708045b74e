"""grokjax: train whole grids of tiny transformers at once to study grokking.

Public API: ``build_sweep`` and ``run_sweep`` (what ``grokjax sweep`` does), ``load`` (a results
directory as pandas DataFrames), ``fit`` (grokking times and phases per run), ``cells`` and ``fit_law``
(per-cell statistics and the wd law), ``plot_phase_diagram`` (a matplotlib Figure).
"""

from grokjax.config import build_sweep
from grokjax.errors import UserError
from grokjax.fit import cells, fit, fit_law
from grokjax.store import load
from grokjax.sweep import run_sweep


def plot_phase_diagram(fits, ax=None):  # noqa: ANN001, ANN201 - matplotlib is imported on first use
    """The wd-vs-grokking-time phase diagram of ``fit``'s output; returns a matplotlib Figure."""
    from grokjax.plots import plot_phase_diagram as _plot

    return _plot(fits, ax=ax)


__all__ = ["UserError", "build_sweep", "cells", "fit", "fit_law", "load", "plot_phase_diagram", "run_sweep"]
__version__ = "0.1.0"

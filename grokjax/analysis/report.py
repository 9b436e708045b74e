"""Everything ``grokjax fit`` computes from a results directory: per-run fits, per-cell statistics and
the laws, as one Report (``save`` writes fits.parquet, cells.parquet and laws.parquet)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from grokjax.analysis.boundary import Boundary, fit_boundaries
from grokjax.analysis.fit import FitOptions, fit_results
from grokjax.analysis.law import Law, fit_laws, laws_table
from grokjax.analysis.survival import cells
from grokjax.config.schedule import THRESHOLD
from grokjax.store.load import Results, load
from grokjax.store.outputs import save_fits


@dataclass
class Report:
    fits: pd.DataFrame
    cells: pd.DataFrame
    laws: list[Law]
    boundaries: list[Boundary] = field(default_factory=list)

    @property
    def laws_frame(self) -> pd.DataFrame:
        """The laws, and each boundary as a row with target = boundary."""
        return laws_table(self.laws, self.fits, self.boundaries)


def report_of(fits: pd.DataFrame) -> Report:
    """Cells and laws of per-run fits (deterministic: fixed bootstrap seeds)."""
    return Report(fits, cells(fits), fit_laws(fits), fit_boundaries(fits))


def analyse(source: str | Path | Results, opts: FitOptions = FitOptions(), save: bool = False) -> Report:
    """Fit every run of a results directory; with ``save``, write the three tables (nothing is written
    while no metrics exist: an empty fits.parquet would mislead)."""
    results = source if isinstance(source, Results) else load(source)
    fits = fit_results(results, opts)
    if fits.empty:
        return Report(fits, pd.DataFrame(), [])
    report = report_of(fits)
    if save:
        save_fits(results.path, fits, report.cells, report.laws_frame)
    return report


def report(path_or_results: str | Path | Results, threshold: float = THRESHOLD, slack: float = 0.01,
           gap: float = 1000.0, keep: float = 0.9, confirm: int = 3, save: bool = False) -> Report:
    """Python API of everything ``grokjax fit`` computes, in one call: ``.fits`` (one row per run: times,
    phase, double descent, norm-gap, slingshots), ``.cells`` (one row per cell), ``.laws_frame`` (the
    laws, and each boundary, e.g. frac* at each wd, as a row with target = boundary). The options are
    ``grokjax fit``'s; ``save`` writes the three tables as it does."""
    return analyse(path_or_results, FitOptions(threshold, slack, gap, keep, confirm).check(), save=save)

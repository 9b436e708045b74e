"""Writing what analysis produces: fits, cells and laws tables and figures, atomically, with one-line
errors. The fit options travel in the tables' metadata, so ``plot`` can use the fits ``fit`` wrote."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

from grokjax.store.columns import describe
from grokjax.store.files import atomic_file, atomic_parquet, write_error
from grokjax.store.layout import (
    CELLS_PARQUET,
    FIT_OPTIONS_KEY,
    FITS_PARQUET,
    LAWS_PARQUET,
)


def _save_table(target: Path, df: pd.DataFrame, kind: str, options: dict[str, Any]) -> Path:
    out = df.copy()
    out.attrs = {}
    table = describe(pa.Table.from_pandas(out, preserve_index=False), kind)
    table = table.replace_schema_metadata((table.schema.metadata or {}) |
                                          {FIT_OPTIONS_KEY: json.dumps(options).encode()})
    try:
        atomic_parquet(target, table)
    except OSError as e:
        raise write_error(target, e, "nothing else was changed") from e
    return target


def fit_options_of(fits: pd.DataFrame) -> dict[str, Any]:
    """The options a fits frame was computed with (from its attrs)."""
    return {k: fits.attrs[k] for k in ("threshold", "slack", "gap", "keep", "confirm") if k in fits.attrs}


def save_fits(path: Path, fits: pd.DataFrame, cells: pd.DataFrame | None = None,
              laws: pd.DataFrame | None = None) -> Path:
    """Write DIR/fits.parquet (and cells.parquet, laws.parquet when given), each under a temporary name
    then renamed. Raises StorageError on a failed write, leaving the previous files as they were."""
    options = fit_options_of(fits)
    target = _save_table(Path(path) / FITS_PARQUET, fits, "fits", options)
    if cells is not None:
        _save_table(Path(path) / CELLS_PARQUET, cells, "cells", options)
    if laws is not None:
        _save_table(Path(path) / LAWS_PARQUET, laws, "laws", options)
    return target


def save_figure(fig: Any, path: Path) -> Path:
    """Save a matplotlib Figure atomically (and close it if pyplot holds it: grokjax's own figures are
    built without pyplot). Raises StorageError on a failed write."""
    path = Path(path)
    try:
        with atomic_file(path) as tmp:
            fig.savefig(tmp, dpi=fig.dpi, format=path.suffix.lstrip("."))
    except OSError as e:
        raise write_error(path, e, "nothing else was changed") from e
    finally:
        pyplot = sys.modules.get("matplotlib.pyplot")  # never imported here: that would pick a backend
        if pyplot is not None:
            pyplot.close(fig)
    return path

"""Writing what analysis produces: fits, cells and laws tables and figures, atomically, with one-line
errors. The fit options travel in the tables' metadata, so ``plot`` can use the fits ``fit`` wrote."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from grokjax.store.columns import describe
from grokjax.store.files import atomic_file, atomic_files, write_error
from grokjax.store.layout import (
    CELLS_PARQUET,
    FIT_OPTIONS_KEY,
    FITS_PARQUET,
    LAWS_PARQUET,
)


def _table(df: pd.DataFrame, kind: str, options: dict[str, Any]) -> pa.Table:
    out = df.copy()
    out.attrs = {}
    table = describe(pa.Table.from_pandas(out, preserve_index=False), kind)
    return table.replace_schema_metadata((table.schema.metadata or {}) |
                                         {FIT_OPTIONS_KEY: json.dumps(options).encode()})


def fit_options_of(fits: pd.DataFrame) -> dict[str, Any]:
    """The options a fits frame was computed with (from its attrs)."""
    return {k: fits.attrs[k] for k in ("threshold", "slack", "gap", "keep", "confirm") if k in fits.attrs}


def save_fits(path: Path, fits: pd.DataFrame, cells: pd.DataFrame | None = None,
              laws: pd.DataFrame | None = None) -> Path:
    """Write DIR/fits.parquet (and cells.parquet, laws.parquet when given) all or nothing: every table under
    a temporary name first, then all renamed. Raises StorageError on a failed write, leaving the previous
    files as they were."""
    options = fit_options_of(fits)
    tables = [(FITS_PARQUET, fits, "fits"), (CELLS_PARQUET, cells, "cells"), (LAWS_PARQUET, laws, "laws")]
    tables = [(Path(path) / name, _table(df, kind, options)) for name, df, kind in tables if df is not None]
    try:
        with atomic_files([target for target, _ in tables]) as tmps:
            for tmp, (_, table) in zip(tmps, tables):
                pq.write_table(table, tmp)
    except OSError as e:
        raise write_error(Path(path) / FITS_PARQUET, e, "the previous fits, cells and laws were kept") from e
    return Path(path) / FITS_PARQUET


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

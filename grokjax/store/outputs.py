"""Writing what analysis produces: fits.parquet and figures, atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from grokjax.store.layout import FITS_PARQUET


def save_fits(path: Path, fits: pd.DataFrame) -> Path:
    """Write fits to DIR/fits.parquet (temporary name, then rename)."""
    out = fits.copy()
    out.attrs = {}
    tmp = Path(path) / f".{FITS_PARQUET}.tmp"
    out.to_parquet(tmp, index=False)
    tmp.replace(Path(path) / FITS_PARQUET)
    return Path(path) / FITS_PARQUET


def save_figure(fig: Any, path: Path) -> Path:
    """Save a matplotlib Figure atomically and close it."""
    import matplotlib.pyplot as plt

    tmp = path.with_name(f".{path.name}.tmp{path.suffix}")
    fig.savefig(tmp, dpi=fig.dpi, format=path.suffix.lstrip("."))
    tmp.replace(path)
    plt.close(fig)
    return path

"""Writing what analysis produces: fits.parquet and figures, atomically and with one-line errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from grokjax.store.files import atomic_file, write_error
from grokjax.store.layout import FITS_PARQUET


def save_fits(path: Path, fits: pd.DataFrame) -> Path:
    """Write fits to DIR/fits.parquet (temporary name, then rename). Raises StorageError on a failed write,
    leaving the previous fits.parquet, if any, as it was."""
    out = fits.copy()
    out.attrs = {}
    target = Path(path) / FITS_PARQUET
    try:
        with atomic_file(target) as tmp:
            out.to_parquet(tmp, index=False)
    except OSError as e:
        raise write_error(target, e, "nothing else was changed") from e
    return target


def save_figure(fig: Any, path: Path) -> Path:
    """Save a matplotlib Figure atomically and close it. Raises StorageError on a failed write."""
    import matplotlib.pyplot as plt

    path = Path(path)
    try:
        with atomic_file(path) as tmp:
            fig.savefig(tmp, dpi=fig.dpi, format=path.suffix.lstrip("."))
    except OSError as e:
        raise write_error(path, e, "nothing else was changed") from e
    finally:
        plt.close(fig)
    return path

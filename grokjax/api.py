"""``grokjax.sweep``: the command line's ``grokjax sweep`` for notebooks and scripts."""

from __future__ import annotations

import os
from typing import Any

from grokjax.errors import UserError
from grokjax.store.load import Results


def sweep(config: str | None = None, out: str | os.PathLike | None = None, *, resume: bool = False,
          quiet: bool = False, fit: bool = True, plot: bool = True,
          arms: list[dict[str, Any]] | None = None, **overrides: Any) -> Results:
    """Train a sweep, then (like the command line) fit it, print its summary and draw its phase diagram;
    return its results directory read back.

    ``config`` is a preset name or a TOML path, as on the command line; ``overrides`` are keys as Python
    values: a list, tuple, range or 1-D array sweeps an axis (``wd=np.logspace(-3, 1, 32)``), a scalar sets
    one value (``d_model=64``), ``seeds=16`` counts seeds. Validation is the command line's: a bad key or
    value raises ``grokjax.UserError`` with the same one-line message, before anything is written.
    ``arms``: a union of grids, each arm a dict of one value per key (``[{"grokfast": "none", "wd": 0},
    {"grokfast": "ema", "wd": 0.005}]``), crossed with the swept keys; it replaces the file's ``[[arms]]``.
    ``fit=False`` skips the fit (and the figure), ``plot=False`` the figure; ``quiet`` prints nothing.
    """
    from grokjax.analysis.console import finish_sweep
    from grokjax.grid.expand import build_sweep
    from grokjax.run.sweep import run_sweep
    from grokjax.store.load import load

    if config is not None and not isinstance(config, (str, os.PathLike)):
        raise UserError(f"config={config!r}: expected a preset name or the path of a TOML file, or None")
    if out is not None and not isinstance(out, (str, os.PathLike)):
        raise UserError(f"out={out!r}: expected the path of a results directory (a str or a Path), or None")
    if arms is not None and not (isinstance(arms, (list, tuple)) and all(isinstance(a, dict) for a in arms)):
        raise UserError(f"arms={arms!r}: expected a list of dicts, one per arm (key -> one value)")
    spec = build_sweep(None if config is None else os.fspath(config), settings=overrides, arms=arms)
    command = ["grokjax.sweep", *([config] if config else []), *(f"{k}={v!r}" for k, v in overrides.items()),
               *([f"arms={arms!r}"] if arms else [])]
    outcome = run_sweep(spec, None if out is None else os.fspath(out), resume=resume, quiet=quiet,
                        command=command)
    finish_sweep(outcome, spec, fit=fit, plot=fit and plot, say=(lambda line: None) if quiet else print)
    return load(outcome.path)

"""A trained run's network as a plain function (``Results.model``): its configuration from its row of
runs.parquet, its parameters from ``Results.params``."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from grokjax.config.fields import FIELDS
from grokjax.grid.expand import Run, group_config


def network(row: dict[str, Any], params: dict[str, Any]) -> Callable[..., np.ndarray]:
    """``f(a, b)`` (algorithmic tasks) or ``f(x)`` (digits) -> logits as NumPy, for the run whose
    runs.parquet row (short key names -> values) is ``row``."""
    from grokjax.engine.single import engine_for

    point = {path: _plain(row[f.short]) for path, f in FIELDS.items()}
    run = Run(-1, 0, tuple(sorted(point.items())))
    engine = engine_for(group_config(point), [run])
    table = engine.table

    def tokens(a: Any, b: Any) -> np.ndarray:
        a, b = np.asarray(a, np.int32).ravel(), np.asarray(b, np.int32).ravel()
        if a.shape != b.shape or (a.size and (min(a.min(), b.min()) < 0 or max(a.max(), b.max()) >= table.n_symbols)):
            raise ValueError(f"a and b: equal-length arrays of operands in [0, {table.n_symbols})")
        eq = np.full_like(a, table.n_symbols)
        cols = [a, b, eq] if table.seq_len == 3 else [a, np.full_like(a, table.n_symbols + 1), b, eq]
        return np.stack(cols, axis=1)

    def f(*operands: Any) -> np.ndarray:
        if table.features:
            (x,) = operands
            inputs = jnp.asarray(np.asarray(x, np.float32).reshape(-1, table.seq_len), engine.dtype)
        else:
            inputs = jnp.asarray(tokens(*operands))
        with jax.enable_x64(engine.x64):
            return np.asarray(engine.forward(jax.tree.map(jnp.asarray, params), inputs))

    return f


def _plain(v: Any) -> Any:
    """A runs.parquet value as the Python scalar the configuration holds (NumPy scalars unwrapped)."""
    return v.item() if isinstance(v, np.generic) else v

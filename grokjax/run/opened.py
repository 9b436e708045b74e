"""A trained run's network as a plain function (``Results.model``): its configuration from its row of
runs.parquet, its parameters from ``Results.params``."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from grokjax.config.fields import FIELDS
from grokjax.errors import UserError
from grokjax.grid.expand import Run, group_config


def _engine(row: dict[str, Any]) -> Any:
    """The engine of the run whose runs.parquet row (short key names -> values) is ``row``."""
    from grokjax.engine.single import engine_for

    point = _point(row)
    return engine_for(group_config(point), [Run(-1, 0, tuple(sorted(point.items())))])


def model_config(row: dict[str, Any]) -> Any:
    """The ModelConfig of the run whose runs.parquet row is ``row``."""
    return group_config(_point(row)).model


def network(row: dict[str, Any], params: dict[str, Any]) -> Callable[..., np.ndarray]:
    """``f(a, b)`` (algorithmic tasks) or ``f(x)`` (digits) -> logits as NumPy, for the run whose
    runs.parquet row is ``row``."""
    engine = _engine(row)
    table = engine.table

    def tokens(a: Any, b: Any) -> np.ndarray:
        a, b = _operands(a, "a", table.n_symbols), _operands(b, "b", table.n_symbols)
        if a.shape != b.shape:
            raise UserError(f"a and b: {a.size} and {b.size} operands; give equal-length arrays")
        eq = np.full_like(a, table.n_symbols)
        cols = [a, b, eq] if table.seq_len == 3 else [a, np.full_like(a, table.n_symbols + 1), b, eq]
        return np.stack(cols, axis=1)

    def f(*operands: Any) -> np.ndarray:
        if len(operands) != (1 if table.features else 2):
            raise UserError(f"model(...)({len(operands)} arrays): expected " + (
                "f(x), images x [N, 64]" if table.features else "f(a, b), operand arrays a and b [N]"))
        if table.features:
            x = np.asarray(operands[0], np.float32)
            if x.size % table.seq_len:
                raise UserError(f"x: {x.size} values are not whole images of {table.seq_len} pixels")
            inputs = jnp.asarray(x.reshape(-1, table.seq_len), engine.dtype)
        else:
            inputs = jnp.asarray(tokens(*operands))
        if not len(inputs):
            return np.zeros((0, table.n_classes), np.dtype(engine.dtype))
        with jax.enable_x64(engine.x64):
            return np.asarray(engine.forward(jax.tree.map(jnp.asarray, params), inputs))

    return f


def _operands(x: Any, name: str, n_symbols: int) -> np.ndarray:
    """Operands as int32 [N]: whole numbers in [0, n_symbols); floats only where they are whole (1.0)."""
    x = np.asarray(x)
    if x.dtype.kind not in "iub" and not (x.dtype.kind == "f" and np.all(np.isfinite(x)) and np.all(x == np.round(x))):
        what = "fractional or non-finite floats" if x.dtype.kind == "f" else f"{x.dtype} values"
        raise UserError(f"{name}: operands are whole numbers in [0, {n_symbols}), not {what}")
    x = x.astype(np.int64).ravel()
    if x.size and (x.min() < 0 or x.max() >= n_symbols):
        raise UserError(f"{name}: operands are whole numbers in [0, {n_symbols}); got {x.min()} to {x.max()}")
    return x.astype(np.int32)


def hooked(row: dict[str, Any], params: dict[str, Any]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(HookedTransformerConfig keyword arguments, state dict) of the run whose runs.parquet row is ``row``
    (``models.transformerlens``); UserError naming the option TransformerLens cannot express."""
    from grokjax.models.transformerlens import hooked_config, hooked_state_dict

    engine = _engine(row)
    cfg, table = engine.group.model, engine.table
    config = hooked_config(cfg, table.vocab_size, table.n_classes, table.seq_len)
    return config, hooked_state_dict(cfg, params, table.seq_len)


def _point(row: dict[str, Any]) -> dict[str, Any]:
    """The configuration of a runs.parquet row: every key by path; a key newer than the sweep (no column)
    at its default, which is what that sweep trained with."""
    return {path: _plain(row[f.short]) if f.short in row else f.default for path, f in FIELDS.items()}


def _plain(v: Any) -> Any:
    """A runs.parquet value as the Python scalar the configuration holds (NumPy scalars unwrapped)."""
    return v.item() if isinstance(v, np.generic) else v

"""Named sweeps: built-in presets and TOML sweep files (``sweeps/NAME.toml``)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from grokjax.errors import UserError
from grokjax.spec.grammar import parse_expression, resolve_key
from grokjax.spec.structure import Scalar

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

# Presets (DESIGN.md); sweeps/*.toml mirror these and a test keeps them equal.
PRESETS: dict[str, dict[str, Any]] = {
    "default": {
        "task.op": "add", "task.p": 47, "hp.frac": 0.5,
        "model.n_layers": 1, "model.d_model": 32, "model.n_heads": 4, "model.d_mlp": 128,
        "model.layer_norm": False,
        "train.steps": 4000, "train.batch_size": "full", "train.eval_every": 50, "train.chunk_steps": 250,
        "train.checkpoint_every": 1000,
        "hp.lr": 1e-2, "hp.wd": [0.0, 0.1, 0.3, 1.0], "hp.seed": [0, 1, 2],
    },
    "power2022": {
        "task.op": "div", "task.p": 97, "hp.frac": 0.5,
        "model.n_layers": 2, "model.d_model": 128, "model.n_heads": 4, "model.d_mlp": 512,
        "model.layer_norm": True,
        "train.steps": 100_000, "train.batch_size": "auto", "train.eval_every": 100,
        "hp.lr": 1e-3, "hp.wd": 1.0, "hp.seed": 0,
    },
    "nanda2023": {
        "task.op": "add", "task.p": 113, "hp.frac": 0.3,
        "model.n_layers": 1, "model.d_model": 128, "model.n_heads": 4, "model.d_mlp": 512,
        "model.layer_norm": False,
        "train.steps": 40_000, "train.batch_size": "full", "train.eval_every": 100,
        "hp.lr": 1e-3, "hp.wd": 1.0, "hp.seed": 0,
    },
    "prieto2025": {
        "task.op": "add", "task.p": 113, "hp.frac": 0.4,
        "model.arch": "mlp", "model.mlp_input": "onehot", "model.n_layers": 2, "model.d_mlp": 200,
        "model.act": "relu", "model.bias": False,
        "train.steps": 3000, "train.batch_size": "full", "train.eval_every": 50, "train.optimizer": "adamw",
        "train.beta1": 0.9, "train.beta2": 0.99, "train.eps": 1e-25, "train.warmup_steps": 0, "train.chunk_steps": 250,
        "hp.lr": 0.01, "hp.wd": 0.0, "hp.seed": 0,
        "train.orthograd": [False, True], "train.loss": ["softmax", "stablemax"],
    },
    "grokfast2024": {
        "task.op": "mul", "task.p": 97, "hp.frac": 0.5,
        "model.arch": "transformer", "model.n_layers": 2, "model.d_model": 128, "model.n_heads": 4, "model.d_mlp": 512,
        "model.layer_norm": True, "model.act": "gelu",
        "train.steps": 5000, "train.batch_size": 512, "train.eval_every": 50, "train.optimizer": "adam",
        "train.beta1": 0.9, "train.beta2": 0.98, "train.warmup_steps": 10, "train.chunk_steps": 250,
        "hp.lr": 1e-3, "hp.wd": 0.005, "hp.seed": 0,
        "train.grokfast": ["none", "ema"], "hp.grokfast_alpha": 0.98, "hp.grokfast_lamb": 2.0,
    },
}


def find_config(name: str) -> Path | None:
    """A TOML path as given, or ``sweeps/NAME.toml`` in the working directory or beside the package."""
    candidates = [Path(name)]
    if not name.endswith(".toml"):
        for root in (Path.cwd(), Path(__file__).resolve().parents[2]):
            candidates.append(root / "sweeps" / f"{name}.toml")
    return next((c for c in candidates if c.is_file()), None)


def named_sweeps() -> list[str]:
    names = set(PRESETS)
    for root in (Path.cwd(), Path(__file__).resolve().parents[2]):
        names |= {p.stem for p in (root / "sweeps").glob("*.toml")}
    return sorted(names)


def _flatten_toml(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in table.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out |= _flatten_toml(v, f"{key}.")
        else:
            out[key] = v
    return out


def load_toml(path: Path) -> dict[str, tuple[list[Scalar], bool]]:
    """Read a sweep file: keys as on the command line (tables give dotted paths); string values use the
    sweep grammar, TOML arrays are lists."""
    try:
        table = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read sweep file {str(path)!r}: {e}")
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"sweep file {str(path)!r} is not valid TOML: {e}")
    out: dict[str, tuple[list[Scalar], bool]] = {}
    for key, v in _flatten_toml(table).items():
        resolve_key(key)
        if isinstance(v, str):
            out[key] = parse_expression(key, v)
        elif isinstance(v, list):
            if not v or any(isinstance(x, (list, dict)) for x in v):
                raise UserError(f"{key} in {path}: a list must hold at least one plain value")
            out[key] = (list(v), True)
        elif isinstance(v, (int, float, bool)):
            out[key] = ([v], False)
        else:
            raise UserError(f"{key} in {path}: unsupported value {v!r}; use a number, string, bool or list")
    return out


"""Named sweeps: the TOML sweep files, ``sweeps/NAME.toml`` (the presets live there and only there).

A sweep file holds keys as on the command line (tables give dotted paths); ``read_sweep_file`` returns
them flattened and unparsed: ``grid.expand`` reads string values with the sweep grammar."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from grokjax.errors import UserError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib


def _sweep_folders() -> list[Path]:
    """Where named sweeps are looked for: ./sweeps, the repository's sweeps/ (an editable install), and
    the copy a non-editable install puts in <prefix>/share/grokjax/sweeps."""
    return [Path.cwd() / "sweeps", Path(__file__).resolve().parents[2] / "sweeps",
            Path(sys.prefix) / "share" / "grokjax" / "sweeps"]


def find_config(name: str) -> Path | None:
    """A TOML path as given, or ``NAME.toml`` in the first of ``_sweep_folders`` that has it."""
    candidates = [Path(name)]
    if not name.endswith(".toml"):
        candidates += [folder / f"{name}.toml" for folder in _sweep_folders()]
    return next((c for c in candidates if c.is_file()), None)


def named_sweeps() -> list[str]:
    return sorted({p.stem for folder in _sweep_folders() for p in folder.glob("*.toml")})


def _flatten_toml(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in table.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out |= _flatten_toml(v, f"{key}.")
        else:
            out[key] = v
    return out


def read_sweep_file(path: Path) -> dict[str, Any]:
    """A sweep file's keys (dotted paths for tables) and raw values: a string (sweep grammar), a
    non-empty list of plain values, a number or a bool. UserError naming the file otherwise."""
    try:
        table = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read sweep file {str(path)!r}: {e}")
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"sweep file {str(path)!r} is not valid TOML: {e}")
    arms = table.pop("arms", None)
    out = _flatten_toml(table)
    if arms is not None:
        if not isinstance(arms, list) or not arms or not all(isinstance(a, dict) and a for a in arms):
            raise UserError(f"arms in {path}: write each arm as a [[arms]] table of key = value lines")
        out["arms"] = [_flatten_toml(a) for a in arms]
        for arm in out["arms"]:
            for key, v in arm.items():
                if not isinstance(v, (str, int, float, bool)):
                    raise UserError(f"{key} in an arm of {path}: {v!r}; an arm sets one value per key")
    for key, v in out.items():
        if key == "arms":
            continue
        if isinstance(v, list):
            if not v or any(isinstance(x, (list, dict)) for x in v):
                raise UserError(f"{key} in {path}: a list must hold at least one plain value")
        elif not isinstance(v, (str, int, float, bool)):
            raise UserError(f"{key} in {path}: unsupported value {v!r}; use a number, string, bool or list")
    return out

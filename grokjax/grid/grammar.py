"""The ``key=value`` grammar (never ``eval``).

- scalar: ``wd=0.5``, ``op=add``, ``layer_norm=true``
- list: ``wd=[0.1,0.3,1]`` or ``wd=0.1,0.3,1``
- ``logspace(a,b,n)`` = 10**linspace(a,b,n) and ``linspace(a,b,n)``, both ends included
- ``range(start,stop[,step])``, stop excluded
- ``logrange(a,b)``: the continuous range [a, b] (a, b > 0) for design=boundary|law, which pick their runs from
  ``LOGRANGE_POINTS`` log-spaced candidates of it, ends included (a grid refuses it: build_sweep)
- ``seeds=16`` means seeds 0..15; ``seeds=[0,3,7]`` names them
"""

from __future__ import annotations

import difflib
import math
import re
from typing import Iterable

import numpy as np

from grokjax.config.choices import MEASURE_NAMES, canonical_measures
from grokjax.config.fields import ALIASES, FIELDS
from grokjax.config.structure import Scalar
from grokjax.errors import UserError

FUNCTIONS = ("logspace", "linspace", "range", "logrange")
LOGRANGE_POINTS = 64  # candidates of a continuous range: neighbours 16% apart over 1e-3..10
MAX_AXIS_VALUES = 100_000  # values one key may sweep: refused before anything of that size is allocated

_INT = re.compile(r"[+-]?\d+", re.ASCII)  # ASCII: a fullwidth or Arabic-Indic digit is not a number here
_FLOAT = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?", re.ASCII)
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_IDENT_SET = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\+[A-Za-z_][A-Za-z0-9_]*)+")  # a+b: a set (measures=)
_CALL = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\((.*)\)")


def did_you_mean(word: str, options: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def parse_scalar(key: str, text: str, whole: str | None = None) -> Scalar:
    """One literal: int, float, true/false, a bare identifier such as ``add``, or a ``+``-joined set of
    identifiers such as ``norms+fourier``. ``whole`` is the whole
    expression the literal came from, echoed in the error."""
    t = text.strip()
    if _INT.fullmatch(t):
        return int(t)
    if _FLOAT.fullmatch(t):
        return float(t)
    if t in ("true", "false", "True", "False"):
        return t.lower() == "true"
    if _IDENT.fullmatch(t) or _IDENT_SET.fullmatch(t):
        return t
    shown = t if t else "(empty)"
    raise UserError(f"{key}={whole if whole is not None else text}: malformed value {shown!r}; expected a number, true/false, a name, "
                    f"a list [a,b,...], logspace(a,b,n), linspace(a,b,n) or range(start,stop[,step])")


def _number_args(key: str, name: str, inner: str) -> list[int | float]:
    args = [parse_scalar(key, a, f"{name}({inner})") for a in inner.split(",")]
    for a in args:
        if isinstance(a, bool) or not isinstance(a, (int, float)):
            raise UserError(f"{key}={name}({inner}): argument {a!r} is not a number; {name} takes numbers")
    return args


def _logrange(key: str, inner: str, args: list[int | float]) -> list[Scalar]:
    if len(args) != 2:
        raise UserError(f"{key}=logrange({inner}): logrange takes 2 arguments (low, high), got {len(args)}")
    low, high = args
    if not 0 < low < high:
        raise UserError(f"{key}=logrange({inner}): give 0 < low < high (the range is log-scaled)")
    return [float(v) for v in np.logspace(math.log10(low), math.log10(high), LOGRANGE_POINTS)]


def _call(key: str, name: str, inner: str) -> list[Scalar]:
    args = _number_args(key, name, inner)
    if name == "logrange":
        return _logrange(key, inner, args)
    if name in ("logspace", "linspace"):
        if len(args) != 3:
            raise UserError(f"{key}={name}({inner}): {name} takes 3 arguments (start, stop, n), got {len(args)}")
        a, b, n = args
        if not isinstance(n, int) or n < 1:
            raise UserError(f"{key}={name}({inner}): n={n} must be a whole number >= 1")
        _check_count(key, f"{name}({inner})", n)
        values = np.linspace(a, b, n)
        return [float(v) for v in (10.0 ** values if name == "logspace" else values)]
    if len(args) not in (2, 3):
        raise UserError(f"{key}=range({inner}): range takes 2 or 3 arguments (start, stop[, step]), "
                        f"got {len(args)}")
    start, stop = args[0], args[1]
    step = args[2] if len(args) == 3 else 1
    if step == 0:
        raise UserError(f"{key}=range({inner}): step must not be 0")
    _check_count(key, f"range({inner})", max(0, math.ceil((stop - start) / step)))
    if all(isinstance(a, int) for a in (start, stop, step)):
        values: list[Scalar] = list(range(start, stop, step))
    else:
        values = [float(v) for v in np.arange(start, stop, step)]
    if not values:
        raise UserError(f"{key}=range({inner}): the range is empty (stop is excluded); "
                        f"give start < stop for a positive step")
    return values


def parse_expression(key: str, text: str) -> tuple[list[Scalar], bool]:
    """Parse one sweep expression. Returns (values, is_axis): is_axis is False for a plain scalar."""
    t = text.strip()
    if FIELDS[resolve_key(key)].kind == "path":  # a path is taken as typed: one value, never a list
        return [t], False
    call = _CALL.fullmatch(t)
    if call:
        name, inner = call.group(1), call.group(2)
        if name not in FUNCTIONS:
            raise UserError(f"{key}={text}: unknown function {name!r}{did_you_mean(name, FUNCTIONS)}; "
                            f"accepted: logspace(a,b,n), linspace(a,b,n), range(start,stop[,step]), logrange(a,b)")
        if any(c in inner for c in "()[]"):
            raise UserError(f"{key}={text}: arguments of {name} must be plain numbers")
        return _call(key, name, inner), True
    if t.startswith("[") or t.endswith("]"):
        if not (t.startswith("[") and t.endswith("]")):
            raise UserError(f"{key}={text}: unbalanced brackets; a list looks like [a,b,c]")
        t = t[1:-1]
        if not t.strip():
            raise UserError(f"{key}={text}: empty list; give at least one value, e.g. [0.1,1]")
        items = t.split(",")
    elif "," in t:
        items = t.split(",")
    else:
        return [parse_scalar(key, t)], False
    if any(c in item for item in items for c in "()[]"):
        raise UserError(f"{key}={text}: lists hold plain values, not nested lists or functions")
    _check_count(key, text, len(items))
    return [parse_scalar(key, item, text) for item in items], True


def resolve_key(key: str) -> str:
    """Map a short alias or dotted path to its dotted path, or fail with a suggestion."""
    if key in FIELDS:
        return FIELDS[key].path
    if key in ALIASES:
        return ALIASES[key]
    options = sorted(set(ALIASES) | set(FIELDS))
    raise UserError(f"unknown key {key!r}{did_you_mean(key, options)}; "
                    f"known keys: {', '.join(sorted(ALIASES))} (or their dotted paths, e.g. model.d_model)")


def _check_count(key: str, text: str, n: float) -> None:
    if not n <= MAX_AXIS_VALUES:
        raise UserError(f"{key}={text}: {n:,.0f} values; at most {MAX_AXIS_VALUES:,} values per key")


def coerce(key: str, value: Scalar, seeds_count: bool = False, shown: str | None = None) -> list[Scalar]:
    """Type-check and domain-check one value for the field behind ``key``; returns a list of values
    (``seeds=N`` expands to N seeds). ``shown`` is what the user typed, echoed in errors."""
    path = resolve_key(key)
    field = FIELDS[path]
    shown = shown if shown is not None else f"{key}={value}"
    if field.kind == "bool":
        if not isinstance(value, bool):
            raise UserError(f"{shown}: expected true or false")
        return [value]
    if field.kind == "choice":
        if not isinstance(value, str) or value not in field.choices:
            hint = did_you_mean(str(value), field.choices)
            raise UserError(f"{shown}: not accepted{hint}; accepted: {', '.join(field.choices)}")
        return [value]
    if field.kind == "path":
        if not isinstance(value, str):
            raise UserError(f"{shown}: expected a directory, got {value!r}")
        return [value]
    if field.kind == "measures":
        canonical = canonical_measures(value) if isinstance(value, str) else None
        if canonical is None:
            raise UserError(f"{shown}: not accepted; accepted: none, or a +-joined set of "
                            f"{', '.join(MEASURE_NAMES)} such as norms+fourier (a list would sweep it)")
        return [canonical]
    if field.kind == "batch":
        if isinstance(value, str):
            if value not in ("full", "auto"):
                raise UserError(f"{shown}: expected a whole number >= 1, 'full' or 'auto'")
            return [value]
    if isinstance(value, bool) or isinstance(value, str):
        kind = "a number" if field.kind == "float" else "a whole number"
        raise UserError(f"{shown}: expected {kind}, got {value!r}")
    if field.kind in ("int", "batch"):
        if isinstance(value, float):
            if not (math.isfinite(value) and value.is_integer()):
                raise UserError(f"{shown}: expected a whole number")
            value = int(value)
        if field.kind == "batch" and value < 1:
            raise UserError(f"{shown}: expected a whole number >= 1, 'full' or 'auto'")
    else:
        value = float(value)
        if not math.isfinite(value):
            raise UserError(f"{shown}: expected a finite number")
    if seeds_count:
        if value < 1:
            raise UserError(f"{shown}: seeds=N needs N >= 1 (or a list of seeds such as seeds=[0,3,7])")
        _check_count(key, str(value), value)
        return list(range(int(value)))
    if field.check is not None:
        accepted = field.check(value)
        if accepted is not None:
            raise UserError(f"{shown}: out of range; expected {accepted}")
    return [value]


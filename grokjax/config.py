"""Sweep specifications: typed fields, the `key=value` grammar, presets, and the resolved grid.

A sweep is a set of fields (dotted paths such as ``model.d_model`` or ``hp.wd``), each with one or more
values. Fields given several values are axes of a cartesian grid. Per-model numeric fields (``hp.*``) are
vmapped arrays inside one compiled program; every other field is structural and splits the grid into
groups, each compiled once.

The grammar (never ``eval``):

- scalar: ``wd=0.5``, ``op=add``, ``layer_norm=true``
- list: ``wd=[0.1,0.3,1]`` or ``wd=0.1,0.3,1``
- ``logspace(a,b,n)`` = 10**linspace(a,b,n) and ``linspace(a,b,n)``, both ends included
- ``range(start,stop[,step])``, stop excluded
- ``seeds=16`` means seeds 0..15; ``seeds=[0,3,7]`` names them
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import itertools
import json
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from grokjax.errors import UserError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

Scalar = int | float | bool | str

# ----------------------------------------------------------------------------------------------------
# Static structure (frozen dataclasses) and per-model hyperparameters.


@dataclass(frozen=True)
class TaskConfig:
    """Which binary operation, and the modulus p (ignored by ``s5``)."""

    op: str = "add"
    p: int = 97


@dataclass(frozen=True)
class ModelConfig:
    """Decoder-only transformer shape. ``d_model`` must be divisible by ``n_heads``."""

    n_layers: int = 1
    d_model: int = 128
    n_heads: int = 4
    d_mlp: int = 512
    layer_norm: bool = False
    act: str = "relu"

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads


@dataclass(frozen=True)
class TrainConfig:
    """Everything about the training loop that fixes shapes or the compiled program.

    ``batch_size`` is ``"full"`` (every train pair every step), ``"auto"`` (Power et al.:
    min(512, n_train // 2)) or a number of pairs drawn per model per step from its own train split.
    """

    steps: int = 40_000
    batch_size: int | str = "full"
    eval_every: int = 100
    log_every: int = 1
    warmup_steps: int = 10
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-8
    decay_mask: str = "all"
    dtype: str = "float32"
    eval_batch_size: int = 4096
    chunk_steps: int = 500
    checkpoint_every: int = 5000
    models_per_batch: int = 0


@dataclass(frozen=True)
class GroupConfig:
    """One static group: everything that needs its own compiled program."""

    task: TaskConfig
    model: ModelConfig
    train: TrainConfig


PER_MODEL_FIELDS = ("wd", "lr", "frac", "seed", "init_scale")
HP_DEFAULTS: dict[str, Scalar] = {"wd": 1.0, "lr": 1e-3, "frac": 0.3, "seed": 0, "init_scale": 1.0}

OPS = ("add", "sub", "mul", "div", "x2_y2", "x2_xy_y2", "x2_xy_y2_x", "x3_xy", "x3_xy2_y", "s5")
OPS_NEEDING_PRIME = ("div",)
FUNCTIONS = ("logspace", "linspace", "range")

# ----------------------------------------------------------------------------------------------------
# The field registry: kind, domain and default of every key a user may set.


@dataclass(frozen=True)
class Field:
    path: str
    kind: str  # "int" | "float" | "bool" | "choice" | "batch"
    default: Scalar
    check: Callable[[Any], str | None] | None = None  # returns what would be accepted, or None if fine
    choices: tuple[str, ...] = ()

    @property
    def short(self) -> str:
        return self.path.rsplit(".", 1)[-1]

    @property
    def per_model(self) -> bool:
        return self.path.startswith("hp.")


def _at_least(lo: float) -> Callable[[Any], str | None]:
    return lambda v: None if v >= lo else f"a number >= {lo:g}"


def _positive(v: Any) -> str | None:
    return None if v > 0 else "a number > 0"


def _open_unit(v: Any) -> str | None:
    return None if 0 < v < 1 else "a fraction strictly between 0 and 1"


def _fields() -> dict[str, Field]:
    out: list[Field] = [
        Field("task.op", "choice", TaskConfig.op, choices=OPS),
        Field("task.p", "int", TaskConfig.p, _at_least(3)),
    ]
    model_checks = {"n_layers": _at_least(1), "d_model": _at_least(1), "n_heads": _at_least(1),
                    "d_mlp": _at_least(1)}
    for f in dataclasses.fields(ModelConfig):
        if f.name == "layer_norm":
            out.append(Field("model.layer_norm", "bool", f.default))
        elif f.name == "act":
            out.append(Field("model.act", "choice", f.default, choices=("relu", "gelu")))
        else:
            out.append(Field(f"model.{f.name}", "int", f.default, model_checks[f.name]))
    train_kinds = {"beta1": ("float", lambda v: None if 0 <= v < 1 else "a number in [0, 1)"),
                   "beta2": ("float", lambda v: None if 0 <= v < 1 else "a number in [0, 1)"),
                   "eps": ("float", _positive),
                   "warmup_steps": ("int", _at_least(0)),
                   "models_per_batch": ("int", _at_least(0))}
    for f in dataclasses.fields(TrainConfig):
        if f.name == "batch_size":
            out.append(Field("train.batch_size", "batch", f.default))
        elif f.name == "decay_mask":
            out.append(Field("train.decay_mask", "choice", f.default, choices=("all", "matrices")))
        elif f.name == "dtype":
            out.append(Field("train.dtype", "choice", f.default, choices=("float32", "float64")))
        else:
            kind, check = train_kinds.get(f.name, ("int", _at_least(1)))
            out.append(Field(f"train.{f.name}", kind, f.default, check))
    out += [
        Field("hp.wd", "float", HP_DEFAULTS["wd"], _at_least(0)),
        Field("hp.lr", "float", HP_DEFAULTS["lr"], _positive),
        Field("hp.frac", "float", HP_DEFAULTS["frac"], _open_unit),
        Field("hp.seed", "int", HP_DEFAULTS["seed"], _at_least(0)),
        Field("hp.init_scale", "float", HP_DEFAULTS["init_scale"], _positive),
    ]
    return {f.path: f for f in out}


FIELDS: dict[str, Field] = _fields()
ALIASES: dict[str, str] = {f.short: f.path for f in FIELDS.values()} | {"seeds": "hp.seed"}
SHORT_NAMES: dict[str, str] = {f.path: f.short for f in FIELDS.values()}

# ----------------------------------------------------------------------------------------------------
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
}

# ----------------------------------------------------------------------------------------------------
# The grammar.

_INT = re.compile(r"[+-]?\d+")
_FLOAT = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_CALL = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\((.*)\)")


def _did_you_mean(word: str, options: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def parse_scalar(key: str, text: str) -> Scalar:
    """One literal: int, float, true/false, or a bare identifier such as ``add``."""
    t = text.strip()
    if _INT.fullmatch(t):
        return int(t)
    if _FLOAT.fullmatch(t):
        return float(t)
    if t in ("true", "false", "True", "False"):
        return t.lower() == "true"
    if _IDENT.fullmatch(t):
        return t
    shown = t if t else "(empty)"
    raise UserError(f"{key}={text}: malformed value {shown!r}; expected a number, true/false, a name, "
                    f"a list [a,b,...], logspace(a,b,n), linspace(a,b,n) or range(start,stop[,step])")


def _number_args(key: str, name: str, inner: str) -> list[int | float]:
    args = [parse_scalar(key, a) for a in inner.split(",")]
    for a in args:
        if isinstance(a, bool) or not isinstance(a, (int, float)):
            raise UserError(f"{key}={name}({inner}): argument {a!r} is not a number; {name} takes numbers")
    return args


def _call(key: str, name: str, inner: str) -> list[Scalar]:
    args = _number_args(key, name, inner)
    if name in ("logspace", "linspace"):
        if len(args) != 3:
            raise UserError(f"{key}={name}({inner}): {name} takes 3 arguments (start, stop, n), got {len(args)}")
        a, b, n = args
        if not isinstance(n, int) or n < 1:
            raise UserError(f"{key}={name}({inner}): n={n} must be a whole number >= 1")
        values = np.linspace(a, b, n)
        return [float(v) for v in (10.0 ** values if name == "logspace" else values)]
    if len(args) not in (2, 3):
        raise UserError(f"{key}=range({inner}): range takes 2 or 3 arguments (start, stop[, step]), "
                        f"got {len(args)}")
    start, stop = args[0], args[1]
    step = args[2] if len(args) == 3 else 1
    if step == 0:
        raise UserError(f"{key}=range({inner}): step must not be 0")
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
    call = _CALL.fullmatch(t)
    if call:
        name, inner = call.group(1), call.group(2)
        if name not in FUNCTIONS:
            raise UserError(f"{key}={text}: unknown function {name!r}{_did_you_mean(name, FUNCTIONS)}; "
                            f"accepted: logspace(a,b,n), linspace(a,b,n), range(start,stop[,step])")
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
    return [parse_scalar(key, item) for item in items], True


def resolve_key(key: str) -> str:
    """Map a short alias or dotted path to its dotted path, or fail with a suggestion."""
    if key in FIELDS:
        return FIELDS[key].path
    if key in ALIASES:
        return ALIASES[key]
    options = sorted(set(ALIASES) | set(FIELDS))
    raise UserError(f"unknown key {key!r}{_did_you_mean(key, options)}; "
                    f"known keys: {', '.join(sorted(ALIASES))} (or their dotted paths, e.g. model.d_model)")


def coerce(key: str, value: Scalar, seeds_count: bool = False) -> list[Scalar]:
    """Type-check and domain-check one value for the field behind ``key``; returns a list of values
    (``seeds=N`` expands to N seeds)."""
    path = resolve_key(key)
    field = FIELDS[path]
    shown = f"{key}={value}"
    if field.kind == "bool":
        if not isinstance(value, bool):
            raise UserError(f"{shown}: expected true or false")
        return [value]
    if field.kind == "choice":
        if not isinstance(value, str) or value not in field.choices:
            hint = _did_you_mean(str(value), field.choices)
            raise UserError(f"{shown}: not accepted{hint}; accepted: {', '.join(field.choices)}")
        return [value]
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
        return list(range(int(value)))
    if field.check is not None:
        accepted = field.check(value)
        if accepted is not None:
            raise UserError(f"{shown}: out of range; expected {accepted}")
    return [value]


# ----------------------------------------------------------------------------------------------------
# The resolved sweep.


@dataclass(frozen=True)
class Run:
    """One point of the grid: its group, its per-model hyperparameters and every field value."""

    run_id: int
    group: int
    values: tuple[tuple[str, Scalar], ...]

    def get(self, path: str) -> Scalar:
        return dict(self.values)[path]


@dataclass
class Sweep:
    """A resolved sweep: fixed field values, the swept axes in order, and the grid."""

    values: dict[str, list[Scalar]]
    axes: list[str]
    name: str = "default"

    def points(self) -> list[dict[str, Scalar]]:
        fixed = {k: v[0] for k, v in self.values.items() if k not in self.axes}
        grid = itertools.product(*(self.values[a] for a in self.axes))
        return [fixed | dict(zip(self.axes, combo)) for combo in grid]

    def groups(self) -> list[tuple[GroupConfig, list[Run]]]:
        """Split the grid into static groups, in order of first appearance. run_id follows grid order."""
        groups: dict[GroupConfig, list[dict[str, Scalar]]] = {}
        order: list[tuple[int, dict[str, Scalar]]] = []
        for point in self.points():
            g = group_config(point)
            groups.setdefault(g, []).append(point)
            order.append((list(groups).index(g), point))
        out: list[tuple[GroupConfig, list[Run]]] = [(g, []) for g in groups]
        for run_id, (gi, point) in enumerate(order):
            out[gi][1].append(Run(run_id, gi, tuple(sorted(point.items()))))
        return out

    def n_runs(self) -> int:
        return math.prod(len(self.values[a]) for a in self.axes)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "axes": self.axes, "values": self.values}

    def fingerprint(self) -> str:
        """Hash of everything that decides the results: two sweeps with equal fingerprints are the same."""
        canon = json.dumps({"axes": self.axes, "values": self.values}, sort_keys=True)
        return hashlib.sha256(canon.encode()).hexdigest()[:16]


def group_config(point: dict[str, Scalar]) -> GroupConfig:
    def build(cls: type, prefix: str) -> Any:
        return cls(**{f.name: point[f"{prefix}.{f.name}"] for f in dataclasses.fields(cls)})

    return GroupConfig(build(TaskConfig, "task"), build(ModelConfig, "model"), build(TrainConfig, "train"))


def is_prime(n: int) -> bool:
    return n >= 2 and all(n % d for d in range(2, int(math.isqrt(n)) + 1))


def n_train_of(frac: float, n_pairs: int) -> int:
    """round(frac * n_pairs), rounding halves up (not Python's banker's rounding)."""
    return int(math.floor(frac * n_pairs + 0.5))


def batch_size_of(train: TrainConfig, n_train: int) -> int | None:
    """Pairs per model per step, or None for full batch. ``auto`` is Power et al.'s min(512, n_train/2)."""
    if train.batch_size == "full":
        return None
    if train.batch_size == "auto":
        return max(1, min(512, n_train // 2))
    return int(train.batch_size)


def check_point(point: dict[str, Scalar]) -> None:
    """Cross-field checks on one grid point."""
    from grokjax.tasks import n_pairs_of  # local: tasks imports config

    d_model, n_heads = point["model.d_model"], point["model.n_heads"]
    if d_model % n_heads:
        raise UserError(f"d_model={d_model} is not divisible by n_heads={n_heads}; "
                        f"choose d_model a multiple of n_heads")
    op, p = point["task.op"], point["task.p"]
    if op in OPS_NEEDING_PRIME and not is_prime(int(p)):
        raise UserError(f"p={p} is not prime, but op={op} needs inverses mod p; use a prime such as 97 or 113")
    n_pairs = n_pairs_of(str(op), int(p))
    n_train = n_train_of(float(point["hp.frac"]), n_pairs)
    if n_train < 1 or n_train >= n_pairs:
        raise UserError(f"frac={point['hp.frac']} leaves {n_train} of {n_pairs} pairs for training; "
                        f"both the train and the validation split need at least one pair")
    batch = batch_size_of(group_config(point).train, n_train)
    if batch is not None and batch > n_train:
        raise UserError(f"batch_size={batch} is larger than the train split ({n_train} pairs at "
                        f"frac={point['hp.frac']}); use batch_size<={n_train} or batch_size=full")


def defaults() -> dict[str, list[Scalar]]:
    return {path: [f.default] for path, f in FIELDS.items()}


def _apply(values: dict[str, list[Scalar]], axes: list[str], key: str, parsed: list[Scalar],
           is_axis: bool) -> None:
    path = resolve_key(key)
    seeds_count = key == "seeds" and not is_axis
    out: list[Scalar] = []
    for v in parsed:
        out += coerce(key, v, seeds_count=seeds_count)
    values[path] = out
    if path in axes:
        axes.remove(path)
    if is_axis or len(out) > 1:
        axes.append(path)


def _apply_preset(values: dict[str, list[Scalar]], axes: list[str], preset: dict[str, Any]) -> None:
    for path, v in preset.items():
        _apply(values, axes, path, list(v) if isinstance(v, list) else [v], isinstance(v, list))


def find_config(name: str) -> Path | None:
    """A TOML path as given, or ``sweeps/NAME.toml`` in the working directory or beside the package."""
    candidates = [Path(name)]
    if not name.endswith(".toml"):
        for root in (Path.cwd(), Path(__file__).resolve().parent.parent):
            candidates.append(root / "sweeps" / f"{name}.toml")
    return next((c for c in candidates if c.is_file()), None)


def named_sweeps() -> list[str]:
    names = set(PRESETS)
    for root in (Path.cwd(), Path(__file__).resolve().parent.parent):
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


def build_sweep(config: str | None = None, overrides: Iterable[str] = ()) -> Sweep:
    """Resolve ``[CONFIG] key=value ...`` into a validated Sweep. Raises UserError on any bad input."""
    values, axes = defaults(), []
    name = config or "default"
    if config is None:
        _apply_preset(values, axes, PRESETS["default"])
    else:
        path = find_config(config)
        if path is not None:
            for key, (parsed, is_axis) in load_toml(path).items():
                _apply(values, axes, key, parsed, is_axis)
            name = path.stem
        elif config in PRESETS:
            _apply_preset(values, axes, PRESETS[config])
        else:
            raise UserError(f"no sweep file or preset named {config!r}{_did_you_mean(config, named_sweeps())}; "
                            f"accepted: a .toml path or one of {', '.join(named_sweeps())}")
    seen: set[str] = set()
    for item in overrides:
        if "=" not in item:
            raise UserError(f"argument {item!r} is not key=value; e.g. wd=0.1 or seeds=4")
        key, text = item.split("=", 1)
        key = key.strip()
        if not key:
            raise UserError(f"argument {item!r} has no key before '='")
        path = resolve_key(key)
        if path in seen:
            raise UserError(f"{key} is given twice; give each key once (use a list to sweep it)")
        seen.add(path)
        parsed, is_axis = parse_expression(key, text)
        _apply(values, axes, key, parsed, is_axis)
    sweep = Sweep(values, axes, name)
    for point in sweep.points():
        check_point(point)
    return sweep

"""The resolved sweep: field values, the swept axes, the grid, its static groups, cross-field checks.

Fields given several values are axes of a cartesian grid. Per-model numeric fields (``hp.*``) are
vmapped arrays inside one compiled program; every other field is structural and splits the grid into
groups, each compiled once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

import numpy as np

from grokjax.config.choices import OPS_NEEDING_PRIME, OPS_WITH_EXCLUDED, OPS_WITH_FOURIER
from grokjax.config.fields import FIELDS, SHORT_NAMES
from grokjax.config.presets import find_config, named_sweeps, read_sweep_file
from grokjax.config.structure import GroupConfig, ModelConfig, Scalar, TaskConfig, TrainConfig
from grokjax.errors import UserError
from grokjax.grid.design import check_design
from grokjax.grid.grammar import LOGRANGE_POINTS, MAX_AXIS_VALUES, coerce, did_you_mean, parse_expression, resolve_key
from grokjax.tasks.tables import n_pairs_of

MAX_RUNS = 1_000_000  # runs per sweep, refused before the grid is enumerated
MAX_PAIRS = 4_000_000  # pairs in a task table (p <= 2000), refused before the table is built


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
    """A resolved sweep: fixed field values, the swept axes in order, and the grid. With ``arms`` (each a
    set of key -> value, e.g. Grokfast's baseline and filter arms) the grid is the union over the arms,
    each arm's values replacing the fixed ones, crossed with the common axes."""

    values: dict[str, list[Scalar]]
    axes: list[str]
    name: str = "default"
    arms: list[dict[str, Scalar]] = dataclasses.field(default_factory=list)

    @property
    def swept(self) -> list[str]:
        """The keys whose value differs between runs: the axes, then the keys the arms set."""
        return self.axes + list(dict.fromkeys(k for arm in self.arms for k in arm if k not in self.axes))

    def points(self, crossing: Callable[[str], bool] | None = None) -> Iterator[dict[str, Scalar]]:
        """The grid's points in run_id order. With ``crossing``, only the axes it accepts are crossed (the
        others stay at their first value): a projection of the grid that keeps the order of first
        appearance, for checks and counts that read only those keys."""
        fixed = {k: v[0] for k, v in self.values.items() if k not in self.axes}
        axes = [a for a in self.axes if crossing is None or crossing(a)]
        fixed |= {a: self.values[a][0] for a in self.axes if a not in axes}
        for arm in self.arms or [{}]:
            for combo in itertools.product(*(self.values[a] for a in axes)):
                yield fixed | arm | dict(zip(axes, combo))

    def group_sizes(self) -> list[tuple[GroupConfig, int, float]]:
        """Each static group with its number of runs and its largest frac, in order of first appearance,
        without enumerating the per-model axes (a dry run of a million runs stays instant)."""
        crossed = lambda a: not FIELDS[a].per_model or a == "hp.frac"  # noqa: E731
        repeat = math.prod(len(self.values[a]) for a in self.axes if not crossed(a))
        out: dict[GroupConfig, list[float]] = {}
        for point in self.points(crossed):
            count_frac = out.setdefault(group_config(point), [0, 0.0])
            count_frac[0] += repeat
            count_frac[1] = max(count_frac[1], float(point["hp.frac"]))
        return [(g, int(n), frac) for g, (n, frac) in out.items()]

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
        return math.prod(len(self.values[a]) for a in self.axes) * max(len(self.arms), 1)

    def to_json(self) -> dict[str, Any]:
        arms = {"grid_axes": self.axes, "arms": self.arms} if self.arms else {}
        return {"name": self.name, "axes": self.swept, "values": self.values, **arms}

    def fingerprint(self) -> str:
        """Hash of everything that decides the results: two sweeps with equal fingerprints are the same."""
        arms = {"arms": self.arms} if self.arms else {}
        canon = json.dumps({"axes": self.axes, "values": self.values, **arms}, sort_keys=True)
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
    d_model, n_heads = point["model.d_model"], point["model.n_heads"]
    if point["model.arch"] == "transformer" and d_model % n_heads:
        raise UserError(f"d_model={d_model} is not divisible by n_heads={n_heads}; "
                        f"choose d_model a multiple of n_heads")
    op, p = point["task.op"], point["task.p"]
    measures = str(point["train.measures"]).split("+")
    if point["task.dataset"] == "digits":
        if point["model.arch"] != "mlp":
            raise UserError(f"dataset=digits needs arch=mlp (64 real-valued inputs, no tokens), not "
                            f"arch={point['model.arch']}")
        if "fourier" in measures or "excluded" in measures:
            raise UserError("measures=fourier and excluded are defined for the mod-p tables, not dataset=digits; "
                            "use measures=norms or none")
    elif op in OPS_NEEDING_PRIME and not is_prime(int(p)):
        raise UserError(f"p={p} is not prime, but op={op} needs inverses mod p; use a prime such as 97 or 113")
    if "fourier" in measures and op not in OPS_WITH_FOURIER and point["task.dataset"] != "digits":
        raise UserError(f"measures=fourier needs a mod-p task (op={op} has no Fourier basis of Z_p); drop "
                        f"fourier for op={op}")
    if "excluded" in measures and op not in OPS_WITH_EXCLUDED:
        raise UserError(f"measures=excluded is defined for op=add and op=sub (directions of a+b or a-b), "
                        f"not op={op}")
    if "excluded" in measures and (point["task.tokens"] == 4 or point["task.nonzero_y"]):
        raise UserError("measures=excluded needs the full p x p table of a b = (tokens=3, nonzero_y=false); "
                        "drop excluded from measures")
    n_pairs = n_pairs_of(str(op), int(p), bool(point["task.nonzero_y"]), str(point["task.dataset"]))
    if n_pairs > MAX_PAIRS:
        raise UserError(f"p={p}: the table of op={op} would hold {n_pairs:,} pairs; at most {MAX_PAIRS:,} "
                        f"(p <= {math.isqrt(MAX_PAIRS):,}) fit a task table")
    n_train = n_train_of(float(point["hp.frac"]), n_pairs)
    if n_train < 1 or n_train >= n_pairs:
        raise UserError(f"frac={point['hp.frac']} leaves {n_train} of {n_pairs} pairs for training; "
                        f"both the train and the validation split need at least one pair")
    every, chunk = point["train.snapshot_every"], min(point["train.chunk_steps"], point["train.steps"])
    if every and every % chunk:
        raise UserError(f"snapshot_every={every}: parameters are kept between chunks, so it must be a multiple "
                        f"of chunk_steps={chunk}; use e.g. snapshot_every={chunk * max(1, round(every / chunk))}")
    _check_warm(point)
    batch = batch_size_of(group_config(point).train, n_train)
    if batch is not None and batch > n_train:
        raise UserError(f"batch_size={batch} is larger than the train split ({n_train} pairs at "
                        f"frac={point['hp.frac']}); use batch_size<={n_train} or batch_size=full")


def _check_warm(point: dict[str, Scalar]) -> None:
    """Warm starts: init_run needs init_from (a grid may cross init_run=-1, a fresh start, with warm ones)."""
    if point["hp.init_run"] >= 0 and not point["train.init_from"]:
        raise UserError(f"init_run={point['hp.init_run']}: needs init_from=DIR, the results directory whose kept "
                        f"parameters the run starts from")


def _check_effect(key: str, text: str, values: dict[str, list[Scalar]]) -> None:
    """Refuse a key the user gave that acts nowhere in this grid (``momentum`` with adamw only, say): it would
    silently train identical runs. A sweep file's own values are not checked."""
    path = resolve_key(key)
    if path == "train.batching" and all(v == "full" for v in values["train.batch_size"]):
        raise UserError(f"{key}={text}: has no effect with batch_size=full (every step takes the whole train "
                        f"split); it acts only with minibatches (batch_size=auto or a number; or drop {key})")
    acts_with = FIELDS[path].acts_with
    if acts_with is None or any(v in accepted for other, accepted in acts_with for v in values[other]):
        return
    have = " ".join(f"{SHORT_NAMES[o]}={shown_value(values[o])}" for o in dict.fromkeys(o for o, _ in acts_with))
    needs = " or ".join(f"{SHORT_NAMES[o]}={'|'.join(map(str, a))}" for o, a in acts_with)
    raise UserError(f"{key}={text}: has no effect with {have}; it acts only with {needs} (give that too, or "
                    f"drop {key})")


def shown_value(values: list[Scalar]) -> str:
    """A key's values as typed: 0.01, true, [0,0.1,0.3,1]."""
    text = [str(v).lower() if isinstance(v, bool) else f"{v:g}" if isinstance(v, float) else str(v) for v in values]
    return text[0] if len(text) == 1 else "[" + ",".join(text) + "]"


def changed_settings(sweep: "Sweep") -> str:
    """The fixed keys whose values differ from the built-in defaults, as key=value, and the swept keys."""
    fixed = [f"{SHORT_NAMES[k]}={shown_value(v)}" for k, v in sweep.values.items()
             if k not in sweep.swept and v != [FIELDS[k].default]]
    swept = [f"{SHORT_NAMES[k]}={shown_value(sweep.values[k])}" for k in sweep.axes]
    arms = "".join(f"; arm {i + 1}: " + " ".join(f"{SHORT_NAMES[k]}={shown_value([v])}" for k, v in arm.items())
                   for i, arm in enumerate(sweep.arms))
    return (f"settings: {' '.join(fixed) or '(the built-in defaults)'}; swept: {' '.join(swept) or 'nothing'}"
            + arms)


def defaults() -> dict[str, list[Scalar]]:
    return {path: [f.default] for path, f in FIELDS.items()}


def _apply(values: dict[str, list[Scalar]], axes: list[str], key: str, parsed: list[Scalar],
           is_axis: bool, text: str | None = None) -> None:
    """Set one key. ``text`` is what the user typed after ``key=`` (echoed in errors)."""
    path = resolve_key(key)
    seeds_count = key == "seeds" and not is_axis
    out: list[Scalar] = []
    for v in parsed:
        shown = f"{key}={text}" if text is not None and (len(parsed) == 1 or seeds_count) else None
        out += coerce(key, v, seeds_count=seeds_count, shown=shown)
    seen: set[Scalar] = set()
    for v in out:
        if (v, type(v)) in seen:
            raise UserError(f"{key}={text if text is not None else out}: the value {v} appears twice; give each "
                            f"value once (a repeated seed would train the same run twice)")
        seen.add((v, type(v)))
    values[path] = out
    if path in axes:
        axes.remove(path)
    if is_axis or len(out) > 1:
        axes.append(path)


def apply_file(values: dict[str, list[Scalar]], axes: list[str], path: Path) -> list[tuple[str, str]]:
    """Apply a sweep file's keys (``config.presets.read_sweep_file``): strings in the sweep grammar, lists
    as axes. Returns the (key, text) of its expressions in the grammar."""
    typed = []
    for key, v in read_sweep_file(path).items():
        if key == "arms":
            continue  # read by build_sweep
        resolve_key(key)
        if isinstance(v, str):
            parsed, is_axis = parse_expression(key, v)
            typed.append((key, v.strip()))
        else:
            parsed, is_axis = (list(v), True) if isinstance(v, list) else ([v], False)
        _apply(values, axes, key, parsed, is_axis)
    return typed


def python_values(key: str, value: Any) -> tuple[list[Scalar], bool]:
    """A Python value for ``key`` as (values, is_axis): a list, tuple, range or 1-D NumPy array is an axis
    (``wd=np.logspace(-3, 1, 32)``); anything else one value (``seeds=16`` counts seeds, as on the CLI).
    NumPy scalars become Python ones; the values are checked like the command line's."""
    if isinstance(value, np.ndarray):
        if value.ndim > 1:
            raise UserError(f"{key}: a {value.ndim}-D array; give a 1-D array or a list of values")
        value = value.tolist() if value.ndim == 1 else value.item()
    if isinstance(value, (list, tuple, range)):
        items = [v.item() if isinstance(v, np.generic) else v for v in value]
        if not items:
            raise UserError(f"{key}=[]: empty list; give at least one value")
        if len(items) > MAX_AXIS_VALUES:
            raise UserError(f"{key}: {len(items):,} values; at most {MAX_AXIS_VALUES:,} values per key")
        if any(isinstance(v, (list, tuple, dict, np.ndarray)) for v in items):
            raise UserError(f"{key}={value!r}: lists hold plain values, not nested lists")
        return items, True
    if isinstance(value, np.generic):
        value = value.item()
    if not isinstance(value, (bool, int, float, str)):
        raise UserError(f"{key}={value!r}: expected a number, a string, a bool or a list of them")
    return [value], False


def _with_any_arm(values: dict[str, list[Scalar]], arms: list[dict[str, Scalar]]) -> dict[str, list[Scalar]]:
    """The values a key may meet in some arm (for the effect check of a key given outside the arms)."""
    out = {k: list(v) for k, v in values.items()}
    for arm in arms:
        for k, v in arm.items():
            out[k] = out[k] + [v] if v not in out[k] else out[k]
    return out


def parse_arm(arm: str | Mapping[str, Any], values: dict[str, list[Scalar]]) -> dict[str, Scalar]:
    """One arm, ``'grokfast=ema wd=0.005'`` (command line) or a mapping (sweep file, Python), as field path ->
    one checked value. Checked for an effect with the arm's own values in place."""
    items = ([tuple(x.split("=", 1)) if "=" in x else (x, None) for x in arm.split()] if isinstance(arm, str)
             else [(k, v) for k, v in arm.items()])
    if not items:
        raise UserError(f"--arm {arm!r}: empty; give key=value pairs, e.g. --arm 'grokfast=ema wd=0.005'")
    out: dict[str, Scalar] = {}
    scratch = {k: list(v) for k, v in values.items()}
    for key, text in items:
        if text is None:
            raise UserError(f"--arm {arm!r}: {key!r} is not key=value; e.g. --arm 'grokfast=ema wd=0.005'")
        path = resolve_key(key)
        if path in out:
            raise UserError(f"arm {arm!r}: {key} is given twice")
        if isinstance(text, str):
            parsed, is_axis = parse_expression(key, text)
        else:
            parsed, is_axis = python_values(key, text)
        if is_axis or len(parsed) != 1:
            raise UserError(f"arm {arm!r}: {key}={text} is several values; an arm sets one value per key (sweep "
                            f"a key for every arm with {key}=[...] outside the arms)")
        axes: list[str] = []
        _apply(scratch, axes, key, parsed, False, str(text))
        if len(scratch[path]) > 1:  # seeds=N counts N seeds
            raise UserError(f"arm {arm!r}: {key}={text} is {len(scratch[path])} seeds; an arm sets one value per "
                            f"key (for several seeds in every arm, give seeds={text} outside the arms; for one "
                            f"arm only, give it one arm per seed with seed=0, seed=1, ...)")
        out[path] = scratch[path][0]
    for key, text in items:
        _check_effect(key, str(text), scratch)
    return out


def _take_axes_from_arms(values: dict[str, list[Scalar]], axes: list[str], seen: set[str], name: str,
                         arms: list[dict[str, Scalar]], specs: list[Any]) -> None:
    """A key the sweep file sweeps and the arms set is no longer an axis: the arms give its values. Every arm
    must then set it (an arm that did not would silently take the file's first value, which nobody typed).
    A key swept on the command line and set by an arm is refused."""
    for p in dict.fromkeys(p for arm in arms for p in arm):
        if p in axes and p in seen:
            raise UserError(f"{SHORT_NAMES[p]} is both swept ({SHORT_NAMES[p]}=[...]) and set by an arm; "
                            f"set it in every arm, or sweep it outside the arms")
        if p in axes:
            unset = [i for i, arm in enumerate(arms) if p not in arm]
            if unset:
                i = unset[0]
                raise UserError(f"arm {i + 1} ({_arm_text(specs[i])}) leaves {SHORT_NAMES[p]} unset, which "
                                f"{name} sweeps ({SHORT_NAMES[p]}={shown_value(values[p])}) and another arm sets; "
                                f"set {SHORT_NAMES[p]} in every arm, or in none (then every arm crosses "
                                f"{name}'s {SHORT_NAMES[p]} values)")
            axes.remove(p)


def _arm_text(spec: Any) -> str:
    return spec if isinstance(spec, str) else " ".join(f"{k}={v}" for k, v in dict(spec).items())


def _check_duplicates(sweep: Sweep) -> None:
    """Refuse a grid that would train the same run twice: two arms that resolve to the same settings, or
    data_seed=-1 (the run's own seed) beside a data_seed equal to one of the seeds."""
    fixed = {k: v[0] for k, v in sweep.values.items() if k not in sweep.axes}
    seen: dict[tuple, int] = {}
    for i, arm in enumerate(sweep.arms):
        point = fixed | arm
        if "hp.data_seed" not in sweep.axes and point["hp.data_seed"] == -1 and "hp.seed" not in sweep.axes:
            point = point | {"hp.data_seed": point["hp.seed"]}
        key = tuple(sorted(point.items()))
        if key in seen:
            raise UserError(f"arms {seen[key] + 1} and {i + 1} resolve to the same settings "
                            f"({' '.join(f'{SHORT_NAMES[k]}={shown_value([v])}' for k, v in arm.items())}): "
                            f"they would train the same runs twice; drop one or make them differ")
        seen[key] = i
    for arm in sweep.arms or [{}]:
        point = fixed | arm
        seeds = sweep.values["hp.seed"] if "hp.seed" in sweep.axes else [point["hp.seed"]]
        data_seeds = sweep.values["hp.data_seed"] if "hp.data_seed" in sweep.axes else [point["hp.data_seed"]]
        same = sorted(set(seeds) & set(data_seeds) - {-1}) if -1 in data_seeds else []
        if same:
            raise UserError(f"data_seed={shown_value(data_seeds)} with seed={shown_value(seeds)}: data_seed=-1 "
                            f"means the run's own seed, so for seed={same[0]} data_seed=-1 and data_seed="
                            f"{same[0]} would train the same run twice; drop -1 or {same[0]} from data_seed")


def _check_continuous(given: list[tuple[str, str]], values: dict[str, list[Scalar]]) -> None:
    """A continuous range (logrange) is a design's to sample: a grid would train candidates nobody typed."""
    for key, text in given:
        if not text.startswith("logrange(") or values[resolve_key(key)] != parse_expression(key, text)[0]:
            continue  # not a range, or a file's range that the command line replaced
        if values["train.design"] == ["grid"]:
            raise UserError(f"{key}={text}: a continuous range is for design=boundary or law, which pick their "
                            f"runs from {LOGRANGE_POINTS} log-spaced candidates of it; for a grid give {key}=logspace(a,b,n)")


def build_sweep(config: str | None = None, overrides: Iterable[str] = (),
                settings: Mapping[str, Any] | None = None,
                arms: Iterable[str | Mapping[str, Any]] | None = None) -> Sweep:
    """Resolve ``[CONFIG] key=value ...`` (``overrides``: the command line's text), ``settings`` (Python
    values by key, see ``python_values``) and ``arms`` (each ``'key=value ...'`` or a mapping; given, they
    replace the sweep file's ``[[arms]]``) into a validated Sweep. Raises UserError on bad input."""
    values, axes = defaults(), []
    config = config or "default"
    path = find_config(config)
    if path is None:
        raise UserError(f"no sweep file or preset named {config!r}{did_you_mean(config, named_sweeps())}; "
                        f"accepted: a .toml path or one of {', '.join(named_sweeps())}")
    in_file = apply_file(values, axes, path)
    name, path_of_config = path.stem, path
    seen: set[str] = set()
    given: list[tuple[str, str]] = []  # (key as typed, what was typed): checked for an effect below
    for key, value in (settings or {}).items():
        path = resolve_key(key)
        if path in seen:
            raise UserError(f"{key} is given twice; give each key once (use a list to sweep it)")
        seen.add(path)
        parsed, is_axis = python_values(key, value)
        _apply(values, axes, key, parsed, is_axis, repr(value) if not is_axis else None)
        given.append((key, repr(value)))
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
        _apply(values, axes, key, parsed, is_axis, text.strip())
        given.append((key, text.strip()))
    arm_specs = list(arms) if arms is not None else read_sweep_file(path_of_config).get("arms", [])
    parsed_arms = [parse_arm(a, values) for a in arm_specs]
    _take_axes_from_arms(values, axes, seen, name, parsed_arms, arm_specs)
    arm_keys = {p for arm in parsed_arms for p in arm}
    for key, text in given:
        if resolve_key(key) not in arm_keys:
            _check_effect(key, text, values if not parsed_arms else _with_any_arm(values, parsed_arms))
    sweep = Sweep(values, axes, name, parsed_arms)
    n_runs = sweep.n_runs()
    if n_runs > MAX_RUNS:
        sizes = " x ".join(f"{SHORT_NAMES[a]}={len(values[a])}" for a in axes)
        raise UserError(f"the grid has {n_runs:,} runs ({sizes}); at most {MAX_RUNS:,} runs per sweep: "
                        f"split it into several sweeps")
    _check_duplicates(sweep)
    check_design(sweep)
    _check_continuous(in_file + given, values)
    checked: set[tuple] = set()
    for point in sweep.points(lambda a: not FIELDS[a].per_model or a == "hp.frac"):  # what check_point reads
        key = tuple(sorted(point.items()))
        if key not in checked:
            checked.add(key)
            check_point(point)
    return sweep

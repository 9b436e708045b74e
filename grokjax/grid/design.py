"""design=boundary|law over a grid: the swept number whose boundary is mapped, how many runs, the checks.

The grid's runs are the candidates. design=boundary maps the boundary along one swept per-model number x
(wd, lr, frac, ...; the seed axes only replicate): the first one typed. A second such axis makes it a
boundary curve, x* at each of that axis's values. design=law narrows the exponent of t_val ∝ wd^alpha, so
its one swept number is wd. A grid with more such axes, with arms, or with several compiled groups is
refused in one line, as is ``runs`` above the number of candidates.
"""

from __future__ import annotations

from grokjax.config.fields import ALIASES, FIELDS, SHORT_NAMES
from grokjax.errors import UserError

REPLICATES = ("hp.seed", "hp.data_seed")  # axes that repeat a point rather than move it
MIN_RUNS = 8


def moving_axes(names: list[str]) -> list[str]:
    """The swept per-model numbers among the axes ``names`` (short names, as in results), seeds left out."""
    return [a for a in names if a in ALIASES and FIELDS[ALIASES[a]].per_model and ALIASES[a] not in REPLICATES]


def design_axes(sweep) -> tuple[str, str | None]:
    """The dotted paths of the swept per-model number a design maps x* along (the first typed) and of the
    second one it maps x* at each value of, or None (``sweep``: grid.expand.Sweep)."""
    moving = [a for a in sweep.axes if FIELDS[a].per_model and a not in REPLICATES]
    if sweep.values["train.design"] == ["law"] and moving != ["hp.wd"]:
        shown = ", ".join(SHORT_NAMES[a] for a in moving) or "nothing"
        raise UserError(f"design=law narrows the exponent of t_val ∝ wd^alpha, which grokjax fit fits along wd: "
                        f"sweep wd alone (with seeds, e.g. 'wd=logspace(-2,0.5,24)' seeds=8); this grid sweeps "
                        f"{shown}")
    if not 1 <= len(moving) <= 2:
        shown = ", ".join(SHORT_NAMES[a] for a in moving) or "none"
        raise UserError(f"design=boundary maps the boundary along one swept number (e.g. "
                        f"'wd=logspace(-3,1,32)' seeds=16), or a boundary curve over two (e.g. wd and frac); "
                        f"this grid sweeps {shown}: sweep one or two of wd, lr, frac, init_scale, ... (with "
                        f"seeds) or use design=grid")
    axis = moving[0]
    bad = [v for v in sweep.values[axis] if not float(v) > 0]
    if bad:
        raise UserError(f"design={sweep.values['train.design'][0]}: {SHORT_NAMES[axis]}={bad[0]!r}: the "
                        f"boundary is fitted in log {SHORT_NAMES[axis]} (the first swept number), so every value "
                        f"must be > 0")
    return axis, (moving[1] if len(moving) == 2 else None)


def design_runs(requested: int, n_candidates: int) -> int:
    """How many candidates a design trains: ``runs``, or by default a quarter of them (at least 8)."""
    return requested or min(n_candidates, max(MIN_RUNS, n_candidates // 4))


def design_slots(runs: int) -> int:
    """The slots a design fills at once (its space-filling start): a quarter of its runs, at least 2, so
    that three quarters of them are chosen from outcomes already seen."""
    return max(2, runs // 4)


def check_design(sweep) -> None:
    """Refuse a design the grid cannot carry (one line naming what to change)."""
    designs = sweep.values["train.design"]
    if designs == ["grid"]:
        return
    if len(designs) > 1 or "train.design" in sweep.axes:
        raise UserError("design is given several values; give one: design=grid, design=boundary or design=law")
    if sweep.arms:
        raise UserError(f"design={designs[0]} with arms: a design maps one grid; run each arm as its own sweep")
    groups = sweep.group_sizes()
    if len(groups) > 1:
        raise UserError(f"design={designs[0]}: the grid has {len(groups)} compiled groups (a structural key is "
                        f"swept); a design maps one group: sweep only per-model numbers")
    design_axes(sweep)
    runs, n = int(sweep.values["train.runs"][0]), sweep.n_runs()
    if runs > n:
        raise UserError(f"runs={runs}: the grid has only {n} candidate runs; accepted: 1 to {n} (0: a quarter)")

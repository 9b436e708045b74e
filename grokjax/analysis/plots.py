"""The wd-vs-grokking-time phase diagram, 2-D heatmaps and comparisons of sweeps. Figures are built as
``matplotlib.figure.Figure`` objects without pyplot, so importing this module never changes the backend
(a notebook keeps its own) and a figure is never left open in pyplot's registry.
Functions return Figures; ``store.outputs.save_figure`` writes them."""

from __future__ import annotations

import math
from typing import Any

import matplotlib
import matplotlib.ticker
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from grokjax.analysis.boundary import fit_boundaries
from grokjax.analysis.law import MIN_LAW_CELLS, TARGET_NAMES, Law, fit_law
from grokjax.analysis.survival import cells
from grokjax.config.schedule import THRESHOLD
from grokjax.config.structure import PER_MODEL_FIELDS

PHASE_COLORS = {"comprehension": "#cfe8cf", "grokking": "#fbe3b5", "memorization": "#f6c9c4",
                "confusion": "#dddddd", "diverged": "#c9c4f6"}
MANY_BANDS = 12  # more wd cells than this: their labels are drawn upright, so 32 or 64 stay readable
_FIXED_IN_TITLE = ("op", "p", "arch", "n_layers", "d_model", "n_heads", "d_mlp", "frac", "lr", "wd",
                   "batch_size", "steps", "init_scale")


def numeric_axes(fits: pd.DataFrame) -> list[str]:
    axes = [a for a in fits.attrs.get("axes", []) if a in PER_MODEL_FIELDS and a != "seed"]
    if "wd" in axes:
        axes.remove("wd")
        axes.insert(0, "wd")
    return axes or ["wd"]


def _facets(fits: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    structural = [a for a in fits.attrs.get("axes", []) if a not in PER_MODEL_FIELDS and a in fits.columns]
    if not structural:
        return [("", fits)]
    out = []
    for key, sub in fits.groupby(structural, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        sub = sub.copy()
        sub.attrs = fits.attrs
        out.append((", ".join(f"{a}={v}" for a, v in zip(structural, key)), sub))
    return out


def sweep_title(fits: pd.DataFrame) -> str:
    axes = set(fits.attrs.get("axes", []))
    mlp = "arch" in fits.columns and (fits["arch"] == "mlp").all()
    if mlp:  # an MLP has no heads, and no d_model unless it embeds its inputs
        axes |= {"n_heads"} | ({"d_model"} if "mlp_input" not in fits.columns or (fits["mlp_input"] != "embed").all()
                               else set())
    if "dataset" in fits.columns and (fits["dataset"] == "digits").all():  # no op, no modulus
        axes |= {"op", "p"}
    parts = [] if "dataset" not in fits.columns or (fits["dataset"] != "digits").all() else ["digits"]
    for col in _FIXED_IN_TITLE:
        if col in fits.columns and col not in axes and fits[col].nunique() == 1:
            parts.append(f"{col}={fits[col].iloc[0]}")
    n_seeds = fits["seed"].nunique() if "seed" in fits.columns else 1
    half = (len(parts) + 1) // 2
    return ("  ".join(parts[:half]) + "\n" + "  ".join(parts[half:])
            + f"  ({n_seeds} seed{'s' if n_seeds != 1 else ''})")


def _band_edges(keys: list[float]) -> list[float]:
    """Band boundaries on a log axis: halfway (geometric) between neighbours, the outer ones half a
    neighbour gap beyond the first and last value, so a band never reaches past the data by more."""
    if len(keys) == 1:
        return [keys[0] / 1.5, keys[0] * 1.5]
    mids = [math.sqrt(a * b) for a, b in zip(keys[:-1], keys[1:])]
    return [keys[0] ** 2 / mids[0], *mids, keys[-1] ** 2 / mids[-1]]


def _seed_jitter(fits: pd.DataFrame, spread: float) -> np.ndarray:
    seeds = fits["seed"].to_numpy() if "seed" in fits.columns else np.zeros(len(fits))
    uniq = np.unique(seeds)
    return spread * (np.searchsorted(uniq, seeds) - (len(uniq) - 1) / 2) / max(len(uniq), 1)


def _draw_cells(ax: Axes, fits: pd.DataFrame, cell: pd.DataFrame, x_name: str, pos: dict[float, float],
                log_x: bool, thr: float) -> None:
    """Seeds' t_train and t_val, censored counts at the budget, KM medians of t_val and of the delay with
    their intervals, majority-phase bands labelled with the grokked fraction, at the x positions ``pos``."""
    cell = cell[cell[x_name].astype(float).isin(list(pos))]
    x = np.array([pos[float(v)] for v in fits[x_name]])
    j = _seed_jitter(fits, 0.12)
    xj = x * 10 ** j if log_x else x + j * 2
    budget = float(fits["budget"].max())
    keys = sorted(pos)
    edges = (_band_edges([pos[k] for k in keys]) if log_x  # linear: unit-wide bands around 0, 1, 2, ...
             else [pos[k] - 0.5 for k in keys] + [pos[keys[-1]] + 0.5])
    for i, k in enumerate(keys):
        row = cell[cell[x_name] == k]
        if len(row):
            r = row.iloc[0]
            ax.axvspan(edges[i], edges[i + 1], color=PHASE_COLORS[r["phase"]], alpha=0.6, lw=0, zorder=0)
            n_grok = int(r["n_grokking"] + r["n_comprehension"])
            many = len(keys) > MANY_BANDS  # narrow bands: "k/n" upright (the legend says what it counts)
            if i % _label_every(len(keys)) == 0:
                ax.text(pos[k], 0.99, f"{n_grok}/{int(r['n_seeds'])}" + ("" if many else "\ngrokked"),
                        transform=ax.get_xaxis_transform(), ha="center", va="top", fontsize=6 if many else 7,
                        color="#444444", rotation=90 if many else 0)
    if len(keys) > MANY_BANDS:
        thinned = f", one band in {_label_every(len(keys))}" if _label_every(len(keys)) > 1 else ""
        ax.plot([], [], " ", label=f"k/n at the top: seeds that grokked, per band{thinned}")
    ax.scatter(xj, fits["t_train"], marker="o", facecolors="none", edgecolors="tab:blue", s=28, zorder=3,
               label=f"t_train per seed (train acc ≥ {thr:g})")
    grokked = ~fits["censored"].to_numpy(bool)
    ax.scatter(xj[grokked], fits["t_val"][grokked], marker="^", color="tab:red", s=34, zorder=3,
               label=f"t_val per seed (val acc ≥ {thr:g}, kept)")
    cens = ~grokked & (fits["phase"] != "diverged").to_numpy()
    if cens.any():  # beside the band's centre, where the medians and their intervals are drawn
        counts = pd.Series(x[cens]).value_counts()
        gap = min(np.diff(np.log10(keys)), default=1.0) if log_x else 1.0  # the narrowest band, in decades
        cx = counts.index.to_numpy(float) * 10 ** min(0.07, 0.3 * gap) if log_x else counts.index.to_numpy(float) + 0.25
        ax.scatter(cx, np.full(len(counts), budget * 1.25), marker=r"$\uparrow$", color="tab:red", s=110,
                   zorder=5, label="censored: no t_val within budget (count)")
        many = len(keys) > MANY_BANDS
        every = _label_every(len(keys))
        shown = {v for v in counts.index if [pos[k] for k in keys].index(v) % every == 0}  # as the band labels
        for xv, v, n in zip(cx, counts.index, counts.to_numpy()):  # narrow bands: the count under its arrow, upright
            if v not in shown:
                continue
            ax.annotate(f"×{n}", (xv, budget * 1.25), xytext=(0, -6) if many else (6, -3), textcoords="offset points",
                        fontsize=6 if many else 7, color="tab:red", rotation=90 if many else 0,
                        ha="center" if many else "left", va="top" if many else "baseline")
    n_seeds = int(cell["n_seeds"].max()) if len(cell) else 0
    open_said = False
    for col, lo, hi, marker, face, name in (
            ("median_t_val", "ci_low", "ci_high", "s", "black", "t_val"),
            ("median_delay", "delay_ci_low", "delay_ci_high", "D", "white", "delay")):
        finite = cell[np.isfinite(cell[col].astype(float))]
        if not len(finite):
            continue
        cx = np.array([pos[float(v)] for v in finite[x_name]])
        shift = 10 ** 0.03 if (log_x and name == "delay") else 1.0
        mid, low, high = (finite[c].to_numpy(float) for c in (col, lo, hi))
        none = np.isnan(low) | np.isnan(high)  # fewer than 3 seeds: no interval, a median alone
        open_top = np.isinf(high)  # the interval reaches past the budget: drawn open, an arrow up
        top, low = np.where(open_top | none, mid, high), np.where(none, mid, low)
        what = (f"95% bootstrap CI over {n_seeds} seeds" if not none.all()
                else f"no interval from {n_seeds} seed{'s' if n_seeds != 1 else ''} (3 needed)")
        ax.errorbar(cx * shift, mid, yerr=[mid - low, top - mid], fmt=marker, color="black", mfc=face, ms=6,
                    capsize=4 if not none.all() else 0, zorder=4, label=f"KM median {name}, {what}")
        for xv, m in zip(cx[open_top] * shift, mid[open_top]):
            ax.annotate("", xy=(xv, budget * 1.6), xytext=(xv, m), zorder=4,
                        arrowprops=dict(arrowstyle="->", color="black", lw=1, ls="--"))
        if open_top.any() and not open_said:  # one legend entry for both medians' open intervals
            ax.plot([], [], color="black", ls="--", lw=1, label="CI open above the budget (dashed arrow)")
            open_said = True
    ax.axhline(budget, color="gray", lw=0.8, ls=":", zorder=1, label=f"budget ({budget:.0f} steps)")


def _label_every(n_bands: int) -> int:
    """Label every k-th band so that at most ~36 labels share the axis (64 wd cells: every second one)."""
    return max(1, math.ceil(n_bands / 36))


def _diagram_1d(ax: Axes, fits: pd.DataFrame, x_name: str, laws: list[Law] | None,
                zero_ax: Axes | None = None) -> Axes:
    """The 1-D phase diagram on ``ax`` (log x); runs at x = 0 go to ``zero_ax``, their own panel. Without
    runs at x > 0 only the x = 0 panel is drawn (``ax`` itself when there is no ``zero_ax``) and ``ax`` is
    hidden. Returns the panel that carries the legend."""
    thr = float(fits.attrs.get("threshold", THRESHOLD))
    cell = cells(_with_axes(fits.copy(), [x_name]))
    positive = fits[fits[x_name] > 0]
    if len(positive):
        pos = {float(v): float(v) for v in positive[x_name].unique()}
        _draw_cells(ax, positive, cell, x_name, pos, True, thr)
        edges = _band_edges(sorted(pos))
        ax.set_xlim(edges[0], edges[-1])
    zero = fits[fits[x_name] == 0]
    if not len(positive):  # every run at x = 0: no log axis to draw
        if zero_ax is None:
            zero_ax = ax
        else:
            ax.set_visible(False)
    if zero_ax is not None and len(zero):
        _draw_cells(zero_ax, zero, cell, x_name, {0.0: 0.0}, False, thr)
        zero_ax.set_xticks([0.0], [f"{x_name}=0"])
        zero_ax.set_xlim(-0.5, 0.5)
        zero_ax.set_yscale("log")
        zero_ax.set_ylabel("step (t_train, t_val, delay = t_val − t_train)")
        zero_ax.grid(True, which="major", alpha=0.3)
    budget = float(fits["budget"].max())
    shown = np.concatenate([fits[c].to_numpy(float) for c in ("t_train", "t_val")] +
                           [cell[c].to_numpy(float) for c in ("median_delay", "delay_ci_low")])
    shown = shown[np.isfinite(shown) & (shown > 0)]
    y_lo = float(shown.min()) / 1.5 if shown.size else 1.0
    y_hi = budget * 3  # room above the budget for the grokked-fraction labels
    notes = []
    for law, style in zip(laws or [], ("--", ":")):
        if law.fitted:
            line = np.geomspace(law.x_min, law.x_max, 50)
            ax.plot(line, np.exp(law.c) * line**law.alpha, style, color="black", lw=1.2, zorder=2,
                    label=f"law {TARGET_NAMES[law.target]} ∝ {law.x_name}^{law.alpha:.2f} "
                          + (f"[{law.alpha_low:.2f}, {law.alpha_high:.2f}]" if math.isfinite(law.alpha_low)
                             else f"[n/a: {law.min_seeds} seed(s) in a cell]") + f", {law.n_cells} cells")
        else:
            notes.append(f"{TARGET_NAMES[law.target]}: no law ({law.n_cells} grokked cell(s) < {MIN_LAW_CELLS})")
    if not len(positive):
        zero_ax.set_ylim(y_lo, y_hi)
        for note in notes:
            zero_ax.plot([], [], " ", label=note)
        return zero_ax
    for note in notes:  # said in the legend, where it cannot hide data
        ax.plot([], [], " ", label=note)
    ax.set_ylim(y_lo, y_hi)
    ax.set_xscale("log")
    ax.set_yscale("log")
    _ticks_at(ax, sorted(pos))
    ax.set_xlabel(x_name)
    if zero_ax is None or not len(zero):
        ax.set_ylabel("step (t_train, t_val, delay = t_val − t_train)")
    ax.grid(True, which="major", alpha=0.3)
    return ax


def _ticks_at(ax: Axes, values: list[float], most: int = 12) -> None:
    """x ticks at the swept values themselves when there are few, else at 1, 2 and 5 per decade."""
    if len(values) <= most:
        ax.xaxis.set_major_locator(matplotlib.ticker.FixedLocator(values))
        ax.xaxis.set_major_formatter(matplotlib.ticker.FixedFormatter([f"{v:.3g}" for v in values]))
    else:
        ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1, 2, 5)))
        ax.xaxis.set_major_formatter(matplotlib.ticker.LogFormatterSciNotation(labelOnlyBase=False))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.tick_params(axis="x", labelsize=8)


def _with_axes(df: pd.DataFrame, axes: list[str]) -> pd.DataFrame:
    df.attrs = dict(df.attrs, axes=axes)
    return df


def _candidates(fits: pd.DataFrame, axes: list[str]) -> pd.DataFrame | None:
    """The grid's candidate points over ``axes`` with their run counts (fits.attrs["candidates"]), or None."""
    cand = fits.attrs.get("candidates")
    if not cand or sorted(cand["axes"]) != sorted(axes):
        return None
    return pd.DataFrame(cand["cells"], columns=[*cand["axes"], "n"])


def _heatmap(ax: Axes, fits: pd.DataFrame, x_name: str, y_name: str, fig: Figure,
             boundaries: list[Any] = ()) -> None:
    """Cells of log median t_val over two swept numbers, each labelled; candidates never run (a design's)
    marked so; the boundary curves x*(y) and y*(x) with their intervals."""
    cell = cells(_with_axes(fits.copy(), [x_name, y_name]))
    cand = _candidates(fits, [x_name, y_name])
    pts = cand if cand is not None else cell
    xv, yv = sorted(pts[x_name].unique()), sorted(pts[y_name].unique())
    grid = np.full((len(yv), len(xv)), np.nan)
    for _, r in cell.iterrows():
        grid[yv.index(r[y_name]), xv.index(r[x_name])] = (np.log10(r["median_t_val"])
                                                           if np.isfinite(r["median_t_val"]) else np.nan)
    im = ax.imshow(grid, origin="lower", aspect="auto", cmap="viridis_r")
    for _, r in cell.iterrows():
        n_grok = int(r["n_grokking"] + r["n_comprehension"])
        t_val = f"{r['median_t_val']:.0f}" if np.isfinite(r["median_t_val"]) else "-"
        ax.text(xv.index(r[x_name]), yv.index(r[y_name]), f"{t_val}\n{n_grok}/{int(r['n_seeds'])}\n{r['phase'][:4]}",
                ha="center", va="center", fontsize=7, color="white" if np.isfinite(r["median_t_val"]) else "black")
    ran = set(zip(cell[x_name], cell[y_name]))
    for x, y in zip(pts[x_name], pts[y_name]):
        if (x, y) not in ran:
            ax.text(xv.index(x), yv.index(y), "not\nrun", ha="center", va="center", fontsize=6, color="#888888")
    for b in boundaries:
        _draw_curve(ax, b, x_name, y_name, xv, yv)
    ax.set_xticks(range(len(xv)), [f"{v:g}" for v in xv], rotation=45)
    ax.set_yticks(range(len(yv)), [f"{v:g}" for v in yv])
    ax.set_xlabel(x_name)
    ax.set_ylabel(y_name)
    ax.set_title("cell: median t_val, grokked/run, phase" + ("; not run: a candidate the design left"
                                                              if len(ran) < len(pts) else ""), fontsize=8)
    fig.colorbar(im, ax=ax, label="log10 median t_val (blank: censored or not run)")
    if boundaries:
        handles, labels = ax.get_legend_handles_labels()
        unique = dict(zip(labels, handles))
        ax.legend(unique.values(), unique.keys(), fontsize=7, loc="upper left", bbox_to_anchor=(1.25, 1.0))


def _draw_curve(ax: Axes, b: Any, x_name: str, y_name: str, xv: list[float], yv: list[float]) -> None:
    """One point of a boundary curve on the heatmap's cell-index axes: x* at its y (a horizontal 95% bar),
    or y* at its x (a vertical one), placed by interpolating in log value between the cells."""
    def at(v: float, values: list[float]) -> float:
        return float(np.interp(np.log10(v), np.log10(values), np.arange(len(values))))
    if b.by is None or min(xv[0], yv[0]) <= 0:
        return
    e = b.estimate
    if b.x_name == x_name and b.by == y_name:
        c, lo, hi, y = at(e.x_star, xv), at(e.low, xv), at(e.high, xv), yv.index(b.by_value)
        ax.errorbar([c], [y], xerr=[[c - lo], [hi - c]], fmt="o", color="crimson", ms=4, capsize=2, zorder=3,
                    label=f"{x_name}* at each {y_name} (95%)")
    elif b.x_name == y_name and b.by == x_name:
        c, lo, hi, x = at(e.x_star, yv), at(e.low, yv), at(e.high, yv), xv.index(b.by_value)
        ax.errorbar([x], [c], yerr=[[c - lo], [hi - c]], fmt="s", color="#1f3b99", ms=4, capsize=2, zorder=3,
                    label=f"{y_name}* at each {x_name} (95%)")


def _mark_unsampled(ax: Axes, fits: pd.DataFrame, x_name: str) -> None:
    """Candidate values of ``x_name`` no run was trained at (a design's), as grey marks along the bottom."""
    cand = _candidates(fits, [x_name])
    if cand is None:
        return
    left = sorted(set(cand[x_name]) - set(fits[x_name]))
    left = [v for v in left if v > 0]
    if left:
        y = ax.get_ylim()[0] * 1.25
        ax.plot(left, [y] * len(left), "x", color="#888888", ms=5, zorder=3,
                label=f"candidate not run ({len(left)} of {cand[x_name].nunique()} values)")


def _draw_boundary(ax: Axes, boundaries: list[Any], x_name: str) -> None:
    """The phase boundary x* (an ``analysis.boundary.Boundary`` of one axis) of ``x_name`` as a line and its
    credible interval as a span, on a log x axis."""
    for b in boundaries:
        if b.by is not None or b.x_name != x_name or ax.get_xscale() != "log":
            continue
        e = b.estimate
        ax.axvspan(e.low, e.high, color="crimson", alpha=0.10, zorder=0)
        ax.axvline(e.x_star, color="crimson", lw=1.5, zorder=2,
                   label=f"boundary {b.x_name}* = {e} (95%), P(grokked by {b.steps}) = 1/2; "
                         f"{e.n} of {b.n_candidates} candidates run")


def plot_phase_diagram(fits: pd.DataFrame, ax: Axes | None = None, report: Any = None) -> Figure:
    """The phase diagram of a fitted sweep (``grokjax.fit`` output; ``report``: its analysis.report.Report,
    computed when not given).

    One numeric axis (wd, or the first swept one): x = that value (log; wd = 0 in a panel of its own),
    y = steps (log): every seed's t_train and t_val, censored runs counted at the budget, Kaplan-Meier
    medians of t_val and of the delay with bootstrap intervals, bands shaded by the measured majority phase
    and labelled with the grokked fraction, the fitted laws of t_val and of the delay (or why none was
    fitted). Two numeric axes: a heatmap of log median t_val with each cell's phase. Structural axes (p, op,
    sizes) become facets.
    """
    if fits.attrs.get("arm_keys") and ax is None:
        return plot_arms(fits)
    numeric = numeric_axes(fits)
    facets = _facets(fits)
    if ax is not None and len(facets) > 1:
        raise ValueError("a sweep with structural facets needs its own figure; call without ax")
    has_zero = len(numeric) == 1 and bool((fits[numeric[0]] == 0).any()) and ax is None
    if ax is None:
        ncols = min(len(facets), 3)
        nrows = math.ceil(len(facets) / ncols)
        width = [1, 6] * ncols if has_zero else [1] * ncols
        n_cells = fits[numeric[0]].nunique() if len(numeric) == 1 else 0
        wide = max(11.5 if len(facets) == 1 else 9.0, 4.5 + 0.16 * n_cells)  # 64 wd cells: 15 in, ~0.16 in a band
        fig = Figure(figsize=(wide * ncols, 5.5 * nrows), dpi=110)
        grid = fig.subplots(nrows, len(width), squeeze=False, gridspec_kw=dict(width_ratios=width),
                            sharey="row" if has_zero else False)
        pairs = ([(grid[r, 2 * c + 1], grid[r, 2 * c]) for r in range(nrows) for c in range(ncols)] if has_zero
                 else [(a, None) for a in grid.ravel()])
    else:
        fig, pairs = ax.figure, [(ax, None)]
    for (label, sub), (a, zero_a) in zip(facets, pairs):
        boundaries = report.boundaries if report is not None and len(facets) == 1 else fit_boundaries(sub)
        if len(numeric) >= 2:
            _heatmap(a, sub, numeric[0], numeric[1], fig, boundaries)
        else:
            with_law = numeric[0] == "wd"
            laws = None
            if with_law:
                laws = (report.laws[:2] if report is not None and len(facets) == 1
                        else [fit_law(sub, "t_val"), fit_law(sub, "delay")])
            a = _diagram_1d(a, sub, numeric[0], laws, zero_a)
            _draw_boundary(a, boundaries, numeric[0])
            _mark_unsampled(a, sub, numeric[0])
            handles, labels = a.get_legend_handles_labels()
            majority = cells(_with_axes(sub.copy(), [numeric[0]]))["phase"]  # the bands drawn
            phases = sorted(set(majority), key=list(PHASE_COLORS).index)
            handles += [Rectangle((0, 0), 1, 1, color=PHASE_COLORS[p], alpha=0.6) for p in phases]
            labels += [f"majority phase: {p}" for p in phases]
            a.legend(handles, labels, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), framealpha=0.9)
        if label:
            a.set_title(label, fontsize=10)
    for a, zero_a in pairs[len(facets):]:
        a.set_visible(False)
        if zero_a is not None:
            zero_a.set_visible(False)
    keep = fits.attrs.get("keep", 0.9)
    rule = f"t_val: first eval with val acc ≥ {fits.attrs.get('threshold', THRESHOLD):g} kept by {keep:.0%} of later evals"
    fig.suptitle(f"Grokking phase diagram\n{sweep_title(fits)}\n{rule}", fontsize=10)
    fig.tight_layout()
    return fig


def plot_arms(fits: pd.DataFrame) -> Figure:
    """The figure of a sweep built from arms (``--arm``, ``[[arms]]``): one column per cell (each arm, crossed
    with the other swept keys), labelled by the keys that differ, with every seed's t_train and t_val, the
    censored runs counted at the budget, the Kaplan-Meier medians (with an interval from 3 seeds on) and
    the cell's majority phase as its band."""
    thr = float(fits.attrs.get("threshold", THRESHOLD))
    keys = [a for a in fits.attrs.get("axes", []) if a != "seed" and a in fits.columns]
    table = cells(_with_axes(fits.copy(), keys))
    first = fits.groupby(keys, sort=False)["run_id"].min().rename("first").reset_index()
    table = table.merge(first, on=keys).sort_values("first").reset_index(drop=True)  # the arms in their order
    table["cell"] = table.index.astype(float)
    placed = fits.merge(table[[*keys, "cell"]], on=keys, how="left")
    placed.attrs = fits.attrs
    varying = [k for k in keys if table[k].nunique() > 1] or keys
    labels = ["\n".join(f"{k}={_fmt(r[k])}" for k in varying) for _, r in table.iterrows()]
    fig = Figure(figsize=(max(7.5, 4.5 + 1.3 * len(table)), 5.5), dpi=110)
    ax = fig.subplots()
    _draw_cells(ax, placed, table, "cell", {c: c for c in table["cell"]}, False, thr)
    shown = np.concatenate([fits[c].to_numpy(float) for c in ("t_train", "t_val")])
    shown = shown[np.isfinite(shown) & (shown > 0)]
    ax.set_ylim(float(shown.min()) / 1.5 if shown.size else 1.0, float(fits["budget"].max()) * 3)
    ax.set_yscale("log")
    ax.set_xlim(-0.5, len(table) - 0.5)
    ax.set_xticks(range(len(table)), labels, fontsize=8)
    ax.set_ylabel("step (t_train, t_val, delay = t_val − t_train)")
    ax.grid(True, which="major", axis="y", alpha=0.3)
    handles, names = ax.get_legend_handles_labels()
    phases = sorted(set(table["phase"]), key=list(PHASE_COLORS).index)
    handles += [Rectangle((0, 0), 1, 1, color=PHASE_COLORS[p], alpha=0.6) for p in phases]
    names += [f"majority phase: {p}" for p in phases]
    ax.legend(handles, names, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), framealpha=0.9)
    keep = fits.attrs.get("keep", 0.9)
    rule = f"t_val: first eval with val acc ≥ {thr:g} kept by {keep:.0%} of later evals"
    fig.suptitle(f"Grokking per arm\n{sweep_title(fits)}\n{rule}", fontsize=10)
    fig.tight_layout()
    return fig


def _fmt(v: Any) -> str:
    return f"{v:g}" if isinstance(v, (float, np.floating)) else str(v).lower() if isinstance(v, (bool, np.bool_)) else str(v)


def plot_comparison(reports: list[tuple[str, Any]]) -> Figure:
    """Several sweeps' phase diagrams overlaid (one colour each): Kaplan-Meier median t_val per wd with
    bootstrap intervals, cells that mostly never grok as arrows at their budget, and each fitted t_val law."""
    fig = Figure(figsize=(9, 5.5), dpi=110)
    ax = fig.subplots()
    colors = matplotlib.colormaps["tab10"]
    for i, (label, report) in enumerate(reports):
        c = colors(i % 10)
        cell = cells(_with_axes(report.fits.copy(), ["wd"]))
        cell = cell[cell["wd"] > 0]
        budget = float(report.fits["budget"].max())
        shift = 10 ** (0.02 * (i - (len(reports) - 1) / 2))
        finite = cell[np.isfinite(cell["median_t_val"])]
        if len(finite):
            mid = finite["median_t_val"].to_numpy(float)
            top = np.where(np.isinf(finite["ci_high"]), budget, finite["ci_high"])
            ax.errorbar(finite["wd"] * shift, mid, yerr=[mid - finite["ci_low"], top - mid], fmt="none", color=c,
                        capsize=3)
            share = ((finite["n_grokking"] + finite["n_comprehension"]) / finite["n_seeds"]).to_numpy(float)
            every = share >= 1
            ax.scatter(finite["wd"][every] * shift, mid[every], marker="s", color=c, s=30, zorder=3,
                       label=f"{label}: KM median t_val, 95% CI (filled: every seed grokked)")
            ax.scatter(finite["wd"][~every] * shift, mid[~every], marker="s", facecolors="white", edgecolors=c,
                       s=30, zorder=3, label=f"{label}: hollow: some seeds never grokked" if (~every).any() else None)
            for xv, y, sh in zip(finite["wd"] * shift, mid, share):
                ax.annotate(f"{sh:.0%}", (xv, y), xytext=(5, 3), textcoords="offset points", fontsize=6, color=c)
        never = cell[~np.isfinite(cell["median_t_val"])]
        if len(never):
            ax.scatter(never["wd"] * shift, np.full(len(never), budget), marker=r"$\uparrow$", color=c, s=90,
                       label=f"{label}: mostly no t_val within {budget:.0f} steps")
        ax.axhline(budget, color=c, lw=0.8, ls=":", label=f"{label}: budget ({budget:.0f} steps)")
        law = fit_law(_with_axes(report.fits.copy(), ["wd"]), "t_val")
        if law.fitted:
            line = np.geomspace(law.x_min, law.x_max, 50)
            ax.plot(line, np.exp(law.c) * line**law.alpha, "--", color=c, lw=1,
                    label=f"{label}: t_val ∝ wd^{law.alpha:.2f} [{law.alpha_low:.2f}, {law.alpha_high:.2f}]")
    ax.set_xscale("log")
    ax.set_yscale("log")
    wds = sorted({float(w) for _, r in reports for w in r.fits["wd"] if w > 0})
    if wds:
        _ticks_at(ax, wds)
    ax.set_xlabel("wd (wd = 0 not shown)")
    ax.set_ylabel("step (t_val, kept rule)")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=7, framealpha=0.9)
    ax.set_title("Grokking phase diagrams compared", fontsize=10)
    fig.tight_layout()
    return fig

"""What ``grokjax sweep``, ``fit`` and ``plot`` print and draw once the numbers exist: the library behind
the command line (``cli`` only parses arguments), also called by ``grokjax.sweep()``.

Every function writes its lines through ``say`` (print by default) and raises UserError for what a user
can fix.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from grokjax.analysis.boundary import boundary_lines
from grokjax.analysis.fit import NEAR, FitOptions, candidate_attrs, fit_results
from grokjax.analysis.report import Report, analyse, report_of
from grokjax.analysis.summary import near_misses, side_by_side, summary_table
from grokjax.config.schedule import THRESHOLD
from grokjax.config.structure import DIVERGENCE_LOSS
from grokjax.errors import UserError
from grokjax.store.load import load, saved_fits
from grokjax.store.outputs import save_figure

Say = Callable[[str], None]
MAX_SUMMARY_ROWS = 48


def _acc(v: Any) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def _fmt_step(v: Any) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{int(v)}"


def print_run_summary(fits: pd.DataFrame, threshold: float = THRESHOLD, say: Say = print) -> None:
    """Per run: the FIRST steps at which train and validation accuracy reach the threshold (Power et al.'s
    first-reach rule), whatever happens after, and the best and last validation accuracy."""
    say(f"{'run':>4} {'wd':>9} {'lr':>9} {'seed':>4} {'t_train':>8} {'t_val_first':>11} {'max_val':>7} "
        f"{'final_val':>9}   (first step at accuracy >= {threshold:g})")
    rows = list(fits.itertuples())
    for r in rows[:MAX_SUMMARY_ROWS]:
        say(f"{r.run_id:>4} {r.wd:>9.4g} {r.lr:>9.4g} {r.seed:>4} {_fmt_step(r.t_train):>8} "
            f"{_fmt_step(r.t_val_first):>11} {_acc(r.max_val_acc):>7} {_acc(r.final_val_acc):>9}")
    if len(rows) > MAX_SUMMARY_ROWS:
        say(f"... {len(rows) - MAX_SUMMARY_ROWS} more runs: see fits.parquet or grokjax.load()")


def missing_shards(done: list[int], n: int) -> str:
    """The shard indices not in ``done``, at most 10 named."""
    gone = [i for i in range(n) if i not in set(done)]
    return ", ".join(map(str, gone[:10])) + (f" and {len(gone) - 10} more" if len(gone) > 10 else "")


def fit_and_report(path: Path, opts: FitOptions = FitOptions(), say: Say = print) -> Report:
    """``grokjax fit DIR``: fit, save fits/cells/laws.parquet, print the per-cell table and the laws."""
    results = load(path)
    if results.shards is not None and len(results.shards[0]) < results.shards[1]:
        done, n = results.shards
        say(f"{path}: {len(done)} of {n} shards complete (missing: {missing_shards(done, n)}); fitting the runs "
            f"written so far")
    report = analyse(results, opts, save=True)
    fits = report.fits
    if fits.empty:
        raise UserError(f"{path}: no metrics written yet; nothing to fit")
    say(summary_table(report.cells, opts.threshold))
    misses = near_misses(fits, opts.threshold, NEAR)
    if misses:
        shown = misses[:MAX_NEAR_MISSES_SHOWN]
        more = (f"; and {len(misses) - len(shown)} more (every run's max_val_acc is in fits.parquet)"
                if len(misses) > len(shown) else "")
        say(f"near misses (best val acc within {NEAR:g} of {opts.threshold:g}, never kept), {len(misses)}: "
            + "; ".join(shown) + more)
    for law in report.laws:
        say(str(law))
    for line in boundary_lines(report.boundaries):
        say(line)
    say(f"phases: {', '.join(f'{k} {v}' for k, v in fits['phase'].value_counts().items())}; "
        f"t_val = first eval with val acc >= {opts.threshold} after which {opts.keep:.0%} of evals stay "
        f">= {opts.threshold - opts.slack:g} (--keep, --slack), followed by at least {opts.confirm} evals "
        f"(--confirm); grokking when delay > {opts.gap:g} steps")
    say(f"wrote {path / 'fits.parquet'}, cells.parquet, laws.parquet")
    return report


def fits_for_plot(path: Path, opts: FitOptions | None = None, say: Say = print) -> pd.DataFrame:
    """The fits ``grokjax fit`` saved, unless ``opts`` are given or they are missing or stale: then a
    re-fit, said so (fits.parquet is left as it was)."""
    results = load(path)
    if opts is None:
        fits, why = saved_fits(path)
        if fits is not None:
            fits.attrs.update(axes=results.axes, arm_keys=results.arm_keys, path=str(path),
                              **candidate_attrs(results))
            say(f"using the fits in {why}")
            return fits
    else:
        why = "fit options given"
    opts = opts or FitOptions()
    fits = fit_results(results, opts)
    if fits.empty:
        raise UserError(f"{path}: no metrics written yet; nothing to plot")
    say(f"fitted for this plot ({why}): threshold {opts.threshold:g}, keep {opts.keep:g}, slack "
        f"{opts.slack:g}, gap {opts.gap:g}; fits.parquet not changed (grokjax fit writes it)")
    return fits


MAX_NEAR_MISSES_SHOWN = 5  # the summary names this many; a long list is summarised


def parse_run_ids(text: str) -> list[int]:
    """``--runs 0,5`` -> [0, 5] (not yet checked against a sweep)."""
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"--runs {text}: expected run_ids separated by commas, e.g. --runs 0,5") from None


def run_ids(text: str | None, fits: pd.DataFrame) -> list[int] | None:
    """``--runs 0,5`` -> [0, 5], each checked against the sweep's run_ids."""
    if text is None:
        return None
    ids = parse_run_ids(text)
    known = set(fits["run_id"].tolist())
    bad = [i for i in ids if i not in known]
    if not ids or bad:
        raise UserError(f"--runs {text}: {'no run_id' if not ids else f'run_id {bad[0]} is not in this sweep'}; "
                        f"run_ids are 0..{max(known)} (see runs.parquet)")
    return ids


def plot_dir(path: Path, fits: pd.DataFrame, fmt: str = "png", curves: bool = False, measures: bool = False,
             runs: str | None = None, norm_gap: bool = False, say: Say = print) -> None:
    """``grokjax plot DIR``: the phase diagram (and the curves, measures and norm-gap figures when asked)."""
    from grokjax.analysis.curves import plot_curves
    from grokjax.analysis.plots import plot_phase_diagram

    ids = run_ids(runs, fits) if measures else None  # checked before anything is written
    say(f"wrote {save_figure(plot_phase_diagram(fits, report=report_of(fits)), path / f'phase_diagram.{fmt}')}")
    if curves:
        say(f"wrote {save_figure(plot_curves(load(path).metrics, fits), path / f'curves.{fmt}')}")
    if measures:
        from grokjax.analysis.curves import plot_measures

        figure = plot_measures(load(path).metrics, fits, ids)
        say(f"wrote {save_figure(figure, path / f'measures.{fmt}')}")
    if norm_gap:
        from grokjax.analysis.norm_gap import fit_norm_gap, plot_norm_gap

        if "gap_end" not in fits:
            raise UserError(f"{path}: its fits.parquet predates the norm-gap columns; run grokjax fit {path} first")
        say(str(fit_norm_gap(fits)))
        say(f"wrote {save_figure(plot_norm_gap(fits), path / f'norm_gap.{fmt}')}")


def labels(paths: list[Path]) -> list[str]:
    """A label per results directory: the settings in which their sweeps differ, else the directory."""
    sweeps = [load(p).sweep["spec"] for p in paths]
    specs = [sw["values"] for sw in sweeps]
    keys = sorted(set().union(*specs))
    differ = [k for k in keys if len({str(s.get(k)) for s in specs}) > 1 and k not in ("hp.seed",)]
    swept = set().union(*(sw["axes"] for sw in sweeps))
    if [k for k in differ if k not in swept]:  # the swept values show in the tables and on the x axis
        differ = [k for k in differ if k not in swept]
    if differ and len(differ) <= 3:
        out = [", ".join(f"{k.rsplit('.', 1)[-1]}={_short(s.get(k))}" for k in differ) for s in specs]
        if len(set(out)) == len(out):
            return out
    names = [p.name or str(p) for p in paths]
    return names if len(set(names)) == len(names) else [str(p) for p in paths]


def _short(v: Any) -> str:
    if isinstance(v, list) and len(v) == 1:
        v = v[0]
    if isinstance(v, list):
        return "[" + ",".join(f"{x:g}" if isinstance(x, float) else str(x) for x in v[:4]) + \
            (",...]" if len(v) > 4 else "]")
    return f"{v:g}" if isinstance(v, float) else str(v)


def fit_many(paths: list[Path], opts: FitOptions = FitOptions(), say: Say = print) -> None:
    """``grokjax fit A B ...``: each sweep fitted and saved, their per-cell tables side by side."""
    tables = []
    for label, path in zip(labels(paths), paths):
        report = analyse(path, opts, save=True)
        if report.fits.empty:
            raise UserError(f"{path}: no metrics written yet; nothing to fit")
        tables.append((label, report.cells))
        say(f"{label}: " + "; ".join(str(law) for law in report.laws[:2]) + f"  (wrote {path / 'fits.parquet'})")
    say(side_by_side(tables))


def plot_many(paths: list[Path], opts: FitOptions | None = None, fmt: str = "png", output: Path | None = None,
              say: Say = print) -> None:
    """``grokjax plot A B ...``: the sweeps overlaid in one figure (default A/comparison.FORMAT)."""
    from grokjax.analysis.plots import plot_comparison

    out = _figure_path(Path(output) if output is not None else paths[0], "comparison", fmt)
    reports = [(label, report_of(fits_for_plot(p, opts, say))) for label, p in zip(labels(paths), paths)]
    say(f"wrote {save_figure(plot_comparison(reports), out)}")


FIGURE_FORMATS = ("png", "svg", "pdf")


def _figure_path(output: Path, name: str, fmt: str) -> Path:
    """Where ``--output`` puts a figure: inside a directory as NAME.FORMAT, a file without a suffix gets
    .FORMAT; any other suffix must be a figure format."""
    if output.is_dir():
        return output / f"{name}.{fmt}"
    if output.exists() and not output.is_file():
        raise UserError(f"--output {output}: neither a directory nor a file (a device?); give a directory or a "
                        f"figure file such as comparison.{fmt}")
    if not output.suffix:
        return output.with_name(f"{output.name}.{fmt}")
    if output.suffix[1:].lower() not in FIGURE_FORMATS:
        raise UserError(f"--output {output}: {output.suffix!r} is not a figure format; use "
                        f"{', '.join('.' + f for f in FIGURE_FORMATS)}, no suffix (then --format), or a directory")
    return output


def finish_sweep(outcome: Any, sweep: Any, fit: bool = True, plot: bool = True, say: Say = print) -> None:
    """What ``grokjax sweep`` prints after training (``outcome``: ``run.sweep.SweepOutcome``): speed, early
    stops, per-cell table and laws (``fit``: also saved), per-run times, the phase diagram (``plot``),
    divergences. The times come from the stored metrics (the fit's code path), so a resumed sweep reports
    the whole of every run, not only what this process trained."""
    results = load(outcome.path)
    ran = results.runs if "design_round" not in results.runs else results.runs[results.runs["design_round"] >= 0]
    n_runs, held = len(ran), int(ran["steps"].sum())
    stopped = dict(zip(results.stops["run_id"].tolist(), results.stops["stop_step"].tolist()))
    steps_of = dict(zip(results.runs["run_id"].tolist(), results.runs["steps"].tolist()))
    trained = held - sum(steps_of[rid] - stop for rid, stop in stopped.items())
    design = sweep.values["train.design"][0]
    chosen = f" (design={design}: chosen of {len(results.runs)} candidates)" if len(ran) < len(results.runs) else ""
    say(f"{n_runs} runs{chosen} in {outcome.seconds:.1f} s (compilation included); training "
        f"{outcome.model_steps_per_s:,.0f} model-steps/s; this process computed {outcome.model_steps:,} "
        f"model-steps (padding included), the sweep holds {trained:,}")
    if stopped:
        say(f"stop=resolved: {len(stopped)} runs stopped early; the sweep holds {100 * trained / held:.0f}% of "
            f"the budget's {held:,} model-steps")
    fits = fit_and_report(outcome.path, FitOptions(), say).fits if fit else fit_results(results)
    print_run_summary(fits, say=say)
    if fit and plot:
        plot_dir(outcome.path, fits, say=say)
    n_diverged = int((fits["phase"] == "diverged").sum()) if len(fits) else 0
    if n_diverged:
        say(f"{n_diverged} of {n_runs} runs diverged (train loss non-finite or above {DIVERGENCE_LOSS:g}, or "
            f"parameters non-finite): each was frozen at that step and is NaN from there on")
    say(f"results: {outcome.path}")


def finish_shard(outcome: Any, shard: Any, plot: bool = True, say: Say = print) -> None:
    """What ``grokjax sweep --shard I/N`` prints: this shard's time and, once every shard is complete, the
    fit and the phase diagram of the whole sweep."""
    done, n = load(outcome.path).shards or ([], shard.count)
    say(f"shard {shard.label}: {outcome.tracker.n_runs} runs in {outcome.seconds:.1f} s; {len(done)} of {n} "
        f"shards complete" + ("" if len(done) == n else f" (missing: {missing_shards(done, n)})"))
    if len(done) < n or not plot:
        say(f"results: {outcome.path} (grokjax fit {outcome.path} once every shard is complete)")
        return
    plot_dir(outcome.path, fit_and_report(outcome.path, FitOptions(), say).fits, say=say)
    say(f"results: {outcome.path}")


def finish_cluster(outcome: Any, sweep: Any, n_processes: int, plot: bool = True, say: Say = print) -> None:
    """What process 0 of a multi-process sweep prints: speed, then the fit and the phase diagram."""
    say(f"{sweep.n_runs()} runs over {n_processes} processes in {outcome.seconds:.1f} s (compilation included); "
        f"training {outcome.model_steps_per_s:,.0f} model-steps/s")
    if plot:
        plot_dir(outcome.path, fit_and_report(outcome.path, FitOptions(), say).fits, say=say)
    say(f"results: {outcome.path}")

"""The ``grokjax`` command: parse argv and call the library; nothing else lives here.

User mistakes print one line (``grokjax: error: ...``) and exit with status 2; a failed write exits 1;
a sweep stopped by SIGINT/SIGTERM exits 130/143 after writing a checkpoint.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

from grokjax.errors import Interrupted, UserError

MAX_SUMMARY_ROWS = 48


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UserError(f"{message} (see {self.prog} --help)")


def _parser() -> argparse.ArgumentParser:
    from grokjax import __version__

    p = _Parser(prog="grokjax", description="Train grids of tiny networks at once to study grokking.")
    p.add_argument("--version", action="version", version=f"grokjax {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser, metavar="COMMAND")
    s = sub.add_parser("sweep", help="train a grid of models (default: a small CPU sweep)",
                       description="grokjax sweep [CONFIG] [key=value ...]: CONFIG is a TOML file or a preset "
                                   "name (default, power2022, nanda2023, prieto2025, grokfast2024). Values: 0.1, "
                                   "[0.1,1], 0.1,1, logspace(a,b,n), linspace(a,b,n), range(a,b[,step]); "
                                   "seeds=N. Every key, its default and meaning: grokjax keys.")
    s.add_argument("items", nargs="*", metavar="[CONFIG] key=value")
    s.add_argument("--out", type=Path, default=None, help="results directory (default results/<time>-<hash>)")
    s.add_argument("--resume", action="store_true", help="continue the sweep in --out from its last checkpoint")
    s.add_argument("--quiet", action="store_true", help="no progress output")
    s.add_argument("--no-plot", action="store_true", help="skip the fit and the phase diagram at the end")
    s.add_argument("--shard", default=None, metavar="I/N",
                   help="train only slice I (0-based) of N slices of the grid (run_id %% N == I) into a --out "
                        "shared with the other shards, e.g. --shard $SLURM_ARRAY_TASK_ID/N (see docs/scaling.md)")
    s.add_argument("--coordinator", default=None, metavar="HOST:PORT",
                   help="one sweep over several processes (jax.distributed): process 0's host and a free port; "
                        "with --num-processes and --process-id (none of the three inside srun, mpirun or a TPU "
                        "slice: JAX detects the cluster; see docs/scaling.md)")
    s.add_argument("--num-processes", type=int, default=None, metavar="N",
                   help="processes of a multi-process sweep (1: one process, no cluster auto-detection)")
    s.add_argument("--process-id", type=int, default=None, metavar="I", help="this process, 0 <= I < N")
    s.add_argument("--cluster-timeout", type=int, default=None, metavar="S",
                   help="seconds to wait for the coordinator and for every process to join (default 120)")
    for name, hlp in (("fit", "grokking times per run, per cell and the wd laws -> DIR/fits.parquet, "
                              "cells.parquet, laws.parquet; several DIRs: per-cell tables side by side"),
                      ("plot", "phase diagram -> DIR/phase_diagram.FORMAT, from the fits grokjax fit saved "
                               "(re-fitted, and said so, when fit options are given); several DIRs: "
                               "overlaid -> DIR1/comparison.FORMAT")):
        c = sub.add_parser(name, help=hlp, description=hlp)
        c.add_argument("dir", type=Path, nargs="+", help="a results directory (several: compared)")
        c.add_argument("--threshold", type=float, default=None, help="accuracy threshold (default 0.99)")
        c.add_argument("--slack", type=float, default=None,
                       help="after t_val, accuracy counts as kept while >= threshold - slack (default 0.01)")
        c.add_argument("--keep", type=float, default=None,
                       help="fraction of later evaluations that must be kept (default 0.9; 1 = never drops)")
        c.add_argument("--gap", type=float, default=None,
                       help="delay in steps above which a run is 'grokking' not 'comprehension' (default 1000)")
        if name == "plot":
            c.add_argument("--format", choices=("png", "svg", "pdf"), default="png",
                           help="image format: writes DIR/phase_diagram.FORMAT (default png)")
            c.add_argument("--output", type=Path, default=None,
                           help="where the comparison of several DIRs goes (default DIR1/comparison.FORMAT)")
            c.add_argument("--curves", action="store_true",
                           help="also draw learning curves (accuracy, loss, parameter norm) -> DIR/curves.FORMAT")
            c.add_argument("--measures", action="store_true",
                           help="also draw the progress measures (measures=) of a grokking and a memorizing run "
                                "side by side -> DIR/measures.FORMAT")
            c.add_argument("--runs", default=None, metavar="ID,ID",
                           help="with --measures: these run_ids instead (comma-separated)")
    e = sub.add_parser("export", help="write a results directory as TensorBoard event files or offline W&B runs",
                       description="grokjax export DIR --to tensorboard|wandb OUT: one TensorBoard run directory "
                                   "(or one offline W&B run) per model, every metric per step, the run's "
                                   "hyperparameters (HParams plugin / W&B config) and, if grokjax fit ran, its "
                                   "times. Needs pip install 'grokjax[tensorboard]' or 'grokjax[wandb]'. "
                                   "Sync W&B runs later with: wandb sync OUT/wandb/offline-run-*")
    e.add_argument("dir", type=Path, help="a results directory")
    e.add_argument("--to", required=True, choices=("tensorboard", "wandb"), help="the tracker")
    e.add_argument("out", type=Path, help="a new (or empty) directory to write into")
    e.add_argument("--project", default="grokjax", help="W&B project name (default grokjax)")
    k = sub.add_parser("keys", help="list every sweep key with its default, group and meaning",
                       description="Every key grokjax sweep accepts: default, group (per-model: a vmapped "
                                   "array, never a recompile; structural: its own compiled group), accepted "
                                   "values and meaning.")
    k.add_argument("key", nargs="?", help="show only this key")
    return p


def _keys(key: str | None) -> int:
    from grokjax.spec.fields import FIELDS
    from grokjax.spec.grammar import resolve_key

    fields = [FIELDS[resolve_key(key)]] if key else list(FIELDS.values())
    width = max(len(f.short) for f in fields)
    for f in fields:
        default = str(f.default).lower() if isinstance(f.default, bool) else f"{f.default}"
        print(f"{f.short:<{width}}  {default:<11} {f.group:<10}  {f.accepted}: {f.meaning}")
    if not key:
        print("seeds=N is short for seed=[0..N-1]; dotted paths (train.steps) work too.")
    return 0


def _split_items(items: list[str]) -> tuple[str | None, list[str]]:
    if items and "=" not in items[0]:
        config, rest = items[0], items[1:]
    else:
        config, rest = None, items
    for item in rest:
        if "=" not in item:
            raise UserError(f"argument {item!r} is not key=value (only the first argument may name a sweep "
                            f"file); e.g. wd=0.1 or seeds=4")
    return config, rest


def _fmt_step(v: Any) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{int(v)}"


def _print_run_summary(rows: list[tuple[Any, ...]], threshold: float = 0.99) -> None:
    """Per run, the FIRST steps at which train and validation accuracy reach the threshold (Power et al.'s
    first-reach rule: t_train and t_val_first), whatever happens after."""
    print(f"{'run':>4} {'wd':>9} {'lr':>9} {'seed':>4} {'t_train':>8} {'t_val_first':>11}   "
          f"(first step at accuracy >= {threshold:g})")
    for run_id, wd, lr, seed, t_train, t_val in rows[:MAX_SUMMARY_ROWS]:
        print(f"{run_id:>4} {wd:>9.4g} {lr:>9.4g} {seed:>4} {_fmt_step(t_train):>8} {_fmt_step(t_val):>11}")
    if len(rows) > MAX_SUMMARY_ROWS:
        print(f"... {len(rows) - MAX_SUMMARY_ROWS} more runs: see fits.parquet or grokjax.load()")


def _options(args: argparse.Namespace) -> Any:
    from grokjax.analysis.fit import FitOptions

    d = FitOptions()
    return FitOptions(*(d.__dict__[k] if getattr(args, k, None) is None else getattr(args, k)
                        for k in ("threshold", "slack", "gap", "keep"))).check()


def _options_given(args: argparse.Namespace) -> bool:
    return any(getattr(args, k, None) is not None for k in ("threshold", "slack", "gap", "keep"))


def _missing(done: list[int], n: int) -> str:
    """The shard indices not in ``done``, at most 10 named."""
    gone = [i for i in range(n) if i not in set(done)]
    return ", ".join(map(str, gone[:10])) + (f" and {len(gone) - 10} more" if len(gone) > 10 else "")


def _fit_and_report(path: Path, opts: Any) -> Any:
    from grokjax.analysis.report import analyse
    from grokjax.analysis.summary import summary_table
    from grokjax.store.load import load

    results = load(path)
    if results.shards is not None and len(results.shards[0]) < results.shards[1]:
        done, n = results.shards
        print(f"{path}: {len(done)} of {n} shards complete (missing: {_missing(done, n)}); fitting the runs "
              f"written so far")
    report = analyse(results, opts, save=True)
    fits = report.fits
    if fits.empty:
        raise UserError(f"{path}: no metrics written yet; nothing to fit")
    print(summary_table(report.cells, opts.threshold))
    for law in report.laws:
        print(law)
    print(f"phases: {', '.join(f'{k} {v}' for k, v in fits['phase'].value_counts().items())}; "
          f"t_val = first eval with val acc >= {opts.threshold} after which {opts.keep:.0%} of evals stay "
          f">= {opts.threshold - opts.slack:g} (--keep, --slack); grokking when delay > {opts.gap:g} steps")
    print(f"wrote {path / 'fits.parquet'}, cells.parquet, laws.parquet")
    return report


def _fits_for_plot(path: Path, args: argparse.Namespace) -> Any:
    """The fits ``grokjax fit`` saved, unless options were given or they are missing or stale: then a
    re-fit, said so (fits.parquet is left as it was)."""
    from grokjax.analysis.fit import fit_results
    from grokjax.store.load import load, saved_fits

    results = load(path)
    if not _options_given(args):
        fits, why = saved_fits(path)
        if fits is not None:
            fits.attrs.update(axes=results.axes, path=str(path))
            print(f"using the fits in {why}")
            return fits
    else:
        why = "fit options given"
    opts = _options(args)
    fits = fit_results(results, opts)
    if fits.empty:
        raise UserError(f"{path}: no metrics written yet; nothing to plot")
    print(f"fitted for this plot ({why}): threshold {opts.threshold:g}, keep {opts.keep:g}, slack "
          f"{opts.slack:g}, gap {opts.gap:g}; fits.parquet not changed (grokjax fit writes it)")
    return fits


def _run_ids(text: str | None, fits: Any) -> list[int] | None:
    if text is None:
        return None
    try:
        ids = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"--runs {text}: expected run_ids separated by commas, e.g. --runs 0,5") from None
    known = set(fits["run_id"].tolist())
    bad = [i for i in ids if i not in known]
    if not ids or bad:
        raise UserError(f"--runs {text}: {'no run_id' if not ids else f'run_id {bad[0]} is not in this sweep'}; "
                        f"run_ids are 0..{max(known)} (see runs.parquet)")
    return ids


def _plot(path: Path, fits: Any, fmt: str = "png", curves: bool = False, measures: bool = False,
          runs: str | None = None) -> None:
    from grokjax.analysis.plots import plot_curves, plot_phase_diagram
    from grokjax.analysis.report import report_of
    from grokjax.store.load import load
    from grokjax.store.outputs import save_figure

    ids = _run_ids(runs, fits) if measures else None  # checked before anything is written
    print(f"wrote {save_figure(plot_phase_diagram(fits, report=report_of(fits)), path / f'phase_diagram.{fmt}')}")
    if curves:
        print(f"wrote {save_figure(plot_curves(load(path).metrics, fits), path / f'curves.{fmt}')}")
    if measures:
        from grokjax.analysis.plots import plot_measures

        figure = plot_measures(load(path).metrics, fits, ids)
        print(f"wrote {save_figure(figure, path / f'measures.{fmt}')}")


def _labels(paths: list[Path]) -> list[str]:
    """A label per results directory: the settings in which their sweeps differ, else the directory."""
    from grokjax.store.load import load

    sweeps = [load(p).sweep["spec"] for p in paths]
    specs = [sw["values"] for sw in sweeps]
    keys = sorted(set().union(*specs))
    differ = [k for k in keys if len({str(s.get(k)) for s in specs}) > 1 and k not in ("hp.seed",)]
    swept = set().union(*(sw["axes"] for sw in sweeps))
    if [k for k in differ if k not in swept]:  # the swept values show in the tables and on the x axis
        differ = [k for k in differ if k not in swept]
    if differ and len(differ) <= 3:
        labels = [", ".join(f"{k.rsplit('.', 1)[-1]}={_short(s.get(k))}" for k in differ) for s in specs]
        if len(set(labels)) == len(labels):
            return labels
    names = [p.name or str(p) for p in paths]
    return names if len(set(names)) == len(names) else [str(p) for p in paths]


def _short(v: Any) -> str:
    if isinstance(v, list) and len(v) == 1:
        v = v[0]
    if isinstance(v, list):
        return "[" + ",".join(f"{x:g}" if isinstance(x, float) else str(x) for x in v[:4]) + \
            (",...]" if len(v) > 4 else "]")
    return f"{v:g}" if isinstance(v, float) else str(v)


def _fit_many(paths: list[Path], opts: Any) -> None:
    from grokjax.analysis.report import analyse
    from grokjax.analysis.summary import side_by_side

    labels = _labels(paths)
    tables = []
    for label, path in zip(labels, paths):
        report = analyse(path, opts, save=True)
        if report.fits.empty:
            raise UserError(f"{path}: no metrics written yet; nothing to fit")
        tables.append((label, report.cells))
        print(f"{label}: " + "; ".join(str(law) for law in report.laws[:2]) + f"  (wrote {path / 'fits.parquet'})")
    print(side_by_side(tables))


def _plot_many(paths: list[Path], args: argparse.Namespace) -> None:
    from grokjax.analysis.plots import plot_comparison
    from grokjax.analysis.report import report_of
    from grokjax.store.outputs import save_figure

    labels = _labels(paths)
    reports = [(label, report_of(_fits_for_plot(p, args))) for label, p in zip(labels, paths)]
    out = args.output or paths[0] / f"comparison.{args.format}"
    print(f"wrote {save_figure(plot_comparison(reports), Path(out))}")


def _sweep(args: argparse.Namespace, argv: list[str]) -> int:
    from grokjax.analysis.fit import FitOptions
    from grokjax.run.cluster import parse_cluster
    from grokjax.run.sweep import run_sweep
    from grokjax.spec.grid import build_sweep
    from grokjax.spec.shard import parse_shard
    from grokjax.spec.structure import DIVERGENCE_LOSS

    shard = None if args.shard is None else parse_shard(args.shard)
    if shard is not None and args.out is None:
        raise UserError(f"--shard {args.shard}: needs --out DIR, the directory all shards share")
    cluster = parse_cluster(args.coordinator, args.num_processes, args.process_id, args.cluster_timeout)
    if cluster is not None and shard is not None:
        raise UserError(f"--shard {args.shard}: not supported in a multi-process sweep "
                        f"({cluster.launcher or '--num-processes'}); use one or the other")
    if cluster is not None and args.out is None:
        raise UserError("a multi-process sweep needs --out DIR, a directory every process sees")
    config, overrides = _split_items(args.items)
    sweep = build_sweep(config, overrides)
    if cluster is not None:
        return _sweep_on_cluster(cluster, sweep, args, argv)
    outcome = run_sweep(sweep, args.out, resume=args.resume, quiet=args.quiet, command=["grokjax", *argv],
                        shard=shard)
    if shard is not None:
        import grokjax

        done, n = grokjax.load(outcome.path).shards or ([], shard.count)
        print(f"shard {shard.label}: {outcome.tracker.n_runs} runs in {outcome.seconds:.1f} s; {len(done)} of {n} "
              f"shards complete" + ("" if len(done) == n else f" (missing: {_missing(done, n)})"))
        if len(done) < n or args.no_plot:
            print(f"results: {outcome.path} (grokjax fit {outcome.path} once every shard is complete)")
            return 0
        _plot(outcome.path, _fit_and_report(outcome.path, FitOptions()).fits)
        print(f"results: {outcome.path}")
        return 0
    print(f"{sweep.n_runs()} runs in {outcome.seconds:.1f} s (compilation included); training "
          f"{outcome.model_steps_per_s:,.0f} model-steps/s")
    if outcome.tracker.n_stopped:
        budget = sum(g.train.steps * len(runs) for g, runs in sweep.groups())
        print(f"stop=resolved: {outcome.tracker.n_stopped} runs stopped early; computed "
              f"{outcome.model_steps:,} model-steps ({100 * outcome.model_steps / budget:.0f}% of the budget's "
              f"{budget:,}, padding included)")
    if args.no_plot:
        t = outcome.tracker
        rows = [(r.run_id, r.get("hp.wd"), r.get("hp.lr"), r.get("hp.seed"), t.t_train.get(r.run_id),
                 t.t_val.get(r.run_id)) for _, runs in sweep.groups() for r in runs]
        _print_run_summary(sorted(rows))
    else:
        fits = _fit_and_report(outcome.path, FitOptions()).fits
        _print_run_summary([(r.run_id, r.wd, r.lr, r.seed, r.t_train, r.t_val_first)
                            for r in fits.itertuples()])
        _plot(outcome.path, fits)
    n_div = len(outcome.tracker.diverged)
    if n_div:
        print(f"{n_div} of {sweep.n_runs()} runs diverged (train loss non-finite or above {DIVERGENCE_LOSS:g}, or "
              f"parameters non-finite): each was frozen at that step and is NaN from there on")
    print(f"results: {outcome.path}")
    return 0


def _sweep_on_cluster(cluster: Any, sweep: Any, args: argparse.Namespace, argv: list[str]) -> int:
    """One sweep over the processes of a jax.distributed cluster: process 0 reports, fits and plots."""
    from grokjax.analysis.fit import FitOptions
    from grokjax.run import cluster as clusters
    from grokjax.run.sweep import run_sweep

    peers = clusters.start(cluster)
    # On an error this process exits without the shutdown barrier (which would wait for processes that may
    # be waiting on it): JAX's coordination service then ends the others within its heartbeat timeout.
    outcome = run_sweep(sweep, args.out, resume=args.resume, quiet=args.quiet, command=["grokjax", *argv],
                        peers=peers)
    clusters.stop()
    if not peers.leader:
        return 0
    print(f"{sweep.n_runs()} runs over {peers.count} processes in {outcome.seconds:.1f} s (compilation included); "
          f"training {outcome.model_steps_per_s:,.0f} model-steps/s")
    if not args.no_plot:
        _plot(outcome.path, _fit_and_report(outcome.path, FitOptions()).fits)
    print(f"results: {outcome.path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from grokjax.store.files import StorageError

    try:
        args = _parser().parse_args(argv)
        if args.command == "sweep":
            return _sweep(args, argv)
        if args.command == "keys":
            return _keys(args.key)
        if args.command == "export":
            from grokjax.store.export import export

            n = export(args.dir, args.to, args.out, args.project, say=print)
            print(f"exported {n} runs to {args.out}" + (f"; upload with: wandb sync {args.out}/wandb/offline-run-*"
                                                          if args.to == "wandb" else
                                                          f"; view with: tensorboard --logdir {args.out}"))
            return 0
        paths = args.dir
        if args.command == "fit":
            if len(paths) == 1:
                _fit_and_report(paths[0], _options(args))
            else:
                _fit_many(paths, _options(args))
        elif len(paths) == 1:
            _plot(paths[0], _fits_for_plot(paths[0], args), args.format, args.curves, args.measures, args.runs)
        else:
            _plot_many(paths, args)
        return 0
    except UserError as e:
        print(f"grokjax: error: {e}", file=sys.stderr)
        return 2
    except StorageError as e:
        print(f"grokjax: error: {e}", file=sys.stderr)
        return 1
    except Interrupted as e:
        print(f"grokjax: {e}", file=sys.stderr)
        return 128 + e.signum
    except KeyboardInterrupt:
        print("grokjax: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into e.g. head, which stopped reading: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0

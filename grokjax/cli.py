"""The ``grokjax`` command: parse argv and call the library; nothing else lives here.

User mistakes print one line (``grokjax: error: ...``) and exit with status 2; a failed write exits 1;
a sweep stopped by SIGINT/SIGTERM exits 130/143 after writing a checkpoint.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any, NoReturn

from grokjax.errors import UserError

MAX_SUMMARY_ROWS = 48


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UserError(f"{message} (see grokjax {self.prog.split()[-1]} --help)")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="grokjax", description="Train grids of tiny transformers at once to study grokking.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    s = sub.add_parser("sweep", help="train a grid of models (default: a small CPU sweep)",
                       description="grokjax sweep [CONFIG] [key=value ...]: CONFIG is a TOML file or a name in "
                                   "sweeps/ (default, power2022, nanda2023). Values: 0.1, [0.1,1], 0.1,1, "
                                   "logspace(a,b,n), linspace(a,b,n), range(a,b[,step]); seeds=N.")
    s.add_argument("items", nargs="*", metavar="[CONFIG] key=value")
    s.add_argument("--out", type=Path, default=None, help="results directory (default results/<time>-<hash>)")
    s.add_argument("--resume", action="store_true", help="continue the sweep in --out from its last checkpoint")
    s.add_argument("--quiet", action="store_true", help="no progress output")
    s.add_argument("--no-plot", action="store_true", help="skip the fit and the phase diagram at the end")
    for name, hlp in (("fit", "grokking times per run -> DIR/fits.parquet, and a per-cell table"),
                      ("plot", "phase diagram -> DIR/phase_diagram.png")):
        c = sub.add_parser(name, help=hlp, description=hlp)
        c.add_argument("dir", type=Path, help="a results directory")
        c.add_argument("--threshold", type=float, default=0.99, help="accuracy threshold (default 0.99)")
        c.add_argument("--slack", type=float, default=0.01,
                       help="after t_val, accuracy counts as kept while >= threshold - slack (default 0.01)")
        c.add_argument("--keep", type=float, default=0.9,
                       help="fraction of later evaluations that must be kept (default 0.9; 1 = never drops)")
        c.add_argument("--gap", type=float, default=1000.0,
                       help="delay in steps above which a run is 'grokking' not 'comprehension' (default 1000)")
        if name == "plot":
            c.add_argument("--format", choices=("png", "svg", "pdf"), default="png")
            c.add_argument("--curves", action="store_true", help="also draw accuracy curves (curves.FORMAT)")
    return p


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


def _print_run_summary(rows: list[tuple[Any, ...]]) -> None:
    print(f"{'run':>4} {'wd':>9} {'lr':>9} {'seed':>4} {'train>=0.99':>11} {'val>=0.99':>9}")
    for run_id, wd, lr, seed, t_train, t_val in rows[:MAX_SUMMARY_ROWS]:
        print(f"{run_id:>4} {wd:>9.4g} {lr:>9.4g} {seed:>4} {_fmt_step(t_train):>11} {_fmt_step(t_val):>9}")
    if len(rows) > MAX_SUMMARY_ROWS:
        print(f"... {len(rows) - MAX_SUMMARY_ROWS} more runs: see fits.parquet or grokjax.load()")


def _fit_and_report(path: Path, opts: Any) -> Any:
    from grokjax.analysis.fit import fit
    from grokjax.analysis.law import fit_law
    from grokjax.analysis.summary import summary_table
    from grokjax.analysis.survival import cells

    threshold, slack, gap, keep = opts.threshold, opts.slack, opts.gap, opts.keep
    fits = fit(path, threshold=threshold, slack=slack, gap=gap, keep=keep, save=True)
    if fits.empty:
        raise UserError(f"{path}: no metrics written yet; nothing to fit")
    print(summary_table(fits, cells(fits)))
    law = fit_law(fits)
    print(str(law) if law else "t_grok law: needs at least two wd values whose runs mostly grok")
    print(f"phases: {', '.join(f'{k} {v}' for k, v in fits['phase'].value_counts().items())}; "
          f"t_val = first eval with val acc >= {threshold} after which {keep:.0%} of evals stay "
          f">= {threshold - slack:g}; "
          f"grokking when delay > {gap:g} steps")
    print(f"wrote {path / 'fits.parquet'}")
    return fits


def _plot(path: Path, fits: Any, fmt: str = "png", curves: bool = False) -> None:
    from grokjax.analysis.plots import plot_curves, plot_phase_diagram
    from grokjax.store.load import load
    from grokjax.store.outputs import save_figure

    print(f"wrote {save_figure(plot_phase_diagram(fits), path / f'phase_diagram.{fmt}')}")
    if curves:
        print(f"wrote {save_figure(plot_curves(load(path).metrics, fits), path / f'curves.{fmt}')}")


def _sweep(args: argparse.Namespace, argv: list[str]) -> int:
    from grokjax.analysis.fit import FitOptions
    from grokjax.run.sweep import run_sweep
    from grokjax.spec.grid import build_sweep
    from grokjax.spec.structure import DIVERGENCE_LOSS

    config, overrides = _split_items(args.items)
    sweep = build_sweep(config, overrides)
    outcome = run_sweep(sweep, args.out, resume=args.resume, quiet=args.quiet, command=["grokjax", *argv])
    print(f"{sweep.n_runs()} runs in {outcome.seconds:.1f} s (compilation included); training "
          f"{outcome.model_steps_per_s:,.0f} model-steps/s")
    if args.no_plot:
        t = outcome.tracker
        rows = [(r.run_id, r.get("hp.wd"), r.get("hp.lr"), r.get("hp.seed"), t.t_train.get(r.run_id),
                 t.t_val.get(r.run_id)) for _, runs in sweep.groups() for r in runs]
        _print_run_summary(sorted(rows))
    else:
        fits = _fit_and_report(outcome.path, FitOptions())
        _print_run_summary([(r.run_id, r.wd, r.lr, r.seed, r.t_train, r.t_val_first)
                            for r in fits.itertuples()])
        _plot(outcome.path, fits)
    n_div = len(outcome.tracker.diverged)
    if n_div:
        print(f"{n_div} of {sweep.n_runs()} runs diverged (train loss non-finite or above {DIVERGENCE_LOSS:g}, or "
              f"parameters non-finite): each was frozen at that step and is NaN from there on")
    print(f"results: {outcome.path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from grokjax.run.sweep import Interrupted
    from grokjax.store.files import StorageError

    try:
        args = _parser().parse_args(argv)
        if args.command == "sweep":
            return _sweep(args, argv)
        from grokjax.analysis.fit import FitOptions, fit

        opts = FitOptions(args.threshold, args.slack, args.gap, args.keep).check()
        if args.command == "fit":
            _fit_and_report(args.dir, opts)
        else:
            fits = fit(args.dir, threshold=opts.threshold, slack=opts.slack, gap=opts.gap, keep=opts.keep)
            if fits.empty:
                raise UserError(f"{args.dir}: no metrics written yet; nothing to plot")
            _plot(args.dir, fits, args.format, args.curves)
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

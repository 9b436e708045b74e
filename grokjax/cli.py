"""The ``grokjax`` command: parse argv and call the library; nothing else lives here.

User mistakes print one line (``grokjax: error: ...``) and exit with status 2; a failed write exits 1;
a sweep stopped by SIGINT/SIGTERM exits 130/143 after writing a checkpoint.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path
from typing import Any, NoReturn

from grokjax.errors import Interrupted, UserError


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
                                   "name (default, power2022, nanda2023, prieto2025, prieto2025_collapse, "
                                   "grokfast2024, omnigrok_digits). Values: 0.1, "
                                   "[0.1,1], 0.1,1, logspace(a,b,n), linspace(a,b,n), range(a,b[,step]); "
                                   "seeds=N. Every key, its default and meaning: grokjax keys.")
    s.add_argument("items", nargs="*", metavar="[CONFIG] key=value")
    s.add_argument("--out", type=Path, default=None, help="results directory (default results/<time>-<hash>)")
    s.add_argument("--arm", action="append", default=None, metavar="'key=value ...'",
                   help="one arm of a union of grids, e.g. --arm 'grokfast=none wd=0' --arm 'grokfast=ema "
                        "wd=0.005': each arm's values replace the fixed ones, crossed with the swept keys "
                        "(repeat it; replaces the sweep file's [[arms]])")
    s.add_argument("--resume", action="store_true", help="continue the sweep in --out from its last checkpoint")
    s.add_argument("--quiet", action="store_true", help="no progress output")
    s.add_argument("--no-plot", action="store_true", help="skip the fit and the phase diagram at the end")
    s.add_argument("--dry-run", action="store_true",
                   help="print the grid (runs, groups, swept keys, model-steps, memory and disk estimates) and "
                        "exit: nothing is compiled or written")
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
        c.add_argument("--confirm", type=int, default=None,
                       help="evaluations that must follow a t_val for it to count (default 3; fewer: censored, "
                            "unconfirmed)")
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
            c.add_argument("--norm-gap", action="store_true",
                           help="also draw the generalization gap against ||theta||^2/n_train of every run, with "
                                "the fitted log-log slope -> DIR/norm_gap.FORMAT")
            c.add_argument("--runs", default=None, metavar="ID,ID",
                           help="with --measures: these run_ids instead (comma-separated)")
    e = sub.add_parser("export", help="write a results directory as TensorBoard event files, offline W&B runs "
                                      "or TransformerLens models",
                       description="grokjax export DIR --to tensorboard|wandb|transformerlens OUT: one TensorBoard "
                                   "run directory (or one offline W&B run) per model, every metric per step, the "
                                   "run's hyperparameters (HParams plugin / W&B config) and, if grokjax fit ran, "
                                   "its times; needs pip install 'grokjax[tensorboard]' or 'grokjax[wandb]'. Sync "
                                   "W&B runs later with: wandb sync OUT/wandb/offline-run-*. --to transformerlens: "
                                   "per run and kept step, OUT/run_XXXXX/step_S/ with config.json "
                                   "(HookedTransformerConfig's arguments) and state_dict.npz; load it with "
                                   "grokjax.hooked_transformer(folder) (pip install 'grokjax[transformerlens]')")
    e.add_argument("dir", type=Path, help="a results directory")
    e.add_argument("--to", required=True, choices=("tensorboard", "wandb", "transformerlens"), help="the target")
    e.add_argument("out", type=Path, help="a new (or empty) directory to write into")
    e.add_argument("--project", default=None, help="--to wandb: the W&B project name (default grokjax)")
    e.add_argument("--runs", default=None, metavar="ID,ID", help="--to transformerlens: these run_ids (default all)")
    e.add_argument("--step", default=None, metavar="STEP|all",
                   help="--to transformerlens: this kept step, or all kept steps (default: the last kept)")
    k = sub.add_parser("keys", help="list every sweep key with its default, group and meaning",
                       description="Every key grokjax sweep accepts: default, group (per-model: a vmapped "
                                   "array, never a recompile; structural: its own compiled group), accepted "
                                   "values and meaning.")
    k.add_argument("key", nargs="?", help="show only this key")
    return p


def _keys(key: str | None) -> int:
    from grokjax.config.fields import FIELDS
    from grokjax.grid.expand import build_sweep, shown_value
    from grokjax.grid.grammar import resolve_key

    fields = [FIELDS[resolve_key(key)]] if key else list(FIELDS.values())
    bare = build_sweep(None).values  # what `grokjax sweep key=...` starts from: sweeps/default.toml
    width = max(len(f.short) for f in fields)
    print(f"{'key':<{width}}  {'sweep':<15} {'built-in':<11} {'group':<10}  accepted: meaning")
    for f in fields:
        print(f"{f.short:<{width}}  {shown_value(bare[f.path]):<15} {shown_value([f.default]):<11} "
              f"{f.group:<10}  {f.accepted}: {f.meaning}")
    if not key:
        print("sweep: the value a bare `grokjax sweep key=...` uses (sweeps/default.toml); built-in: a sweep file's "
              "value for a key it does not set. seeds=N is short for seed=[0..N-1]; dotted paths (train.steps) "
              "work too.")
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


def _options(args: argparse.Namespace) -> Any:
    from grokjax.analysis.fit import FIT_OPTION_NAMES, FitOptions

    d = FitOptions()
    return FitOptions(*(d.__dict__[k] if getattr(args, k, None) is None else getattr(args, k)
                        for k in FIT_OPTION_NAMES)).check()


def _options_given(args: argparse.Namespace) -> bool:
    from grokjax.analysis.fit import FIT_OPTION_NAMES

    return any(getattr(args, k, None) is not None for k in FIT_OPTION_NAMES)


def _sweep(args: argparse.Namespace, argv: list[str]) -> int:
    from grokjax.grid.expand import build_sweep
    from grokjax.grid.shard import parse_shard
    from grokjax.run.cluster import parse_cluster

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
    sweep = build_sweep(config, overrides, arms=args.arm)
    if shard is not None and shard.count > sweep.n_runs():
        raise UserError(f"--shard {args.shard}: the grid has {sweep.n_runs()} runs, so shards past "
                        f"{sweep.n_runs() - 1} would train nothing; use at most {sweep.n_runs()} shards")
    if args.dry_run:
        from grokjax.grid.plan import describe_plan

        print(describe_plan(sweep))
        return 0
    if cluster is not None:
        from grokjax.run import cluster as clusters

        clusters.watch_start_up(cluster)  # before JAX is imported; from here on, in a child the parent watches
    from grokjax.analysis import console
    from grokjax.run.sweep import run_sweep

    command = ["grokjax", *argv]
    if cluster is not None:
        peers = clusters.start(cluster)
        # On an error this process exits without the shutdown barrier (which would wait for processes that
        # may be waiting on it): JAX's coordination service then ends the others within its heartbeat timeout.
        outcome = run_sweep(sweep, args.out, resume=args.resume, quiet=args.quiet, command=command, peers=peers)
        clusters.stop()
        if peers.leader:
            console.finish_cluster(outcome, sweep, peers.count, plot=not args.no_plot)
        return 0
    outcome = run_sweep(sweep, args.out, resume=args.resume, quiet=args.quiet, command=command, shard=shard)
    if shard is not None:
        console.finish_shard(outcome, shard, plot=not args.no_plot)
    else:
        console.finish_sweep(outcome, sweep, fit=not args.no_plot, plot=not args.no_plot)
    return 0


def _stopping(as_program: bool) -> None:
    """The command is ending on a signal: a second SIGINT or SIGTERM is ignored from here on, so the exit
    status stays 130 (143) instead of the process dying by the signal mid-message."""
    for s in () if not as_program else (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, signal.SIG_IGN)


def _ended_by_signal(code: int, as_program: bool) -> int:
    """The exit status of a command a signal stopped. The program itself leaves at once (``os._exit``, after
    flushing its output): interrupted inside an XLA compilation, the interpreter's own shutdown crashed
    (SIGSEGV, status -11) while XLA's threads were still running. Everything of the sweep is on disk by
    then (files are renamed into place whole; the directory's lock is released with the process)."""
    if not as_program:
        return code
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)


def main(argv: list[str] | None = None) -> int:
    as_program = argv is None  # the process's own command (not a call from Python, which keeps its handlers)
    argv = list(sys.argv[1:] if argv is None else argv)
    from grokjax.store.files import StorageError

    try:
        args = _parser().parse_args(argv)
        if args.command == "sweep":
            return _sweep(args, argv)
        if args.command == "keys":
            return _keys(args.key)
        if args.command == "export":
            from grokjax.analysis.console import parse_run_ids
            from grokjax.store.export import export

            if args.project is not None and args.to != "wandb":
                raise UserError(f"--project {args.project}: names a W&B project, so it goes with --to wandb, "
                                f"not --to {args.to}")
            runs = None if args.runs is None else parse_run_ids(args.runs)
            if args.step not in (None, "all") and not args.step.strip().isdigit():
                raise UserError(f"--step {args.step}: expected a kept step (a whole number) or 'all'")
            step = args.step if args.step in (None, "all") else int(args.step)
            n = export(args.dir, args.to, args.out, "grokjax" if args.project is None else args.project, say=print, runs=runs, step=step)
            print(f"exported {n} {'models' if args.to == 'transformerlens' else 'runs'} to {args.out}" + {
                "wandb": f"; upload with: wandb sync {args.out}/wandb/offline-run-*",
                "tensorboard": f"; view with: tensorboard --logdir {args.out}",
                "transformerlens": "; load one with grokjax.hooked_transformer(OUT/run_XXXXX/step_S)"}[args.to])
            return 0
        from grokjax.analysis import console

        paths = args.dir
        if args.command == "fit":
            if len(paths) == 1:
                console.fit_and_report(paths[0], _options(args))
            else:
                console.fit_many(paths, _options(args))
        elif len(paths) == 1:
            if args.output is not None:
                raise UserError(f"--output {args.output}: places the comparison of several DIRs; one DIR's "
                                f"figures go into it (DIR/phase_diagram.{args.format})")
            fits = console.fits_for_plot(paths[0], _options(args) if _options_given(args) else None)
            console.plot_dir(paths[0], fits, args.format, args.curves, args.measures, args.runs, args.norm_gap)
        else:
            for flag in ("curves", "measures", "runs", "norm_gap"):
                if getattr(args, flag):
                    flag = flag.replace("_", "-")
                    raise UserError(f"--{flag}: draws one results directory's runs, not a comparison of "
                                    f"{len(paths)} directories; give one DIR with --{flag}")
            console.plot_many(paths, _options(args) if _options_given(args) else None, args.format, args.output)
        return 0
    except UserError as e:
        print(f"grokjax: error: {e}", file=sys.stderr)
        return 2
    except StorageError as e:
        print(f"grokjax: error: {e}", file=sys.stderr)
        return 1
    except Interrupted as e:
        _stopping(as_program)
        print(f"grokjax: {e}", file=sys.stderr)
        return _ended_by_signal(128 + e.signum, as_program)
    except KeyboardInterrupt:
        _stopping(as_program)
        print("grokjax: interrupted", file=sys.stderr)
        return _ended_by_signal(130, as_program)
    except BrokenPipeError:  # output piped into e.g. head, which stopped reading: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0

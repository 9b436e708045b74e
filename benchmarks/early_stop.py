"""What ``stop=resolved`` saves: the same sweep with ``stop=budget`` and ``stop=resolved``, one after the
other in one process: wall time (compilation included), model-steps computed, and whether t_train and
t_val (fit defaults) agree run by run.

    python benchmarks/early_stop.py default                     # the default sweep: ~4 min on 2 cores
    python benchmarks/early_stop.py "wd=logspace(-1,0.5,8)" seeds=4 steps=8000   # ~20 min
    python benchmarks/early_stop.py default --record            # append the row to benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import datetime
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from throughput import append_rows, device_name  # noqa: E402

import grokjax  # noqa: E402
from grokjax.grid.expand import build_sweep  # noqa: E402
from grokjax.run.sweep import run_sweep  # noqa: E402

HEADER = ("| date | device | jax | sweep | runs | stopped | budget s | resolved s | wall ratio | model-steps ratio | "
          "t_train equal | t_val equal |")


def _same(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.sum((a == b) | (np.isnan(a) & np.isnan(b))))


def compare(items: list[str]) -> dict:
    config = None if not items or "=" in items[0] else items[0]
    overrides = items[1:] if config else items
    out: dict = {"sweep": " ".join(items) or "default"}
    with tempfile.TemporaryDirectory() as tmp:
        fits = {}
        for stop in ("budget", "resolved"):
            sweep = build_sweep(None if config == "default" else config, [*overrides, f"stop={stop}"])
            t0 = time.perf_counter()
            outcome = run_sweep(sweep, Path(tmp) / stop, quiet=True)
            out[f"{stop}_s"] = time.perf_counter() - t0
            out[f"{stop}_model_steps"] = outcome.model_steps
            fits[stop] = grokjax.fit(outcome.path).set_index("run_id").sort_index()
            out["runs"], out["stopped"] = sweep.n_runs(), outcome.tracker.n_stopped
    b, r = fits["budget"], fits["resolved"]
    for col in ("t_train", "t_val"):
        out[f"{col}_equal"] = _same(b[col].to_numpy(float), r[col].to_numpy(float))
        diff = b.index[~((b[col] == r[col]) | (b[col].isna() & r[col].isna()))]
        out[f"{col}_differ"] = [(int(i), b.at[i, col], r.at[i, col]) for i in diff]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("items", nargs="*", help="a preset or sweep file, then key=value overrides")
    ap.add_argument("--record", action="store_true", help="append the row to benchmarks/RESULTS.md")
    args = ap.parse_args(argv)
    r = compare(args.items)
    line = (f"| {datetime.date.today()} | {device_name()} | {jax.__version__} | `{r['sweep']}` | {r['runs']} | "
            f"{r['stopped']} | {r['budget_s']:.0f} | {r['resolved_s']:.0f} | {r['resolved_s'] / r['budget_s']:.2f} | "
            f"{r['resolved_model_steps'] / r['budget_model_steps']:.2f} | {r['t_train_equal']}/{r['runs']} | "
            f"{r['t_val_equal']}/{r['runs']} |")
    print(line)
    for col in ("t_train", "t_val"):
        for rid, a, b in r[f"{col}_differ"]:
            print(f"  run {rid}: {col} {a} (budget) vs {b} (resolved)")
    if args.record:
        append_rows("## Early stopping (`benchmarks/early_stop.py`)\n\nThe same sweep with `stop=budget` and "
                    "`stop=resolved` (patience 3) in one process, compilation included; model-steps counted "
                    "by the trainer, padding included; times from `grokjax fit` defaults.", HEADER, [line])
    return 0


if __name__ == "__main__":
    sys.exit(main())

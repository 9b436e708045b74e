"""What the progress measures cost: seconds per compiled chunk of the default sweep's program (12 models,
eval every 50 steps, chunks of 250) with ``measures=none``, ``norms`` (the default), ``norms+logits`` and
``norms+fourier+excluded``, compilation excluded; the same chunks the sweep runs, with no I/O.

    python benchmarks/measures_cost.py            # about three minutes on a 2-core CPU
    python benchmarks/measures_cost.py --record   # also append the rows to benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from throughput import append_rows, device_name, make, time_chunks  # noqa: E402

DEFAULT_MODEL = ["op=add", "p=47", "frac=0.5", "lr=1e-2", "d_model=32", "n_heads=4", "d_mlp=128", "n_layers=1",
                 "steps=4000", "eval_every=50", "chunk_steps=250"]
SETTINGS = ("none", "norms", "norms+logits", "norms+fourier+excluded")


def measure(n_models: int, min_seconds: float, rounds: int = 1) -> list[dict]:
    """Each setting's seconds per chunk: compiled once, then timed in ``rounds`` interleaved rounds (every
    setting once per round, so a slow spell of a shared VM hits them all), the median over rounds."""
    made = {setting: make([*DEFAULT_MODEL, f"measures={setting}"], n_models) for setting in SETTINGS}
    times: dict[str, list[float]] = {setting: [] for setting in SETTINGS}
    for _ in range(rounds):
        for setting, (prog, state, splits, hps, compile_s) in made.items():
            per_chunk, _, state = time_chunks(prog, state, splits, hps, min_seconds)  # the state is donated
            times[setting].append(per_chunk)
            made[setting] = (prog, state, splits, hps, compile_s)
    rows = []
    for setting, (prog, _, _, _, compile_s) in made.items():
        per_chunk = float(np.median(times[setting]))
        rows.append(dict(measures=setting, chunk_s=per_chunk, repeats=rounds, compile_s=compile_s,
                         model_steps_per_s=n_models * prog.chunk_steps / per_chunk))
    base = rows[0]["chunk_s"]
    for r in rows:
        r["vs_none"] = r["chunk_s"] / base
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=int, default=12)
    ap.add_argument("--seconds", type=float, default=5.0, help="minimum timed seconds per setting")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds (median taken)")
    ap.add_argument("--record", action="store_true", help="append to benchmarks/RESULTS.md")
    args = ap.parse_args(argv)
    rows = measure(args.models, args.seconds, args.rounds)
    device = device_name()
    lines = [f"| {datetime.date.today()} | {device} | {jax.__version__} | {args.models} | `{r['measures']}` | "
             f"{r['chunk_s']:.3f} | {r['model_steps_per_s']:,.0f} | {r['vs_none']:.2f}× | {r['compile_s']:.1f} |"
             for r in rows]
    print("\n".join(lines))
    if args.record:
        header = "| date | device | jax | N | measures | s per chunk (250 steps) | model-steps/s | vs none | compile s |"
        append_rows("## Cost of the progress measures (`benchmarks/measures_cost.py`)\n\nThe default sweep's "
                    "model (add mod 47, 1 layer, d_model 32, full batch), eval every 50 steps, chunks of 250.",
                    header, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())

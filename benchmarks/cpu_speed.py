"""Before/after of the CPU speed work in one run: the default sweep's program (N models of add mod 47,
1 layer, d_model 32, 4 heads, d_mlp 128, the full train split of 1,104 pairs, AdamW, measures=none),
compiled five ways and timed round-robin, so the machine's drift (±25% on a shared 2-core VM) hits all
five alike:

- ``textbook, XLA defaults``: benchmarks/textbook.py's block (grokjax before this work);
- ``textbook, no YNNPACK``: the same, compiled with ``program.CPU_COMPILER_OPTIONS``;
- ``grokjax, XLA defaults``: grokjax's block (attention as products and sums, ``layers.matmul``, the
  first block's projections as table lookups);
- ``grokjax without lookups, no YNNPACK``: grokjax's block with the first block's projections as
  products over every token row (``textbook.without_embedding_lookups``), compiled as grokjax compiles;
- ``grokjax, no YNNPACK (now)``: what grokjax compiles now.

Each round times one 50-step chunk (no evaluation) of each, then the float32 matmul peak (jax, a
2048 x 2048 product); the figures are medians over rounds, the ratios medians of the per-round ratios.
MFU (model-FLOP utilisation, as PaLM defines it): XLA's FLOP count of the textbook step (the model's
maths written plainly, the same for all five) over time, against the same round's peak. HFU
(hardware-FLOP utilisation): the FLOPs the current program executes (fewer: the lookups) instead.

    python benchmarks/cpu_speed.py                        # N=12, 10 rounds: about 2 minutes
    python benchmarks/cpu_speed.py --models 12,64 --record
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from textbook import textbook_transformer, without_embedding_lookups  # noqa: E402
from throughput import append_rows, device_name, make, matmul_peak  # noqa: E402

from grokjax.engine.program import CPU_COMPILER_OPTIONS, _chunk_fn  # noqa: E402

DEFAULT_MODEL = ["op=add", "p=47", "frac=0.5", "lr=1e-2", "d_model=32", "n_heads=4", "d_mlp=128", "n_layers=1",
                 "steps=100000", "eval_every=100000", "measures=none"]
TINY_MODEL = ["op=add", "p=7", "d_model=8", "n_heads=2", "d_mlp=16", "steps=100", "eval_every=100",
              "measures=none"]
VARIANTS = {  # name -> (block: textbook, grokjax without lookups or now; compiler options)
    "textbook, XLA defaults": ("textbook", {}),
    "textbook, no YNNPACK": ("textbook", CPU_COMPILER_OPTIONS),
    "grokjax, XLA defaults": ("now", {}),
    "grokjax without lookups, no YNNPACK": ("no lookups", CPU_COMPILER_OPTIONS),
    "grokjax, no YNNPACK (now)": ("now", CPU_COMPILER_OPTIONS),
}
BLOCKS = {"textbook": textbook_transformer, "no lookups": without_embedding_lookups, "now": contextlib.nullcontext}
BEFORE, NOW = "textbook, XLA defaults", "grokjax, no YNNPACK (now)"
SECTION = ("## CPU speed work, before and after (`benchmarks/cpu_speed.py`, five programs)\n\n"
           "The default sweep's program compiled five ways in one run and timed round-robin (50-step chunks, no "
           "evaluation); model-steps/s are medians over rounds, ratios the median of per-round ratios to the "
           "textbook block with XLA's defaults (grokjax before 2026-11-24). MFU: XLA's FLOP count of the "
           "textbook step over time, against the float32 matmul peak measured in the same rounds; HFU: the FLOPs "
           "the current program executes instead.")
HEADER = ("| date | device | jax | N | rounds | textbook, XLA defaults | textbook, no YNNPACK | grokjax, XLA defaults "
          "| grokjax without lookups, no YNNPACK | grokjax, no YNNPACK (now) | now / before | now / without lookups "
          "| matmul peak GFLOP/s | MFLOP per model-step, textbook / now | MFU before | MFU now | HFU now |")


def step_flops(prog, block: str = "now") -> float:
    """XLA's FLOP count of one vmapped training step of the program's models, with ``BLOCKS[block]``."""
    state, split, hps = prog.abstract
    step = jax.jit(jax.vmap(prog.engine.train_step_one, in_axes=(0, 0, 0, None, None, None)))
    with BLOCKS[block]():
        cost = step.lower(state, split, hps, jax.ShapeDtypeStruct((), jnp.int32), prog.inputs,
                          prog.labels).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost["flops"])


def measure(n_models: int, rounds: int, chunk_steps: int = 50, model: list[str] = DEFAULT_MODEL) -> dict:
    prog, state, splits, hps, _ = make(model + [f"chunk_steps={chunk_steps}"], n_models)
    st, sp, hp = prog.abstract
    chunks = {}
    for name, (block, options) in VARIANTS.items():
        with BLOCKS[block]():
            lowered = jax.jit(_chunk_fn(prog.engine, chunk_steps)).lower(
                st, sp, hp, jax.ShapeDtypeStruct((prog.n_models,), jnp.int32), prog.inputs, prog.labels)
        chunks[name] = lowered.compile(compiler_options=options or None)
    start = jax.device_put(jnp.ones(prog.n_models, jnp.int32))  # every model at its own step 1

    def run(chunk) -> float:
        t0 = time.perf_counter()
        jax.block_until_ready(chunk(state, splits, hps, start, prog.inputs, prog.labels)[1])
        return time.perf_counter() - t0

    for chunk in chunks.values():
        run(chunk)  # warm-up
    times = {name: [] for name in chunks}
    peaks = []
    for _ in range(rounds):
        for name, chunk in chunks.items():
            times[name].append(run(chunk))
        peaks.append(matmul_peak(2048, min_seconds=0.5))
    t = {k: np.array(v) for k, v in times.items()}
    before, now = t[BEFORE], t[NOW]
    flops = step_flops(prog, "textbook") * chunk_steps
    executed = step_flops(prog, "now") * chunk_steps
    peak = np.array(peaks)
    return dict(n=n_models, rounds=rounds, peak=float(np.median(peak)),
                rates={k: float(n_models * chunk_steps / np.median(v)) for k, v in t.items()},
                ratios={k: float(np.median(before / v)) for k, v in t.items()},
                now_vs_no_lookups=float(np.median(t["grokjax without lookups, no YNNPACK"] / now)),
                mfu_before=float(np.median(flops / before / peak)), mfu_now=float(np.median(flops / now / peak)),
                hfu_now=float(np.median(executed / now / peak)),
                flops_per_model_step=flops / chunk_steps / n_models,
                executed_per_model_step=executed / chunk_steps / n_models)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="12", help="comma-separated model counts")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--record", action="store_true", help="append rows to benchmarks/RESULTS.md")
    ap.add_argument("--tiny", action="store_true", help="a tiny model and 5-step chunks (the test's smoke run)")
    args = ap.parse_args(argv)
    rows = []
    for n in (int(x) for x in args.models.split(",")):
        r = measure(n, args.rounds, chunk_steps=5, model=TINY_MODEL) if args.tiny else measure(n, args.rounds)
        print(f"N={n}: " + ", ".join(f"{k} {v:,.0f} ({r['ratios'][k]:.2f}x)" for k, v in r["rates"].items())
              + f"; now / without lookups {r['now_vs_no_lookups']:.2f}x; peak {r['peak'] / 1e9:.0f} GFLOP/s; "
              f"MFU {100 * r['mfu_before']:.0f}% -> {100 * r['mfu_now']:.0f}%, HFU now {100 * r['hfu_now']:.0f}% "
              f"({r['flops_per_model_step'] / 1e6:.3g} MFLOP per model-step, {r['executed_per_model_step'] / 1e6:.3g} "
              "executed)", flush=True)
        rates = " | ".join(f"{v:,.0f}" for v in r["rates"].values())
        rows.append(f"| {datetime.date.today()} | {device_name()} | {jax.__version__} | {n} | {r['rounds']} | {rates} "
                    f"| {r['ratios'][NOW]:.2f}x | {r['now_vs_no_lookups']:.2f}x | {r['peak'] / 1e9:.0f} "
                    f"| {r['flops_per_model_step'] / 1e6:.3g} / {r['executed_per_model_step'] / 1e6:.3g} "
                    f"| {100 * r['mfu_before']:.0f}% | {100 * r['mfu_now']:.0f}% | {100 * r['hfu_now']:.0f}% |")
    if args.record:
        append_rows(SECTION, HEADER, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())

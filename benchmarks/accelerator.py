"""One command for the first GPU (or TPU) grokjax is lent: measures, on whatever accelerator JAX sees, what
the project needs to know there, and appends it to benchmarks/RESULTS.md with the device named.

    python benchmarks/accelerator.py            # on the accelerator: a few minutes; appends a row
    python benchmarks/accelerator.py --tiny     # a smoke test on any device: a tiny grid, float32 only

Measured, for the headline grid `grokjax sweep nanda2023 'wd=logspace(-3,1,32)' seeds=16` (512 models):
- training model-steps/s of its program (in the batches the memory chooser picks) and the projected wall
  time of its 40k steps, at precision float32, tf32 and bfloat16;
- the matmul peak measured in each of those precisions, and the MFU of each program against its own peak
  (model FLOPs from XLA's cost analysis of one training step);
- the compile time, the share of held-out evaluation at the preset's eval_every, and the device's idle
  fraction between chunks when the sweep's own trainer drives it (1 - chunks' device time / wall time);
- the memory chooser's choice for a grid four times larger than fits;
- with torch installed, a torch.func ensemble of the same model on the same device (model-steps/s).
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

import jax

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import throughput  # noqa: E402
from throughput import device_name, eval_share, matmul_peak, time_chunks, timed_rate  # noqa: E402

from grokjax.engine.data import hparams_for  # noqa: E402
from grokjax.engine.memory import choose_models_per_batch  # noqa: E402
from grokjax.engine.program import Program, train_flops_per_chunk  # noqa: E402
from grokjax.engine.single import engine_for  # noqa: E402
from grokjax.grid.expand import build_sweep  # noqa: E402
from grokjax.run.pool import SlotPool  # noqa: E402

HEADLINE = ["wd=logspace(-3,1,32)", "seeds=16", "chunk_steps=100"]
TINY = ["p=7", "d_model=16", "n_heads=2", "d_mlp=32", "wd=[0.1,1]", "chunk_steps=10", "steps=1000"]
PRECISIONS = ("float32", "tf32", "bfloat16")
HEADER = ("| date | device | jax | precision | slots | model-steps/s | projected 40k wall "
          "| matmul peak TFLOP/s | MFU | compile s | eval share | idle between chunks | torch.func model-steps/s |")


def idle_fraction(engine, runs, per_batch: int, chunk_s: float, n_chunks: int) -> float:
    """Drive ``n_chunks`` chunks through the sweep's SlotPool (fetching each chunk's metrics as the sweep
    does) and compare with the device time of as many chunks back to back."""
    pool = SlotPool(engine, runs[:per_batch], per_batch, lambda n: Program.get(engine, n))
    chunks = pool.chunks(should_stop=lambda: False)
    next(chunks)  # the first chunk (warm)
    t0 = time.perf_counter()
    done = 0
    for _ in range(n_chunks):
        next(chunks)
        done += 1
    wall = time.perf_counter() - t0
    return max(0.0, 1 - done * chunk_s / wall)


def torch_func_rate(cfg: dict, n: int, seconds: float) -> float | None:
    try:
        import torch  # noqa: F401
    except ImportError:
        return None
    import torch_baselines

    step, _ = torch_baselines.ensemble_step(n, compiled=False, cfg=cfg)
    return n * timed_rate(step, seconds)


def measure(precision: str, args: list[str], seconds: float, n_chunks: int, peak_n: int) -> dict:
    sweep = build_sweep("nanda2023", [*args, f"precision={precision}"])
    (group, runs), = sweep.groups()
    engine = engine_for(group, runs)
    t0 = time.perf_counter()
    per_batch, why = choose_models_per_batch(engine, len(runs))
    prog = Program.get(engine, per_batch)
    compile_s = time.perf_counter() - t0
    hps = prog.put(hparams_for(runs[:per_batch], engine.table.n_pairs))
    state, splits = prog.init(hps)
    chunk_s, _, _ = time_chunks(prog, state, splits, hps, seconds, first_step=1)
    rate = per_batch * prog.chunk_steps / chunk_s
    flops = train_flops_per_chunk(prog)
    peak = matmul_peak(peak_n, seconds, precision)
    full, one = prog.bytes or 0, Program.get(engine, 1).bytes or 0
    # a grid 4x larger than fits: the chooser's answer for a quarter of the memory (at least 1 model's worth)
    bigger, bigger_why = (choose_models_per_batch(engine, len(runs), budget=max(full // 4, one)) if full
                          else (None, "no memory analysis on this backend"))
    cfg = dict(op=group.task.op, p=group.task.p, frac=runs[0].get("hp.frac"), n_layers=group.model.n_layers,
               d_model=group.model.d_model, n_heads=group.model.n_heads, d_mlp=group.model.d_mlp,
               eval_every=group.train.eval_every, steps=group.train.steps, chunk_steps=group.train.chunk_steps,
               batch_size=group.train.batch_size, precision=precision)
    return dict(precision=precision, models_per_batch=per_batch, batching=why, model_steps_per_s=rate,
                projected_wall_s=len(runs) * group.train.steps / rate, matmul_peak_flops=peak,
                mfu=(flops / chunk_s / peak) if flops else None, compile_s=compile_s,
                eval_share=eval_share(cfg, min(per_batch, 64), seconds),
                idle_between_chunks=idle_fraction(engine, runs, per_batch, chunk_s, n_chunks),
                larger_grid=dict(models_per_batch=bigger, why=bigger_why),
                torch_func_model_steps_per_s=(torch_func_rate({k: v for k, v in cfg.items() if k != "precision"},
                                                              min(per_batch, 64), seconds)
                                              if precision == "float32" else None))


def record(results: list[dict], device: str) -> None:
    lines = []
    for r in results:
        torch_cell = f"{r['torch_func_model_steps_per_s']:,.0f}" if r["torch_func_model_steps_per_s"] else "-"
        mfu = f"{100 * r['mfu']:.0f}%" if r["mfu"] is not None else "-"
        lines.append(f"| {datetime.date.today().isoformat()} | {device} | {jax.__version__} | {r['precision']} "
                     f"| {r['models_per_batch']} | {r['model_steps_per_s']:,.0f} "
                     f"| {r['projected_wall_s'] / 60:.1f} min "
                     f"| {r['matmul_peak_flops'] / 1e12:.2f} | {mfu} | {r['compile_s']:.1f} "
                     f"| {100 * r['eval_share']:.2f}% | {100 * r['idle_between_chunks']:.1f}% | {torch_cell} |")
    section = ("## Accelerator (`benchmarks/accelerator.py`)\n\nThe headline grid `grokjax sweep nanda2023 "
               "'wd=logspace(-3,1,32)' seeds=16` (512 models) on the device named, one row per precision; "
               "rows marked tiny are the smoke test's tiny grid, not the headline.")
    throughput.append_rows(section, HEADER, lines)


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiny", action="store_true", help="a tiny grid and timings: a smoke test on any device")
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--no-record", action="store_true", help=f"do not append to {throughput.RESULTS_MD.name}")
    a = ap.parse_args(argv)
    args, seconds, n_chunks, peak_n = ((TINY, 0.05, 3, 256) if a.tiny else (HEADLINE, 3.0, 20, 8192))
    device = device_name() + (" (tiny)" if a.tiny else "")
    results = []
    for precision in PRECISIONS[:1] if a.tiny else PRECISIONS:  # tiny: one program's compilations only
        r = measure(precision, args, seconds, n_chunks, peak_n)
        results.append(r)
        print(f"{precision}: {r['models_per_batch']} slots, {r['model_steps_per_s']:,.0f} model-steps/s, "
              f"projected {r['projected_wall_s'] / 60:.1f} min; peak {r['matmul_peak_flops'] / 1e12:.2f} TFLOP/s, "
              f"MFU {100 * (r['mfu'] or 0):.0f}%; compile {r['compile_s']:.1f} s; eval share "
              f"{100 * r['eval_share']:.2f}%; idle {100 * r['idle_between_chunks']:.1f}%; a 4x larger grid: "
              f"{r['larger_grid']['why']}", flush=True)
    if a.json:
        a.json.write_text(json.dumps(dict(device=device, results=results), indent=2, default=float))
    if not a.no_record:
        record(results, device)
    return results


if __name__ == "__main__":
    main()

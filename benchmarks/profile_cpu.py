"""Where the time of one training step goes on this device, for the default sweep's program (12 models of
add mod 47, 1 layer, d_model 32, full batch of 1,104 pairs, AdamW, ``measures=none``).

Each part of the step is jitted alone, vmapped over the 12 models exactly as the sweep's program vmaps
it, and timed over repeated calls (compilation excluded); the chunk is the sweep's own compiled scan of
250 steps without evaluation. Differences between the nested parts give each part's share. The op census
counts the instructions of the compiled chunk's optimized HLO by opcode.

    python benchmarks/profile_cpu.py              # about a minute on a 2-core CPU
    python benchmarks/profile_cpu.py --record     # also write benchmarks/PROFILE.md
"""

from __future__ import annotations

import argparse
import collections
import datetime
import gzip
import json
import re
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from throughput import device_name, make, time_chunks  # noqa: E402

from grokjax.engine.program import compiler_options  # noqa: E402

DEFAULT_MODEL = ["op=add", "p=47", "frac=0.5", "lr=1e-2", "d_model=32", "n_heads=4", "d_mlp=128", "n_layers=1",
                 "steps=100000", "eval_every=100000", "chunk_steps=250", "measures=none"]
PROFILE_MD = Path(__file__).resolve().parent / "PROFILE.md"


def per_call(fn, *args, min_seconds: float) -> float:
    """Median seconds of one call of the jitted ``fn``, compiled as the sweep compiles its programs
    (``compiler_options``), after a warm-up call."""
    fn = fn.lower(*args).compile(compiler_options=compiler_options(jax.devices()[0].platform) or None)
    jax.block_until_ready(fn(*args))
    times: list[float] = []
    while sum(times) < min_seconds or len(times) < 5:
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def traced_ops(prog, state, splits, hps, top: int = 16) -> dict:
    """Where one compiled chunk's time goes, op by op: the chunk run once under ``jax.profiler.trace``
    (XLA's CPU runtime records every executed HLO instruction), the Perfetto JSON read back here (no trace
    viewer needed), durations summed per instruction and matched with the optimized HLO for its shape and
    the source it came from (the op_name's last two parts). Tracing slows every op a little; shares are
    what to read."""
    chunk = prog._compiled(prog.chunk_steps)
    start = jax.device_put(jnp.int32(1))
    with tempfile.TemporaryDirectory() as tmp:
        with jax.profiler.trace(tmp, create_perfetto_trace=True):
            state, metrics, _ = chunk(state, splits, hps, start, prog.inputs, prog.labels)
            jax.block_until_ready(metrics)
        (path,) = Path(tmp).rglob("*.trace.json.gz")
        events = json.loads(gzip.decompress(path.read_bytes()))["traceEvents"]
    hlo = {}
    for line in chunk.as_text().splitlines():
        m = re.match(r"\s*(?:ROOT )?%([\w.\-]+) = (\S+?)(?:\{[^}]*\})? ", line)
        if m:
            src = re.search(r'op_name="([^"]*)"', line)
            hlo[m.group(1)] = (m.group(2), "/".join(src.group(1).split("/")[-2:]) if src else "")
    per_op = collections.Counter()
    for e in events:
        if e.get("ph") == "X" and e["name"] in hlo:
            per_op[e["name"]] += e["dur"] * 1e-6
    total = sum(per_op.values())
    kinds = collections.Counter()
    for name, s in per_op.items():
        kinds["dot" if name.startswith("dot") else "fusion (elementwise, reductions, copies)"
              if "fusion" in name else "other"] += s
    return dict(total=total, steps=prog.chunk_steps, kinds=kinds,
                top=[(name, s, *hlo[name]) for name, s in per_op.most_common(top)])


def op_census(hlo_text: str) -> collections.Counter:
    """Instructions of an optimized HLO module by opcode (``%x = f32[...] dot(...)`` -> ``dot``)."""
    ops = re.findall(r"=\s+[^=]*?\s([a-z][a-z0-9\-]*)\(", hlo_text)
    return collections.Counter(ops)


def profile(n_models: int, seconds: float) -> dict:
    prog, state, splits, hps, _ = make(DEFAULT_MODEL, n_models)
    engine = prog.engine
    inputs, labels = prog.inputs, prog.labels
    chunk_s, _, state = time_chunks(prog, state, splits, hps, seconds, first_step=1)
    step_s = chunk_s / prog.chunk_steps

    def batch(split):
        return inputs[split.train_idx], labels[split.train_idx], split.train_w

    xb, yb, wb = jax.jit(jax.vmap(batch))(splits)
    forward = jax.jit(jax.vmap(lambda p, x, y, w: engine.loss_one(p, x, y, w)[0]))
    grad = jax.jit(jax.vmap(lambda p, x, y, w: jax.grad(lambda q: engine.loss_one(q, x, y, w)[0])(p)))
    grads = grad(state.params, xb, yb, wb)

    def grad_without(frozen: str):
        """Forward + backward with the gradient of one top-level parameter group not asked for (the
        backward still runs through it to reach the others): the difference is that group's weight
        gradients."""
        def one(p, x, y, w):
            def loss(q):
                q = {k: jax.tree.map(jax.lax.stop_gradient, v) if k == frozen else v for k, v in q.items()}
                return engine.loss_one(q, x, y, w)[0]
            return jax.grad(loss)(p)
        return jax.jit(jax.vmap(one))

    # the batched matmuls of the MLP's first layer, as one [models, batch, in] x [models, in, out] product
    kx = jax.random.key(0)
    n_b, d_in, d_out = xb.shape[1], engine.group.model.d_model, engine.group.model.d_mlp
    act = jax.random.normal(kx, (n_models, n_b, d_in), engine.dtype)
    dy = jax.random.normal(kx, (n_models, n_b, d_out), engine.dtype)
    w = jax.random.normal(kx, (n_models, d_in, d_out), engine.dtype)
    matmul_flops = 2 * n_models * n_b * d_in * d_out
    matmuls = {
        "forward x@W": per_call(jax.jit(lambda a, b: jnp.einsum("mbi,mio->mbo", a, b)), act, w,
                                min_seconds=seconds / 3),
        "weight gradient x^T@dY": per_call(jax.jit(lambda a, b: jnp.einsum("mbi,mbo->mio", a, b)), act, dy,
                                           min_seconds=seconds / 3),
        "weight gradient from a kept x^T: [in, B]@dY (layers.matmul)": per_call(
            jax.jit(lambda a, b: jnp.einsum("mib,mbo->mio", a, b)), jnp.swapaxes(act, 1, 2), dy,
            min_seconds=seconds / 3),
        "input gradient dY@W^T": per_call(jax.jit(lambda a, b: jnp.einsum("mbo,mio->mbi", a, b)), dy, w,
                                          min_seconds=seconds / 3),
    }

    def update(g, opt_state, params):
        updates, new_opt = engine.optimizer().update(g, opt_state, params)
        return optax.apply_updates(params, updates), new_opt

    optimizer = jax.jit(jax.vmap(update))
    step = jax.jit(jax.vmap(engine.train_step_one, in_axes=(0, 0, 0, None, None, None)))
    evaluate = jax.jit(jax.vmap(engine.evaluate_one, in_axes=(0, 0, None, None)))
    t = dict(
        gather=per_call(jax.jit(jax.vmap(batch)), splits, min_seconds=seconds),
        forward=per_call(forward, state.params, xb, yb, wb, min_seconds=seconds),
        forward_backward=per_call(grad, state.params, xb, yb, wb, min_seconds=seconds),
        optimizer=per_call(optimizer, grads, state.opt_state, state.params, min_seconds=seconds),
        train_step=per_call(step, state, splits, hps, jnp.int32(1), inputs, labels, min_seconds=seconds),
        evaluation=per_call(evaluate, state.params, splits, inputs, labels, min_seconds=seconds),
    )
    without = {k: per_call(grad_without(k), state.params, xb, yb, wb, min_seconds=seconds)
               for k in state.params}
    census = op_census(prog._compiled(prog.chunk_steps).as_text())
    traced = traced_ops(prog, state, splits, hps)
    return dict(n_models=n_models, chunk_steps=prog.chunk_steps, step_in_scan=step_s, **t, census=census, traced=traced,
                without=without, matmuls=matmuls, matmul_flops=matmul_flops, shape=(n_b, d_in, d_out))


def report(r: dict) -> str:
    s = r["step_in_scan"]
    rows = [
        ("one step inside the compiled 250-step scan (the sweep's unit of work)", r["step_in_scan"]),
        ("train step jitted alone (gather + forward + backward + AdamW + divergence checks)", r["train_step"]),
        ("forward + backward (loss and gradient)", r["forward_backward"]),
        ("forward only", r["forward"]),
        ("backward (forward + backward minus forward)", r["forward_backward"] - r["forward"]),
        ("AdamW update and apply (optax, per-tensor)", r["optimizer"]),
        ("gather of the batch's inputs and labels", r["gather"]),
        ("rest of the step (train step minus its parts: divergence checks, metrics, copies)",
         r["train_step"] - r["forward_backward"] - r["optimizer"] - r["gather"]),
        ("one evaluation (whole validation split, not in the step above)", r["evaluation"]),
    ]
    lines = [f"| part | ms per call ({r['n_models']} models) | share of the scan step |", "|---|---|---|"]
    lines += [f"| {name} | {1e3 * v:.2f} | {100 * v / s:.0f}% |" for name, v in rows]
    lines += ["", "| forward + backward without one group's weight gradients | ms per call | saved |", "|---|---|---|"]
    lines += [f"| without `{k}` | {1e3 * v:.2f} | {1e3 * (r['forward_backward'] - v):.2f} |"
              for k, v in r["without"].items()]
    n_b, d_in, d_out = r["shape"]
    lines += ["", f"| batched matmul, {r['n_models']} x [{n_b}, {d_in}] x [{d_in}, {d_out}] | ms | GFLOP/s |",
              "|---|---|---|"]
    lines += [f"| {k} | {1e3 * v:.2f} | {r['matmul_flops'] / v / 1e9:.0f} |" for k, v in r["matmuls"].items()]
    tr = r["traced"]
    lines += ["", f"Inside the compiled chunk (`jax.profiler` trace of one {tr['steps']}-step chunk, "
              f"{1e3 * tr['total'] / tr['steps']:.1f} ms of op time per step while traced), by kind: "
              + ", ".join(f"{k} {100 * v / tr['total']:.0f}%" for k, v in tr["kinds"].most_common()) + ".", "",
              "| HLO instruction | ms per step | share | shape | from |", "|---|---|---|---|---|"]
    lines += [f"| `{name}` | {1e3 * sec / tr['steps']:.2f} | {100 * sec / tr['total']:.1f}% | `{shape}` | `{src}` |"
              for name, sec, shape, src in tr["top"]]
    top = ", ".join(f"{op} {k}" for op, k in r["census"].most_common(14))
    lines += ["", f"Optimized HLO of the compiled chunk, instructions by opcode (top 14): {top}."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=int, default=12)
    ap.add_argument("--seconds", type=float, default=3.0, help="minimum timed seconds per part")
    ap.add_argument("--record", action="store_true", help="write benchmarks/PROFILE.md")
    args = ap.parse_args(argv)
    r = profile(args.models, args.seconds)
    text = report(r)
    print(text)
    if args.record:  # the measured part is replaced; the written reading after it ("## ...") is kept
        kept = PROFILE_MD.read_text() if PROFILE_MD.exists() else ""
        kept = kept[kept.index("\n## "):] if "\n## " in kept else ""
        PROFILE_MD.write_text(
            f"# Where the time goes on the CPU\n\nMeasured {datetime.date.today()} on {device_name()}, jax "
            f"{jax.__version__}, with `python benchmarks/profile_cpu.py --record`: the default sweep's program "
            f"({args.models} models of add mod 47, 1 layer, d_model 32, 4 heads, d_mlp 128, full batch of "
            f"1,104 pairs, AdamW, measures=none), compiled as the sweep compiles it. Each part jitted alone and "
            f"vmapped over the models as the sweep does; median of repeated calls, compilation excluded.\n\n"
            f"{text}\n{kept}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

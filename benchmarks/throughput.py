"""Throughput of the grokjax training step: vmapped vs one-at-a-time vs a PyTorch reference, MFU, compile
time and the share of evaluation. The benchmark is the training step without the I/O (nanoGPT's bench.py):
it times the same compiled chunks the sweep runs, with no Parquet writer.

    python benchmarks/throughput.py --quick --json out.json            # <= 2 minutes on a 2-core CPU
    python benchmarks/throughput.py --record                           # also append to benchmarks/RESULTS.md

Measured in ONE run on one device with one model config:
- vmapped: N models in one program (model-steps/s), N in --models;
- sequential: the same N models one after another with the same jitted single-model program;
- torch: the same model and optimizer written like the public grokking repos (one model, eager loop),
  when torch is installed (null otherwise);
- matmul peak: a large float32 matmul; achieved FLOP/s of the training step from XLA's cost analysis;
  MFU = achieved / peak (for the --mfu config, a mid-size model). XLA counts the FLOPs the program
  executes: for a transformer without LayerNorm that is fewer than the textbook model's (the first
  block's projections are table lookups), so there the figure is a hardware-FLOP utilisation;
  benchmarks/cpu_speed.py reports both;
- compile time of the largest vmapped program; the evaluation share at the default eval_every.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from grokjax.engine.data import hparams_for  # noqa: E402
from grokjax.engine.program import Program, train_flops_per_chunk  # noqa: E402
from grokjax.engine.single import engine_for  # noqa: E402
from grokjax.grid.expand import build_sweep  # noqa: E402

RESULTS_MD = Path(__file__).resolve().parent / "RESULTS.md"


def make(args: list[str], n: int):
    """A compiled program for n models of the config; returns (program, engine, state, splits, hps, runs)."""
    sweep = build_sweep(None, args + [f"seeds={n}", "wd=1"])
    (group, runs), = sweep.groups()
    engine = engine_for(group, runs)
    t0 = time.perf_counter()
    prog = Program.get(engine, n)
    compile_s = time.perf_counter() - t0
    hps = prog.put(hparams_for(runs, engine.table.n_pairs))
    state, splits = prog.init(hps)
    return prog, state, splits, hps, compile_s


def time_chunks(prog: Program, state, splits, hps, min_seconds: float, first_step: int = 0
                ) -> tuple[float, int, object]:
    """Seconds per chunk (median over repeats after one warm-up), and the state to continue from.
    Every repeat runs the steps first_step..first_step+K-1, so it holds the same evaluations."""
    start = jax.device_put(jnp.int32(first_step))
    state, metrics, _ = prog.train_chunk(state, splits, hps, start)
    jax.block_until_ready(metrics)
    times: list[float] = []
    while sum(times) < min_seconds or len(times) < 3:
        t0 = time.perf_counter()
        state, metrics, _ = prog.train_chunk(state, splits, hps, start)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), len(times), state


def vmapped_rate(args: list[str], n: int, min_seconds: float, first_step: int = 0) -> dict:
    prog, state, splits, hps, compile_s = make(args, n)
    per_chunk, _, _ = time_chunks(prog, state, splits, hps, min_seconds, first_step)
    flops = train_flops_per_chunk(prog)
    return dict(n=n, model_steps_per_s=n * prog.chunk_steps / per_chunk, compile_s=compile_s,
                achieved_flops=(flops / per_chunk) if flops else None, chunk_s=per_chunk)


def sequential_rate(args: list[str], n: int, min_seconds: float) -> float:
    """The N models trained one after another with the same jitted single-model program."""
    sweep = build_sweep(None, args + [f"seeds={n}", "wd=1"])
    (group, runs), = sweep.groups()
    engine = engine_for(group, runs)
    prog = Program.get(engine, 1)
    steps = 0
    elapsed = 0.0
    start = jax.device_put(jnp.int32(0))
    for run in runs:
        hps = prog.put(hparams_for([run], engine.table.n_pairs))
        state, splits = prog.init(hps)
        state, metrics, _ = prog.train_chunk(state, splits, hps, start)  # warm
        jax.block_until_ready(metrics)
        t0 = time.perf_counter()
        state, metrics, _ = prog.train_chunk(state, splits, hps, start)
        jax.block_until_ready(metrics)
        elapsed += time.perf_counter() - t0
        steps += prog.chunk_steps
        if elapsed > min_seconds and steps >= 4 * prog.chunk_steps:
            break
    return steps / elapsed


def matmul_peak(n: int, min_seconds: float = 1.0, precision: str = "float32") -> float:
    """FLOP/s of an n x n matmul: float32 at full precision, TF32 (``tf32``), or bfloat16 inputs."""
    dtype = jnp.bfloat16 if precision == "bfloat16" else jnp.float32
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32).astype(dtype)
    with jax.default_matmul_precision("tensorfloat32" if precision == "tf32" else "highest"):
        f = jax.jit(lambda x: x @ x)
        f(a).block_until_ready()
        times = []
        while sum(times) < min_seconds or len(times) < 3:
            t0 = time.perf_counter()
            f(a).block_until_ready()
            times.append(time.perf_counter() - t0)
    return 2 * n**3 / min(times)


def eval_share(cfg: dict, n: int, min_seconds: float) -> float:
    """Share of training time spent on held-out evaluation at the config's eval_every:
    t_eval / (t_eval + eval_every * t_step), timing the vmapped evaluation and a training chunk apart
    (a with/without difference of two chunk timings is lost in their noise)."""
    prog, state, splits, hps, _ = make(config_args(cfg | {"eval_every": 10**9}), n)
    chunk_s, _, state = time_chunks(prog, state, splits, hps, min_seconds, first_step=1)
    evaluate = jax.jit(jax.vmap(prog.engine.evaluate_one, in_axes=(0, 0, None, None)))
    jax.block_until_ready(evaluate(state.params, splits, prog.inputs, prog.labels))
    times = []
    while sum(times) < min_seconds or len(times) < 3:
        t0 = time.perf_counter()
        jax.block_until_ready(evaluate(state.params, splits, prog.inputs, prog.labels))
        times.append(time.perf_counter() - t0)
    t_eval, t_step = float(np.median(times)), chunk_s / prog.chunk_steps
    return t_eval / (t_eval + cfg["eval_every"] * t_step)


def vector_extensions(cpuinfo: str) -> str:
    """The widest x86 vector extension a /proc/cpuinfo text lists (float32 matmul peak depends on it:
    an AVX-512 host can measure about twice the GFLOP/s of an AVX2 one of the same kind)."""
    flags = set()
    for line in cpuinfo.splitlines():
        if line.startswith(("flags", "Features")):
            flags |= set(line.split(":", 1)[1].split())
    for name in ("avx512f", "avx2", "avx", "sse4_2", "asimd", "neon"):
        if name in flags:
            return {"avx512f": "AVX-512", "avx2": "AVX2", "avx": "AVX", "sse4_2": "SSE4.2"}.get(name, name.upper())
    return "unknown vector extensions"


def device_name() -> str:
    d = jax.devices()[0]
    if d.platform != "cpu":
        return f"{d.platform}: {d.device_kind}"
    model, ext = platform.processor() or "cpu", "unknown vector extensions"
    try:
        text = Path("/proc/cpuinfo").read_text()
        ext = vector_extensions(text)
        for line in text.splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import os

    return f"cpu: {model}, {ext} ({os.cpu_count()} cores)"


def answer_only_saving(args: list[str]) -> float:
    """FLOPs of one training step with the full 3-position last layer / with answer-only compute."""
    from grokjax.models.transformer import Transformer

    sweep = build_sweep(None, args + ["seeds=1", "wd=1"])
    (group, runs), = sweep.groups()
    engine = engine_for(group, runs)
    t = engine.table
    x, y = jnp.asarray(t.inputs), jnp.asarray(t.labels)

    def flops(answer_only: bool) -> float:
        model = Transformer(group.model, t.vocab_size, t.n_symbols, answer_only=answer_only)
        params = model.init(jax.random.key(0), x[:1])["params"]

        def loss(p):
            logits = model.apply({"params": p}, x)
            return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], 1))

        cost = jax.jit(jax.grad(loss)).lower(params).compile().cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        return float(cost["flops"])

    return flops(False) / flops(True)


def torch_setup(cfg: dict, sdpa: bool = True, answer_only: bool = False):
    """The config's model in PyTorch, written like the public grokking repos (embedding + learned
    positions, causal attention, a ReLU MLP, unembedding of the last position), and the train split:
    (make_model, x [n_train, 3], y [n_train], device); None when torch is not installed. Attention goes
    through scaled_dot_product_attention, or (``sdpa=False``) explicit matmuls, which torch.func.vmap can
    batch (it has no batching rule for SDPA's CPU kernel and falls back to a loop over models). With
    ``answer_only`` the last block computes only the answer position's query, residual and MLP, as grokjax
    does (the same FLOPs; the public repos compute every position)."""
    try:
        import torch
    except ImportError:
        return None
    from grokjax.config.structure import TaskConfig
    from grokjax.tasks.tables import make_table

    torch.manual_seed(0)
    dev = "cuda" if torch.cuda.is_available() else "cpu"  # the same device as JAX's, where there is one
    t = make_table(TaskConfig(cfg["op"], cfg["p"]))
    n_train = int(math.floor(cfg["frac"] * t.n_pairs + 0.5))
    perm = torch.randperm(t.n_pairs)[:n_train]
    x = torch.tensor(t.inputs, dtype=torch.long)[perm].to(dev)
    y = torch.tensor(t.labels, dtype=torch.long)[perm].to(dev)
    d, h, d_mlp, n_layers = cfg["d_model"], cfg["n_heads"], cfg["d_mlp"], cfg["n_layers"]
    nn = torch.nn

    class Block(nn.Module):
        def __init__(self, last: bool = False):
            super().__init__()
            self.last = last and answer_only
            self.qkv = nn.Linear(d, 3 * d, bias=False)
            self.out = nn.Linear(d, d, bias=False)
            self.mlp = nn.Sequential(nn.Linear(d, d_mlp), nn.ReLU(), nn.Linear(d_mlp, d))

        def forward(self, z):
            b, s, _ = z.shape
            q, k, v = self.qkv(z).view(b, s, 3, h, d // h).permute(2, 0, 3, 1, 4)
            if self.last:  # the answer's query sees every position: no mask
                att = ((q[:, :, -1:] @ k.transpose(-2, -1)) / math.sqrt(d // h)).softmax(-1) @ v
                z = z[:, -1:] + self.out(att.transpose(1, 2).reshape(b, 1, d))
                return z + self.mlp(z)
            if sdpa:
                att = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
            else:
                scores = (q @ k.transpose(-2, -1)) / math.sqrt(d // h)
                causal = torch.ones(s, s, dtype=torch.bool, device=z.device).triu(1)
                att = scores.masked_fill(causal, float("-inf")).softmax(-1) @ v
            z = z + self.out(att.transpose(1, 2).reshape(b, s, d))
            return z + self.mlp(z)

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(t.vocab_size, d)
            self.pos = nn.Parameter(torch.randn(3, d) / math.sqrt(d))
            self.blocks = nn.ModuleList([Block(i == n_layers - 1) for i in range(n_layers)])
            self.unembed = nn.Linear(d, t.n_symbols, bias=False)

        def forward(self, tokens):
            z = self.embed(tokens) + self.pos
            for blk in self.blocks:
                z = blk(z)
            return self.unembed(z[:, -1])

    return (lambda: Model().to(dev)), x, y, dev


def timed_rate(step, min_seconds: float, warmup: int = 5) -> float:
    """Calls of ``step`` per second after ``warmup`` calls (each call must finish its work)."""
    for _ in range(warmup):
        step()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < min_seconds or n < 10:
        step()
        n += 1
    return n / (time.perf_counter() - t0)


def torch_rate(cfg: dict, min_seconds: float) -> float | None:
    """The reference: one model, eager PyTorch, full batch AdamW, the way public grokking repos train."""
    setup = torch_setup(cfg)
    if setup is None:
        return None
    import torch

    make_model, x, y, _ = setup
    model = make_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1.0, betas=(0.9, 0.98))

    def step():
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()  # the public repos log the loss every step

    return timed_rate(step, min_seconds)


def headline(min_seconds: float) -> dict:
    """`grokjax sweep nanda2023 'wd=logspace(-3,1,32)' seeds=16`: 512 models, 40k full-batch steps.
    Measures model-steps/s of its program (in the batches that fit the device) and projects wall time."""
    sweep = build_sweep("nanda2023", ["wd=logspace(-3,1,32)", "seeds=16", "chunk_steps=100"])
    (group, runs), = sweep.groups()
    engine = engine_for(group, runs)
    from grokjax.engine.memory import choose_models_per_batch

    per_batch, why = choose_models_per_batch(engine, len(runs))
    prog = Program.get(engine, per_batch)
    hps = prog.put(hparams_for(runs[:per_batch], engine.table.n_pairs))
    state, splits = prog.init(hps)
    chunk_s, _, _ = time_chunks(prog, state, splits, hps, min_seconds, first_step=1)
    rate = per_batch * prog.chunk_steps / chunk_s
    flops = train_flops_per_chunk(prog)
    return dict(models_per_batch=per_batch, batching=why, model_steps_per_s=rate,
                projected_wall_s=len(runs) * group.train.steps / rate,
                achieved_flops=flops / chunk_s if flops else None)


def config_args(cfg: dict) -> list[str]:
    return [f"{k}={v}" for k, v in cfg.items()]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="short timings (<= 2 minutes on a 2-core CPU)")
    ap.add_argument("--tiny", action="store_true",
                    help="a smoke test: tiny configs and timings (seconds; the figures mean nothing)")
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--record", action="store_true", help=f"append a row to {RESULTS_MD.name}")
    ap.add_argument("--models", default=None, help="comma-separated N values (default 1,8,64 CPU; 1,64,512 GPU)")
    ap.add_argument("--p", type=int, default=31, help="modulus of the small config (default 31)")
    ap.add_argument("--mfu-p", type=int, default=59, help="modulus of the mid-size MFU config (default 59)")
    ap.add_argument("--headline", action="store_true",
                    help="also time the 512-model nanda2023 sweep and project its wall time (default on GPU)")
    a = ap.parse_args(argv)
    on_gpu = jax.default_backend() == "gpu"
    models = [int(x) for x in (a.models or ("1,64,512" if on_gpu else "1,8,64")).split(",")]
    secs = 0.05 if a.tiny else 0.5 if a.quick else 3.0
    small = dict(op="add", p=a.p, frac=0.5, n_layers=1, d_model=32, n_heads=4, d_mlp=128, steps=100_000,
                 eval_every=100, chunk_steps=50, batch_size="full")
    mid = dict(op="add", p=a.mfu_p, frac=0.3, n_layers=1, d_model=128, n_heads=4, d_mlp=512, steps=100_000,
               eval_every=100, chunk_steps=20, batch_size="full")
    if a.tiny:  # one tiny config for both: its compiled programs are shared
        small |= dict(d_model=16, n_heads=2, d_mlp=32, chunk_steps=10)
        mid = dict(small)
    by_n = {}
    for n in models:
        v = vmapped_rate(config_args(small), n, secs)
        s = sequential_rate(config_args(small), n, secs)
        by_n[n] = dict(vmapped=v["model_steps_per_s"], sequential=s, compile_s=v["compile_s"])
        print(f"N={n:4d}  vmapped {v['model_steps_per_s']:10,.0f}  sequential {s:10,.0f} model-steps/s  "
              f"(x{v['model_steps_per_s'] / s:.2f}), compile {v['compile_s']:.1f}s", flush=True)
    n_max = max(models)
    torch_ms = torch_rate(small, secs)
    print(f"torch reference: {torch_ms:,.0f} model-steps/s" if torch_ms else "torch reference: not installed")
    n_mid = 64 if on_gpu else 2 if a.tiny else 8
    m = vmapped_rate(config_args(mid), n_mid, secs)
    peak = matmul_peak(8192 if on_gpu else 256 if a.tiny else 2048, 0.05 if a.tiny else 1.0)
    share = eval_share(mid, n_mid, secs)
    saving = answer_only_saving(config_args(small))
    head = headline(secs) if (a.headline or on_gpu) else None
    if head:
        print(f"headline nanda2023 x 512: {head['model_steps_per_s']:,.0f} model-steps/s, projected "
              f"{head['projected_wall_s'] / 60:.1f} min ({head['batching']})")
    result = {
        "device": device_name(),
        "vmapped_model_steps_per_s": by_n[n_max]["vmapped"],
        "sequential_model_steps_per_s": by_n[n_max]["sequential"],
        "torch_model_steps_per_s": torch_ms,
        "matmul_peak_flops": peak,
        "achieved_flops": m["achieved_flops"],
        "mfu": (m["achieved_flops"] / peak) if m["achieved_flops"] else None,
        "compile_s": by_n[n_max]["compile_s"],
        "eval_share": share,
        "answer_only_flops_saving": saving,
        "n_models": n_max,
        "headline": head,
        "by_n": by_n,
        "config": small,
        "mfu_config": mid | {"n_models": n_mid},
        "versions": {"jax": jax.__version__, "python": platform.python_version()},
        "date": datetime.date.today().isoformat(),
        "quick": a.quick,
    }
    print(f"vmapped/sequential at N={n_max}: x{result['vmapped_model_steps_per_s'] / result['sequential_model_steps_per_s']:.2f}"
          + (f"; vmapped/torch: x{result['vmapped_model_steps_per_s'] / torch_ms:.1f}" if torch_ms else ""))
    print(f"matmul peak {peak / 1e9:,.1f} GFLOP/s; mid config achieved {m['achieved_flops'] / 1e9:,.1f} GFLOP/s "
          f"-> MFU {100 * result['mfu']:.0f}%; eval share {100 * share:.2f}% (mid config, eval_every "
          f"{mid['eval_every']}); answer-only saves x{saving:.2f} FLOPs")
    if a.json:
        a.json.write_text(json.dumps(result, indent=2, default=float))
    if a.record:
        record(result)
    return result


def append_rows(section: str, header: str, lines: list[str]) -> None:
    """Append ``lines`` at the end of the RESULTS.md table whose header line is ``header`` (creating the
    section, its text ``section`` then the table, at the end of the file when missing)."""
    text = RESULTS_MD.read_text()
    if header not in text:
        sep = "|" + "---|" * header.count(" | ") + "---|"
        text = text.rstrip("\n") + f"\n\n{section}\n\n{header}\n{sep}\n"
    out = text.splitlines()
    i = out.index(header) + 2  # past the separator
    while i < len(out) and out[i].startswith("|"):
        i += 1
    RESULTS_MD.write_text("\n".join(out[:i] + lines + out[i:]) + "\n")


def record(r: dict) -> None:
    """Append one row to RESULTS.md (the table is created with its header when missing)."""
    header = ("| date | device | jax | N | vmapped model-steps/s | sequential | torch | vmapped/seq | vmapped/torch "
              "| matmul peak GFLOP/s | achieved GFLOP/s | MFU | compile s | eval share "
              "| nanda2023 x 512 model-steps/s | projected wall | quick |\n"
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
    torch_ms = r["torch_model_steps_per_s"]
    vm, seq = r["vmapped_model_steps_per_s"], r["sequential_model_steps_per_s"]
    torch_cell = f"{torch_ms:,.0f}" if torch_ms else "-"
    ratio_torch = f"{vm / torch_ms:.1f}" if torch_ms else "-"
    head = r.get("headline")
    head_rate = f"{head['model_steps_per_s']:,.0f}" if head else "-"
    head_wall = f"{head['projected_wall_s'] / 60:.1f} min" if head else "-"
    row = (f"| {r['date']} | {r['device']} | {r['versions']['jax']} | {r['n_models']} | {vm:,.0f} | {seq:,.0f} "
           f"| {torch_cell} | {vm / seq:.2f} | {ratio_torch} | {r['matmul_peak_flops'] / 1e9:,.1f} "
           f"| {r['achieved_flops'] / 1e9:,.1f} | {100 * r['mfu']:.0f}% | {r['compile_s']:.1f} "
           f"| {100 * r['eval_share']:.2f}% | {head_rate} | {head_wall} | {'yes' if r['quick'] else 'no'} |\n")
    text = RESULTS_MD.read_text() if RESULTS_MD.exists() else "# Throughput results\n\n"
    if "| date | device |" not in text:
        text += header
    RESULTS_MD.write_text(text + row)


if __name__ == "__main__":
    main()

"""The PyTorch baselines a user would pick, against grokjax, on the default sweep's model (x+y mod 47,
1 layer, d_model 32, 4 heads, d_mlp 128, the full train split of 1,104 pairs each step, AdamW): training
model-steps/s with compilation excluded, in one run on one device.

- eager: one model at a time, the way public grokking repos train (``throughput.torch_setup``'s model);
- torch.func: N models stacked (``stack_module_state``) and vmapped (``functional_call``), one AdamW over
  the stacked tensors (elementwise, so every model's update is its own); attention as explicit matmuls,
  because vmap has no batching rule for scaled_dot_product_attention's CPU kernel (it would loop), and
  the last block computes the answer position only, as grokjax does;
- torch.compile: the same ensemble loss compiled (forward and backward), the optimizer step eager;
- grokjax: the vmapped program of N models (compiled chunks of 250 steps without evaluation, no I/O).

    pip install torch==2.13.0           # (the CPU build; or pip install -e '.[torch]')
    python benchmarks/torch_baselines.py --models 12,64 --record
"""

from __future__ import annotations

import argparse
import copy
import datetime
import sys
import time
from pathlib import Path

import jax

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from throughput import (  # noqa: E402
    append_rows,
    config_args,
    device_name,
    timed_rate,
    torch_rate,
    torch_setup,
    vmapped_rate,
)

DEFAULT_MODEL = dict(op="add", p=47, frac=0.5, n_layers=1, d_model=32, n_heads=4, d_mlp=128, lr=1e-2,
                     steps=100_000, eval_every=100_000, chunk_steps=250, batch_size="full")
HEADER = ("| date | device | torch | jax | N | eager (1 model) | torch.func | torch.compile | compile s | grokjax "
          "| grokjax / best PyTorch |")


def ensemble_step(n: int, compiled: bool, cfg: dict | None = None):
    """One AdamW step of N stacked models of ``cfg`` (default: the default sweep's model) with torch.func,
    optionally with the loss compiled; and the seconds the first call took (compilation included)."""
    import torch
    from torch.func import functional_call, stack_module_state

    # SDPA has no vmap rule on the CPU; the answer-only last block does grokjax's FLOPs
    make_model, x, y, _ = torch_setup(cfg or DEFAULT_MODEL, sdpa=False, answer_only=True)
    models = [make_model() for _ in range(n)]
    params, buffers = stack_module_state(models)
    base = copy.deepcopy(models[0]).to("meta")

    def one(p, b, tokens):
        return functional_call(base, (p, b), (tokens,))

    def loss_fn(p):
        logits = torch.vmap(one, in_dims=(0, 0, None))(p, buffers, x)  # [N, B, C]
        # the sum over models of each model's mean loss: every model gets its own gradient
        return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.repeat(n)) * n

    loss = torch.compile(loss_fn) if compiled else loss_fn
    opt = torch.optim.AdamW(list(params.values()), lr=1e-3, weight_decay=1.0, betas=(0.9, 0.98))

    def step():
        opt.zero_grad()
        loss(params).backward()
        opt.step()

    t0 = time.perf_counter()
    step()
    return step, time.perf_counter() - t0


def measure(models: list[int], seconds: float) -> list[dict]:
    import torch

    eager = torch_rate(DEFAULT_MODEL, seconds)
    rows = []
    for n in models:
        func_step, _ = ensemble_step(n, compiled=False)
        func = n * timed_rate(func_step, seconds)
        comp_step, compile_s = ensemble_step(n, compiled=True)
        comp = n * timed_rate(comp_step, seconds)
        ours = vmapped_rate(config_args(DEFAULT_MODEL), n, seconds, first_step=1)["model_steps_per_s"]
        rows.append(dict(n=n, eager=eager, func=func, compiled=comp, compile_s=compile_s, grokjax=ours,
                         torch=torch.__version__))
        print(f"N={n}: eager {eager:,.0f} | torch.func {func:,.0f} | torch.compile {comp:,.0f} "
              f"(compile {compile_s:.0f} s) | grokjax {ours:,.0f} model-steps/s", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="12,64", help="comma-separated N values (default 12,64)")
    ap.add_argument("--seconds", type=float, default=10.0, help="minimum timed seconds per method")
    ap.add_argument("--record", action="store_true", help="append the rows to benchmarks/RESULTS.md")
    args = ap.parse_args(argv)
    try:
        import torch  # noqa: F401
    except ImportError:
        print("torch is not installed: pip install torch==2.13.0 (the CPU build)", file=sys.stderr)
        return 2
    rows = measure([int(v) for v in args.models.split(",")], args.seconds)
    lines = [f"| {datetime.date.today()} | {device_name()} | {r['torch']} | {jax.__version__} | {r['n']} | "
             f"{r['eager']:,.0f} | {r['func']:,.0f} | {r['compiled']:,.0f} | {r['compile_s']:.0f} | "
             f"{r['grokjax']:,.0f} | {r['grokjax'] / max(r['eager'], r['func'], r['compiled']):.2f}× |" for r in rows]
    print("\n".join(lines))
    if args.record:
        append_rows("## PyTorch baselines (`benchmarks/torch_baselines.py`)\n\nThe default sweep's model "
                    "(add mod 47, 1 layer, d_model 32, 4 heads, d_mlp 128, full batch of 1,104 pairs, AdamW); "
                    "training model-steps/s, compilation excluded; all methods in one run.", HEADER, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())

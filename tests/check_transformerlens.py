"""Check `grokjax export DIR --to transformerlens OUT` against TransformerLens itself: each exported model,
loaded by grokjax.hooked_transformer (a HookedTransformer on TransformerLens 2.x-3.x, a native
TransformerBridge on 4.x), must give the run's logits (Results.model) on the whole table, to float32
tolerance, and ``run_with_cache`` must give the hooks the neuron analysis of docs/interpretability.md reads
(HOOKS). Not part of the test suite (it needs torch and transformer_lens, too heavy for CI;
tests/test_transformerlens.py checks the same layout against a NumPy forward pass):

    pip install -e '.[transformerlens]'
    python tests/check_transformerlens.py            # a small sweep of every exportable layout
    python tests/check_transformerlens.py DIR [--runs 0,5] [--step all]   # a sweep of yours

Prints one line per model; exit status 1 if any differs.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

import grokjax
from grokjax.store.export import export, hooked_transformer

# every exportable layout: LayerNorm or none, 1 or 2 layers, each activation, learned or sinusoidal
# positions, flax or torch init (with attention biases), 3 or 4 tokens
ARMS = [dict(layer_norm=True, n_layers=2, act="gelu"), dict(init="torch", tokens=4, act="gelu_tanh", pos="sinusoidal"),
        dict(layer_norm=False, act="relu")]
HOOKS = ("hook_embed", "blocks.0.attn.hook_pattern", "blocks.0.mlp.hook_post", "blocks.0.hook_resid_post")
SMALL = dict(p=11, d_model=16, n_heads=2, d_mlp=32, frac=0.5, lr=1e-2, steps=200, eval_every=50, chunk_steps=50,
             snapshot_every=100, seeds=1, wd=1.0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dir", nargs="?", type=Path, help="a results directory (default: a small sweep of its own)")
    ap.add_argument("--runs", default=None, help="run_ids, comma-separated (default every run)")
    ap.add_argument("--step", default=None, help="a kept step, or all (default the last kept)")
    args = ap.parse_args(argv)
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        src = args.dir
        if src is None:
            src = Path(tmp) / "sweep"
            grokjax.sweep(out=src, arms=ARMS, quiet=True, fit=False, plot=False, **SMALL)
        r = grokjax.load(src)
        runs = None if args.runs is None else [int(x) for x in args.runs.split(",")]
        step = args.step if args.step in (None, "all") else int(args.step)
        out = Path(tmp) / "tl"
        export(src, "transformerlens", out, runs=runs, step=step)
        worst, failed = 0.0, 0
        for folder in sorted(out.glob("run_*/step_*")):
            run_id, at = int(folder.parent.name[4:]), int(folder.name[5:])
            model = hooked_transformer(folder)
            cfg = json.loads((folder / "config.json").read_text())
            p = int(r.runs.set_index("run_id").loc[run_id, "p"])
            a, b = (x.ravel() for x in np.meshgrid(np.arange(p), np.arange(p), indexing="ij"))
            eq = np.full_like(a, p)
            cols = [a, b, eq] if cfg["n_ctx"] == 3 else [a, np.full_like(a, p + 1), b, eq]
            with torch.no_grad():
                logits, cache = model.run_with_cache(torch.from_numpy(np.stack(cols, 1)).long())
            theirs = logits[:, -1].double().numpy()
            hooks = [h for h in HOOKS if h in cache]
            ours = r.model(run_id, at)(a, b)
            scale = float(np.abs(ours).max())
            diff = float(np.abs(theirs - ours).max()) / scale
            agree = float((theirs.argmax(1) == ours.argmax(1)).mean())
            ok = diff < 1e-4 and agree > 0.99 and len(hooks) == len(HOOKS)
            failed += not ok
            worst = max(worst, diff)
            print(f"run {run_id} step {at}: {type(model).__name__}, {cfg['n_layers']} layer(s), "
                  f"{cfg['normalization_type'] or 'no'} norm, {cfg['act_fn']}, n_ctx {cfg['n_ctx']}: max |logit "
                  f"difference| / max |logit| = {diff:.2e}, same prediction on {agree:.1%} of {len(a)} pairs, "
                  f"hooks {len(hooks)}/{len(HOOKS)} {'ok' if ok else 'DIFFERS'}")
    from importlib.metadata import version as installed

    version = installed("transformer_lens")
    print(f"{'all agree' if not failed else f'{failed} differ'}; worst relative difference {worst:.2e} "
          f"(transformer_lens {version}, torch {torch.__version__})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""grokjax export DIR --to transformerlens OUT: the exported state dict, run through an independent NumPy
forward pass written as TransformerLens's HookedTransformer computes (not grokjax's code), gives the logits
of Results.model; options HookedTransformer cannot express are refused in one line. The check against
transformer_lens itself is tests/check_transformerlens.py (torch is too heavy for CI)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from conftest import merged

import grokjax
from grokjax.cli import main
from grokjax.grid.expand import build_sweep
from grokjax.run.sweep import run_sweep
from grokjax.store.export import TL_CONFIG, TL_STATE

TINY = ["p=7", "d_model=8", "n_heads=2", "d_mlp=16", "frac=0.5", "lr=1e-2", "eval_every=10", "chunk_steps=10",
        "steps=20", "wd=1", "snapshot_every=10", "seeds=1"]
# two exportable arms (with and without LayerNorm: normalization_type LN and None); the refusals are
# tested on test_params.py's mixed grid (a post-norm transformer and an MLP)
ARMS = ["layer_norm=true n_layers=2 act=gelu", "init=torch tokens=4 act=gelu_tanh pos=sinusoidal"]


def hooked_forward(cfg: dict, sd: dict, tokens: np.ndarray) -> np.ndarray:
    """HookedTransformer's forward pass (TransformerLens 2.x/3.x: embed, pos_embed, blocks of ln1 -> attn,
    ln2 -> mlp, ln_final, unembed) in float64 NumPy: logits [B, T, d_vocab_out]."""
    f = {k: np.asarray(v, np.float64) for k, v in sd.items()}
    ln = cfg["normalization_type"] == "LN"

    def norm(x, name):
        if not ln:
            return x
        x = x - x.mean(-1, keepdims=True)
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + cfg["eps"]) * f[name + ".w"] + f[name + ".b"]

    act = {"relu": lambda x: np.maximum(x, 0),
           "gelu": lambda x: 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2))),
           "gelu_new": lambda x: 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))}
    n_t = tokens.shape[1]
    resid = f["embed.W_E"][tokens] + f["pos_embed.W_pos"][:n_t]
    for i in range(cfg["n_layers"]):
        b = f"blocks.{i}"
        x = norm(resid, b + ".ln1")
        q, k, v = (np.einsum("bpd,hde->bphe", x, f[f"{b}.attn.W_{m}"]) + f[f"{b}.attn.b_{m}"] for m in "QKV")
        scores = np.einsum("bqhe,bkhe->bhqk", q, k) / math.sqrt(cfg["d_head"])
        scores = np.where(np.tril(np.ones((n_t, n_t), bool)), scores, -np.inf)
        pattern = np.exp(scores - scores.max(-1, keepdims=True))
        pattern /= pattern.sum(-1, keepdims=True)
        z = np.einsum("bhqk,bkhe->bqhe", pattern, v)
        resid = resid + np.einsum("bqhe,hed->bqd", z, f[f"{b}.attn.W_O"]) + f[f"{b}.attn.b_O"]
        x = norm(resid, b + ".ln2")
        hidden = act[cfg["act_fn"]](x @ f[f"{b}.mlp.W_in"] + f[f"{b}.mlp.b_in"])
        resid = resid + hidden @ f[f"{b}.mlp.W_out"] + f[f"{b}.mlp.b_out"]
    return norm(resid, "ln_final") @ f["unembed.W_U"] + f["unembed.b_U"]


def table_tokens(cfg: dict, p: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair (a, b) and its tokens as the export's grokjax.json describes them."""
    a, b = (x.ravel() for x in np.meshgrid(np.arange(p), np.arange(p), indexing="ij"))
    eq = np.full_like(a, p)
    tokens = np.stack([a, b, eq] if cfg["n_ctx"] == 3 else [a, np.full_like(a, p + 1), b, eq], axis=1)
    return a, b, tokens


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    out = tmp_path_factory.mktemp("tl") / "r"
    run_sweep(build_sweep(None, merged(TINY, []), arms=ARMS), out, quiet=True)
    return out


def test_exported_state_dict_gives_the_runs_logits(swept, tmp_path):
    r = grokjax.load(swept)
    out = tmp_path / "tl"
    assert main(["export", str(swept), "--to", "transformerlens", str(out), "--runs", "0,1", "--step", "all"]) == 0
    for run_id in (0, 1):
        for step in (10, 20):
            folder = out / f"run_{run_id:05d}" / f"step_{step}"
            cfg = json.loads((folder / TL_CONFIG).read_text())
            with np.load(folder / TL_STATE) as z:
                sd = {k: z[k] for k in z.files}
            a, b, tokens = table_tokens(cfg, 7)
            theirs = hooked_forward(cfg, sd, tokens)[:, -1]
            ours = r.model(run_id, step)(a, b)
            assert theirs.shape == ours.shape
            np.testing.assert_allclose(theirs, ours, rtol=1e-4, atol=1e-4 * np.abs(ours).max())
            assert (theirs.argmax(1) == ours.argmax(1)).mean() > 0.95  # the same predictions, bar near-ties
    cfg0, cfg1 = (json.loads((out / f"run_0000{i}" / "step_20" / TL_CONFIG).read_text()) for i in (0, 1))
    assert (cfg0["normalization_type"], cfg0["eps"], cfg0["act_fn"]) == ("LN", 1e-6, "gelu")  # flax's eps
    assert (cfg1["n_ctx"], cfg1["d_vocab"], cfg1["d_vocab_out"], cfg1["act_fn"]) == (4, 9, 9, "gelu_new")
    assert cfg1["normalization_type"] is None


def test_a_step_that_was_not_kept_is_a_one_line_error(swept, tmp_path, capsys):
    assert main(["export", str(swept), "--to", "transformerlens", str(tmp_path / "a"), "--step", "15"]) == 2
    err = capsys.readouterr().err
    assert "step=15: run 0's parameters were not kept then; kept steps: 10, 20" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "a").exists()

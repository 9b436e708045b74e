"""A trained transformer in TransformerLens's layout: the keyword arguments of ``HookedTransformerConfig`` and
the state dict that ``HookedTransformer(cfg).load_state_dict`` takes (NumPy arrays; ``torch.from_numpy``
each). Pure functions of a run's model options and parameters: no JAX, no torch, no files.

HookedTransformer (TransformerLens 2.x and 3.x; 4.0 removed it) computes, for tokens [B, T]:
resid = W_E[tokens] + W_pos[:T]; per block resid += attn(ln1(resid)), resid += mlp(ln2(resid)); logits =
ln_final(resid) @ W_U + b_U, at every position (grokjax's logits are its last position's). Attention:
q = x @ W_Q[h] + b_Q[h] and likewise k, v; scores q.k / sqrt(d_head), causal; out = sum_h z[h] @ W_O[h] + b_O.
With ``normalization_type="LN"`` the ln* are LayerNorms (w, b; eps ``eps``), with None the identity and no
ln_final: grokjax's ``block=prenorm`` with and without ``layer_norm``. Fixed sinusoidal positions become
the W_pos they equal (the forward pass is the same; in TransformerLens they would be trainable).

What HookedTransformer cannot express is refused, naming the option: ``arch=mlp``, ``block=postnorm``
(openai/grok's LN after the residual sum) and ``block=ln_residual`` (Grokfast's normalised residual
stream), and ``act=quadratic``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from grokjax.config.structure import ModelConfig
from grokjax.errors import UserError
from grokjax.models.transformer import has_final_norm, sinusoids

ACT_FN = {"relu": "relu", "gelu": "gelu", "gelu_tanh": "gelu_new"}  # grokjax act -> TransformerLens act_fn


def unsupported(cfg: ModelConfig) -> str | None:
    """The option (``key=value``) of ``cfg`` that HookedTransformer has no equivalent for, or None."""
    if cfg.arch != "transformer":
        return f"arch={cfg.arch}"
    if cfg.block != "prenorm":
        return f"block={cfg.block}"
    if cfg.act not in ACT_FN:
        return f"act={cfg.act}"
    return None


def refusal(what: str) -> str:
    return (f"{what} has no TransformerLens (HookedTransformer) equivalent; exportable: arch=transformer, "
            f"block=prenorm, act={'|'.join(ACT_FN)}")


def hooked_config(cfg: ModelConfig, vocab_size: int, n_classes: int, seq_len: int) -> dict[str, Any]:
    """``HookedTransformerConfig(**this)`` for a transformer of ``cfg`` over ``vocab_size`` input tokens,
    ``n_classes`` outputs and ``seq_len`` positions."""
    if (what := unsupported(cfg)) is not None:
        raise UserError(refusal(what))
    return dict(
        n_layers=cfg.n_layers, d_model=cfg.d_model, n_heads=cfg.n_heads, d_head=cfg.d_head, d_mlp=cfg.d_mlp,
        d_vocab=vocab_size, d_vocab_out=n_classes, n_ctx=seq_len, act_fn=ACT_FN[cfg.act],
        normalization_type="LN" if cfg.layer_norm else None, eps=1e-5 if cfg.init == "torch" else 1e-6,
        positional_embedding_type="standard", attn_only=False, default_prepend_bos=False,
    )


def hooked_state_dict(cfg: ModelConfig, params: dict[str, Any], seq_len: int) -> dict[str, np.ndarray]:
    """The parameters of ONE model (``Results.params``' nested dict) as HookedTransformer's state dict
    (float32): ``embed.W_E`` [V, D], ``pos_embed.W_pos`` [T, D], ``blocks.i.attn.W_Q`` [H, D, Dh] ...
    ``unembed.W_U`` [D, C]. Biases the run did not have are zeros; buffers (the attention mask) are left to
    the model, so load with ``strict=False``."""
    f32 = lambda x: np.asarray(x, np.float32)  # noqa: E731
    d, h, dh = cfg.d_model, cfg.n_heads, cfg.d_head
    pos = params["pos_embed"] if cfg.pos == "learned" else sinusoids(seq_len, d)
    out = {"embed.W_E": f32(params["embed"]["embedding"]), "pos_embed.W_pos": f32(pos)}
    for i in range(cfg.n_layers):
        block, name = params[f"block_{i}"], f"blocks.{i}"
        for ours, theirs in (("query", "Q"), ("key", "K"), ("value", "V")):
            out[f"{name}.attn.W_{theirs}"] = f32(block[ours]["kernel"]).transpose(1, 0, 2)  # [D,H,Dh] -> [H,D,Dh]
            bias = block[ours].get("bias")
            out[f"{name}.attn.b_{theirs}"] = f32(bias).reshape(h, dh) if bias is not None else np.zeros((h, dh),
                                                                                                      np.float32)
        out[f"{name}.attn.W_O"] = f32(block["out"]["kernel"])  # [H, Dh, D] both
        out[f"{name}.attn.b_O"] = _bias(block["out"], d)
        if cfg.layer_norm:
            for ours, theirs in (("ln_attn", "ln1"), ("ln_mlp", "ln2")):
                out[f"{name}.{theirs}.w"], out[f"{name}.{theirs}.b"] = f32(block[ours]["scale"]), f32(block[ours]["bias"])
        out[f"{name}.mlp.W_in"] = f32(block["mlp_in"]["kernel"])
        out[f"{name}.mlp.b_in"] = _bias(block["mlp_in"], cfg.d_mlp)
        out[f"{name}.mlp.W_out"] = f32(block["mlp_out"]["kernel"])
        out[f"{name}.mlp.b_out"] = _bias(block["mlp_out"], d)
    if has_final_norm(cfg):
        out["ln_final.w"], out["ln_final.b"] = f32(params["ln_final"]["scale"]), f32(params["ln_final"]["bias"])
    w_u = f32(params["unembed"]["kernel"])
    out["unembed.W_U"], out["unembed.b_U"] = w_u, np.zeros(w_u.shape[1], np.float32)
    return out


def _bias(layer: dict[str, Any], size: int) -> np.ndarray:
    bias = layer.get("bias")
    return np.asarray(bias, np.float32) if bias is not None else np.zeros(size, np.float32)

"""Progress measures of ONE model, computed on the device inside the compiled chunk (``program`` vmaps).

``norms`` (Liu et al. 2022 / Omnigrok watch the weight norm): the L2 norm of each parameter group
(transformer: embeddings, attention, MLP, unembedding; MLP arch: each layer), and, at every train step,
the gradient norm and the update norm.

``fourier`` (Nanda et al. 2023, "Progress measures for grokking via mechanistic interpretability"): the
token embeddings of the p number tokens, W_E [p, d], projected on the Fourier basis of Z_p (the constant,
and cos(2 pi k x / p), sin(2 pi k x / p) for k = 1..(p-1)/2, each of unit norm); the norm of frequency k
is sqrt(|cos_k . W_E|^2 + |sin_k . W_E|^2). ``fourier_gini`` is the Gini coefficient of the non-constant
frequencies' norms (1: one frequency holds everything; near 0: spread evenly). The KEY frequencies are the
fewest non-constant frequencies that together hold at least ``KEY_ENERGY`` (90%) of the non-constant
squared norm, taken largest first; ``n_key_freqs`` counts them.

``excluded`` (add and sub; Nanda et al.'s restricted and excluded loss): the logits on the whole table,
L [p*p, p], seen for each output as a function of (a, b), are projected on the unit directions
cos(w_k (a +- b)) and sin(w_k (a +- b)) of the key frequencies; the restricted logits keep the mean over
the table plus those components only, the excluded logits remove them; both losses are the training loss
of the run's own train split.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

KEY_ENERGY = 0.9


def _sq(tree: Any) -> jax.Array:
    return sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree))


def group_of(arch: str, name: str) -> str:
    """The parameter group of a top-level parameter name of the model."""
    if arch == "mlp":
        return {"in_kernel": "layer_0", "in_bias": "layer_0", "in": "layer_0", "embed": "embed",
                "readout": "readout"}.get(name, name.replace("hidden_", "layer_"))
    if name in ("embed", "pos_embed"):
        return "embed"
    if name in ("unembed", "ln_final"):
        return "unembed"
    return "block"  # split into attention and MLP below


_ATTN = ("query", "key", "value", "out", "ln_attn")


def group_norms(params: Any, arch: str) -> dict[str, jax.Array]:
    """``norm_<group>`` for every parameter group: the L2 norm of the group's parameters."""
    sums: dict[str, jax.Array] = {}
    for name, sub in params.items():
        group = group_of(arch, name)
        if group == "block":
            for inner, leaf in sub.items():
                g = "attn" if inner in _ATTN else "mlp"
                sums[g] = sums.get(g, 0.0) + _sq(leaf)
        else:
            sums[group] = sums.get(group, 0.0) + _sq(sub)
    return {f"norm_{g}": jnp.sqrt(v) for g, v in sums.items()}


def last_layer_norm(params: Any, arch: str) -> jax.Array:
    """Frobenius norm of the last layer's weights (the transformer's unembedding, the MLP's readout
    kernel): the norm whose jumps with train-loss spikes are Thilak et al. 2022's slingshots."""
    return jnp.sqrt(_sq(params["readout" if arch == "mlp" else "unembed"]["kernel"]))


def logit_scale(logits: jax.Array, labels: jax.Array, w: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Sums over pairs, weighted by ``w`` [B], of the correct-class margin z_y - max_{j != y} z_j and of the
    logit vector's L2 norm, for ``logits`` [B, C] and ``labels`` [B]: the logit scale whose growth drives
    softmax collapse (Prieto et al. 2025)."""
    z = logits.astype(jnp.float32) if logits.dtype == jnp.bfloat16 else logits
    correct = jnp.take_along_axis(z, labels[:, None], axis=-1)[:, 0]
    others = jnp.where(jax.nn.one_hot(labels, z.shape[-1], dtype=bool), -jnp.inf, z).max(axis=-1)
    return ((correct - others) * w).sum(), (jnp.sqrt(jnp.sum(jnp.square(z), axis=-1)) * w).sum()


def tree_norm(tree: Any) -> jax.Array:
    return jnp.sqrt(_sq(tree))


def fourier_basis(p: int) -> np.ndarray:
    """[p, p] orthonormal rows: the constant, then cos_k and sin_k for k = 1..(p-1)//2 (p odd)."""
    x = np.arange(p)
    rows = [np.ones(p) / np.sqrt(p)]
    for k in range(1, (p - 1) // 2 + 1):
        rows.append(np.cos(2 * np.pi * k * x / p))
        rows.append(np.sin(2 * np.pi * k * x / p))
    basis = np.stack(rows)
    return basis / np.linalg.norm(basis, axis=1, keepdims=True)


def frequency_norms(embed: jax.Array, basis: jax.Array) -> jax.Array:
    """[K + 1] norms of the embedding W_E [p, d] per frequency (index 0: the constant)."""
    coef = basis.astype(embed.dtype) @ embed  # [p, d]
    sq = jnp.sum(jnp.square(coef), axis=1)
    return jnp.sqrt(jnp.concatenate([sq[:1], sq[1::2] + sq[2::2]]))


def gini(values: jax.Array) -> jax.Array:
    """Gini coefficient of non-negative values: sum_ij |x_i - x_j| / (2 n^2 mean)."""
    n = values.shape[0]
    diffs = jnp.abs(values[:, None] - values[None, :]).sum()
    return diffs / (2 * n * n * jnp.maximum(values.mean(), jnp.finfo(values.dtype).tiny))


def key_mask(freq_norms: jax.Array) -> jax.Array:
    """[K] bool: the key frequencies among the non-constant ones (see the module docstring)."""
    energy = jnp.square(freq_norms[1:])
    order = jnp.argsort(-energy)
    before = jnp.cumsum(energy[order]) - energy[order]  # energy of the larger ones
    chosen_sorted = before < KEY_ENERGY * energy.sum()
    return jnp.zeros_like(chosen_sorted).at[order].set(chosen_sorted)


def fourier_measures(embed: jax.Array, basis: jax.Array) -> tuple[dict[str, jax.Array], jax.Array]:
    norms = frequency_norms(embed, basis)
    mask = key_mask(norms)
    return {"fourier_gini": gini(norms[1:]), "n_key_freqs": mask.sum().astype(embed.dtype)}, norms


def sum_directions(p: int, sign: int) -> np.ndarray:
    """[K, 2, p*p] unit vectors cos(w_k (a + sign*b)), sin(w_k (a + sign*b)) over the table's pairs in
    row-major (a, b) order, w_k = 2 pi k / p."""
    a, b = np.meshgrid(np.arange(p), np.arange(p), indexing="ij")
    s = (a + sign * b).ravel()
    out = []
    for k in range(1, (p - 1) // 2 + 1):
        c, n = np.cos(2 * np.pi * k * s / p), np.sin(2 * np.pi * k * s / p)
        out.append(np.stack([c / np.linalg.norm(c), n / np.linalg.norm(n)]))
    return np.stack(out)


def restricted_and_excluded(logits: jax.Array, directions: jax.Array, mask: jax.Array
                            ) -> tuple[jax.Array, jax.Array]:
    """Logits [p*p, C] with the key frequencies' (a +- b) components kept only (plus the mean over the
    table), and with them removed. directions [K, 2, p*p], mask [K] bool."""
    d = directions.astype(logits.dtype) * mask[:, None, None].astype(logits.dtype)
    coef = jnp.einsum("kjn,nc->kjc", d, logits)
    key_part = jnp.einsum("kjn,kjc->nc", d, coef)
    restricted = logits.mean(axis=0, keepdims=True) + key_part
    return restricted, logits - key_part

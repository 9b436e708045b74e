"""The analysis of docs/interpretability.md: from a finished nanda2023 sweep (run with snapshot_every) to the
key frequencies of one grokked run and its neurons' Fourier structure, with grokjax's APIs.

    grokjax sweep nanda2023 steps=15000 seed=0 snapshot_every=500 --out results/nanda
    pip install -e '.[transformerlens]'          # for the neurons (TransformerLens's activation cache)
    python docs/interpretability.py results/nanda docs/figures

Prints the figures' numbers and writes interp_frequencies.png and interp_neurons.png to the second argument.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import grokjax  # noqa: E402
from grokjax.engine.measures import fourier_basis, frequency_norms, key_mask  # noqa: E402


def embedding_spectrum(params: dict, p: int) -> np.ndarray:
    """Norms of the number tokens' embedding W_E [p, d] per frequency (index 0: the constant): the
    definition of the ``fourier`` measure (Nanda et al. 2023)."""
    return np.asarray(frequency_norms(params["embed"]["embedding"][:p], fourier_basis(p)))


def neuron_frequency_fractions(acts: np.ndarray, p: int) -> np.ndarray:
    """acts [p*p, n] (neuron activations at '=' for a = i // p, b = i % p) -> [n, K + 1]: for each neuron
    the fraction of its variance over the table that the 2-D Fourier terms of frequency k alone explain
    (the products of {1, cos w_k, sin w_k} in a and in b, constant excepted): Nanda et al.'s clustering of
    neurons by frequency."""
    basis = fourier_basis(p)
    grid = acts.reshape(p, p, -1)
    coef = np.einsum("ia,jb,abn->ijn", basis, basis, grid)  # 2-D Fourier coefficients
    coef[0, 0] = 0.0  # the mean
    total = (coef ** 2).sum((0, 1))
    fractions = np.zeros((acts.shape[1], (p - 1) // 2 + 1))
    for k in range(1, (p - 1) // 2 + 1):
        idx = [0, 2 * k - 1, 2 * k]
        fractions[:, k] = (coef[np.ix_(idx, idx)] ** 2).sum((0, 1)) / np.maximum(total, 1e-30)
    return fractions


def main(directory: str, figures: str) -> None:
    r = grokjax.load(directory)
    fits = grokjax.fit(r.path)
    grokked = fits[fits.phase.isin(["grokking", "comprehension"])]
    run_id = int(grokked.run_id.iloc[0])
    row = grokked.iloc[0]
    p = int(r.runs.set_index("run_id").loc[run_id, "p"])
    steps = r.kept_steps(run_id)
    print(f"run {run_id}: t_train {row.t_train:.0f}, t_val {row.t_val:.0f}; parameters kept at {len(steps)} steps "
          f"({steps[0]} to {steps[-1]})")

    # 1. The embedding's spectrum over training: key frequencies, their number and the Gini coefficient
    spectra = np.stack([embedding_spectrum(r.params(run_id, s), p) for s in steps])  # [S, K + 1]
    final = spectra[-1]
    keys = np.flatnonzero(np.asarray(key_mask(final))) + 1
    n_keys = [int(np.asarray(key_mask(s)).sum()) for s in spectra]
    share = (final[keys] ** 2).sum() / (final[1:] ** 2).sum()
    print(f"key frequencies at step {steps[-1]}: {keys.tolist()} ({share:.1%} of the non-constant squared norm); "
          f"number of key frequencies at " + ", ".join(f"{s}: {n}" for s, n in zip(steps, n_keys)
                                                       if s in (500, 2000, 5000, 7500, 10000, steps[-1])))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.8))
    shown = [s for s in (500, 2500, 5000, int(row.t_val) // 500 * 500, steps[-1]) if s in steps]
    for s in dict.fromkeys(shown):
        ax1.plot(np.arange(1, len(final)), spectra[steps.index(s), 1:], label=f"step {s}", lw=1)
    ax1.set(xlabel="frequency k", ylabel="norm of W_E on cos_k, sin_k", title=f"run {run_id}: embedding spectrum")
    ax1.legend(fontsize=8)
    for k in keys:
        ax2.plot(steps, spectra[:, k], label=f"k={k}")
    ax2.plot(steps, np.sqrt((spectra[:, 1:] ** 2).sum(1) - (spectra[:, keys] ** 2).sum(1)), "k--",
             label="all other k")
    ax2.axvline(row.t_train, color="grey", lw=0.8)
    ax2.axvline(row.t_val, color="grey", lw=0.8, ls=":")
    ax2.set(xlabel="step (t_train solid, t_val dotted)", ylabel="norm", title="key frequencies over training")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    Path(figures).mkdir(parents=True, exist_ok=True)
    fig.savefig(Path(figures) / "interp_frequencies.png", dpi=110)

    # 2. Neurons, through TransformerLens: export, load, cache the MLP activations at '='
    import torch

    from grokjax.store.export import export, hooked_transformer

    with tempfile.TemporaryDirectory() as tmp:
        export(r.path, "transformerlens", Path(tmp) / "tl", runs=[run_id])
        model = hooked_transformer(Path(tmp) / "tl" / f"run_{run_id:05d}" / f"step_{steps[-1]}")
    a, b = (x.ravel() for x in np.meshgrid(np.arange(p), np.arange(p), indexing="ij"))
    tokens = torch.from_numpy(np.stack([a, b, np.full_like(a, p)], 1)).long()
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens)
    ours = r.model(run_id)(a, b)
    theirs = logits[:, -1].double().numpy()
    print(f"TransformerLens logits against grokjax's on all {p * p} pairs: max |difference| "
          f"{np.abs(theirs - ours).max():.2e} (max |logit| {np.abs(ours).max():.1f}); same answer on "
          f"{(theirs.argmax(1) == ours.argmax(1)).mean():.2%}; accuracy {(ours.argmax(1) == (a + b) % p).mean():.2%}")
    acts = cache["blocks.0.mlp.hook_post"][:, -1].double().numpy()  # [p*p, d_mlp]
    alive = acts.std(0) > 1e-6 * acts.std(0).max()
    fractions = neuron_frequency_fractions(acts[:, alive], p)
    best = fractions.argmax(1)
    explained = fractions.max(1)
    counts = {int(k): int((best == k).sum()) for k in keys}
    print(f"{alive.sum()} of {acts.shape[1]} neurons active; their best single frequency explains a median "
          f"{np.median(explained):.1%} of their variance ({(explained > 0.85).mean():.1%} above 85%); "
          f"{np.isin(best, keys).mean():.1%} have a key frequency as their best, per key frequency: {counts}")
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.8))
    ax1.hist(explained, bins=40, color="C0")
    ax1.set(xlabel="fraction of variance explained by the neuron's best frequency", ylabel="neurons",
            title=f"run {run_id}, step {steps[-1]}: {alive.sum()} MLP neurons at '='")
    top = int(np.flatnonzero(alive)[np.argmax(explained)])
    im = ax2.imshow(acts[:, top].reshape(p, p), cmap="RdBu_r")
    ax2.set(xlabel="b", ylabel="a", title=f"neuron {top}: frequency {best[np.argmax(explained)]}, "
                                           f"{explained.max():.1%} explained")
    fig.colorbar(im, ax=ax2)
    fig.tight_layout()
    fig.savefig(Path(figures) / "interp_neurons.png", dpi=110)


if __name__ == "__main__":
    main(*sys.argv[1:3])

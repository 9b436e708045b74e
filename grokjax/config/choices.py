"""The names of the registered families, which the sweep keys accept (no JAX here).

Each registry (``models.registry.MODELS``, ``models.layers.ACTIVATIONS``, ``optim.registry.OPTIMIZERS``
and ``GRADIENT_FILTERS``, ``losses.LOSSES``) checks at import that its keys are exactly these names, so a
new family is its registry line plus its name here.
"""

from __future__ import annotations

from typing import Iterable

ARCHS = ("transformer", "mlp")
ACTIVATIONS = ("relu", "gelu", "gelu_tanh", "quadratic")
BLOCKS = ("prenorm", "postnorm", "ln_residual")
INITS = ("lecun", "torch")
POSITIONS = ("learned", "sinusoidal")
BATCHINGS = ("random", "epoch")
MLP_INPUTS = ("onehot", "embed")
OPTIMIZERS = ("adamw", "adam", "sgd")
GRADIENT_FILTERS = ("none", "ema", "ma")
LOSSES = ("softmax", "stablemax", "mse")
DATASETS = ("algorithmic", "digits")
DTYPES = ("float32", "float64")
PRECISIONS = ("float32", "tf32", "bfloat16")
DECAY_MASKS = ("all", "matrices")
STOPS = ("budget", "resolved")
REPACKS = ("auto", "always")
DESIGNS = ("grid", "boundary", "law")  # grid: every run; boundary: the runs chosen where the phase boundary is
# unsure; law: the runs chosen to narrow the t_val ∝ wd^alpha exponent (grokjax.design.designs has the choosers)

# Tasks (Power et al. 2022, appendix A.1.1): tasks.tables implements them.
OPS = ("add", "sub", "mul", "div", "x2_y2", "x2_xy_y2", "x2_xy_y2_x", "x3_xy", "x3_xy2_y", "s5")
OPS_NEEDING_PRIME = ("div",)

# Progress measures (``measures=norms+fourier+excluded``), in their canonical order.
MEASURE_NAMES = ("norms", "fourier", "excluded", "collapse", "logits")
OPS_WITH_FOURIER = tuple(op for op in OPS if op != "s5")
OPS_WITH_EXCLUDED = ("add", "sub")


def canonical_measures(text: str) -> str | None:
    """``a+b`` in canonical order, ``none`` for the empty set, or None when ``text`` is not a set of
    known measures (unknown name, repeated name, empty part)."""
    if text == "none":
        return "none"
    parts = text.split("+")
    if any(p not in MEASURE_NAMES for p in parts) or len(set(parts)) != len(parts):
        return None
    return "+".join(m for m in MEASURE_NAMES if m in parts)


def check_registry(what: str, registered: Iterable[str], declared: tuple[str, ...]) -> None:
    """Fail at import when a registry and its declared names differ (a family added in one place only)."""
    if tuple(registered) != declared:
        raise RuntimeError(f"the {what} registry holds {tuple(registered)} but grokjax.config.choices declares "
                           f"{declared}: add the name in both places")

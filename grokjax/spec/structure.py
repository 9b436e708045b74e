"""Static structure of one compiled group: frozen dataclasses (hashable, so they key program caches)."""

from __future__ import annotations

from dataclasses import dataclass

Scalar = int | float | bool | str


@dataclass(frozen=True)
class TaskConfig:
    """Which binary operation, and the modulus p (ignored by ``s5``)."""

    op: str = "add"
    p: int = 97


@dataclass(frozen=True)
class ModelConfig:
    """Network family and shape.

    ``arch="transformer"``: decoder-only, ``n_layers`` blocks of width ``d_model`` (divisible by ``n_heads``)
    with MLPs of width ``d_mlp``. ``arch="mlp"``: the "2-hot" MLP of Liu et al. 2022 / Gromov 2023 / Prieto et
    al. 2025 with ``n_layers`` hidden layers of width ``d_mlp``; its input is the concatenated one-hot codes
    of a and b (``mlp_input="onehot"``) or learned embeddings of size ``d_model`` (``"embed"``).
    ``n_heads`` and ``layer_norm`` are transformer-only; ``bias`` switches the biases of every dense layer
    that has one (the transformer's MLP, the MLP's layers).
    """

    arch: str = "transformer"
    n_layers: int = 1
    d_model: int = 128
    n_heads: int = 4
    d_mlp: int = 512
    layer_norm: bool = False
    act: str = "relu"
    mlp_input: str = "onehot"
    bias: bool = True

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads


@dataclass(frozen=True)
class TrainConfig:
    """Everything about the training loop that fixes shapes or the compiled program.

    ``batch_size`` is ``"full"`` (every train pair every step), ``"auto"`` (Power et al.:
    min(512, n_train // 2)) or a number of pairs drawn per model per step from its own train split.
    ``optimizer`` (adamw|adam|sgd), ``orthograd``, ``grokfast`` (none|ema|ma) with its ``grokfast_window``,
    and ``loss`` (softmax|stablemax) are structural; their numeric settings are per-model (``hp.*``).
    ``measures`` is a ``+``-joined set of progress measures (norms, fourier, excluded; or none), kept in
    that canonical order so equal sets make one group. ``stop="resolved"`` drops each run from the
    program once its fate is known (grokked: validation accuracy >= 0.99 at ``patience`` evaluations in
    a row after train accuracy reached 0.99; or diverged) and re-packs the rest; ``"budget"`` trains
    every run to ``steps``.
    """

    steps: int = 40_000
    batch_size: int | str = "full"
    eval_every: int = 100
    log_every: int = 1
    warmup_steps: int = 10
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-8
    decay_mask: str = "all"
    optimizer: str = "adamw"
    orthograd: bool = False
    grokfast: str = "none"
    grokfast_window: int = 100
    loss: str = "softmax"
    measures: str = "norms"
    dtype: str = "float32"
    eval_batch_size: int = 4096
    chunk_steps: int = 500
    checkpoint_every: int = 5000
    models_per_batch: int = 0
    stop: str = "budget"
    patience: int = 3


@dataclass(frozen=True)
class GroupConfig:
    """One static group: everything that needs its own compiled program."""

    task: TaskConfig
    model: ModelConfig
    train: TrainConfig


# A run has diverged at the first step whose train loss is non-finite or above this bound, or whose
# parameters after an update are non-finite (cross-entropy at chance is log(n_symbols) ~ 5; a loss of 1e8
# means logit gaps of 1e8 on the training pairs). The engine freezes it there; fit calls it "diverged".
DIVERGENCE_LOSS = 1e8

# Per-model numeric hyperparameters: vmapped arrays, never a recompile.
HP_DEFAULTS: dict[str, Scalar] = {"wd": 1.0, "lr": 1e-3, "frac": 0.3, "seed": 0, "init_scale": 1.0, "momentum": 0.0,
                                  "grokfast_alpha": 0.98, "grokfast_lamb": 2.0}
PER_MODEL_FIELDS = tuple(HP_DEFAULTS)

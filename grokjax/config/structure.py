"""Every sweep key, declared once: its name, default, accepted values, meaning and where it goes.

A key is a field of one of four frozen dataclasses, declared with ``key(default, meaning, ...)``:
``TaskConfig``, ``ModelConfig`` and ``TrainConfig`` hold the structural keys (hashable, so a
``GroupConfig`` of the three keys a compiled program), ``PerModel`` the per-model numbers (vmapped arrays,
never a recompile). ``config.fields`` derives from these declarations the parser's checks, ``grokjax keys``,
the data dictionary of runs.parquet and the per-model arrays (``engine.data.Hparams``); a per-model number
declared with ``optimizer=True`` also lives in the optimizer's state (``optim.factory``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

from grokjax.config import choices as C

Scalar = int | float | bool | str
Check = Callable[[Any], "str | None"]  # returns what would be accepted, or None if the value is fine


def at_least(lo: float) -> Check:
    return lambda v: None if v >= lo else f"a number >= {lo:g}"


INT32_MAX = 2**31 - 1  # the programs hold steps, seeds and counts as int32


def whole(lo: int) -> Check:
    """A whole number from ``lo`` to INT32_MAX."""
    return lambda v: None if lo <= v <= INT32_MAX else f"a whole number from {lo} to {INT32_MAX:,} (int32)"


def positive(v: Any) -> str | None:
    return None if v > 0 else "a number > 0"


def open_unit(v: Any) -> str | None:
    return None if 0 < v < 1 else "a fraction strictly between 0 and 1"


def in_unit(v: Any) -> str | None:
    return None if 0 <= v < 1 else "a number in [0, 1)"


ActsWith = tuple[tuple[str, tuple[Scalar, ...]], ...]  # (path, values) pairs: the key acts if any one holds


def key(default: Scalar, meaning: str, *, choices: tuple[str, ...] = (), check: Check | None = None,
        kind: str | None = None, optimizer: bool = False,
        acts_with: tuple[str, tuple[Scalar, ...]] | ActsWith | None = None) -> Any:
    """Declare one sweep key as a dataclass field. ``kind`` (int, float, bool, choice, batch, measures)
    follows from the default and ``choices`` unless given; a whole number is checked to lie in [1, INT32_MAX]
    unless ``check`` says otherwise. ``optimizer``: a per-model number the optimizer keeps in its state.
    ``acts_with=(path, values)``: the key has an effect only where the key ``path`` takes one of ``values``
    (a value given for it on the command line where it never does is refused); several such pairs, in a
    tuple, mean that any one of them suffices."""
    if kind is None:
        kind = ("choice" if choices else "bool" if isinstance(default, bool) else
                "int" if isinstance(default, int) else "float")
    if check is None and kind == "int":
        check = whole(1)
    if acts_with is not None and isinstance(acts_with[0], str):
        acts_with = (acts_with,)
    return dataclasses.field(default=default, metadata=dict(meaning=meaning, kind=kind, choices=choices,
                                                            check=check, optimizer=optimizer, acts_with=acts_with))


TRANSFORMER = ("model.arch", ("transformer",))
ALGORITHMIC = ("task.dataset", ("algorithmic",))  # the mod-p and S5 tables (not dataset=digits)


@dataclass(frozen=True)
class TaskConfig:
    """Which binary operation, and the modulus p (ignored by ``s5``)."""

    op: str = key("add", "binary operation of the task table (s5: composition in the permutation group S5)",
                  choices=C.OPS, acts_with=ALGORITHMIC)
    p: int = key(97, "modulus of the task (ignored by s5); ops needing inverses need a prime", check=whole(3),
                 acts_with=ALGORITHMIC)
    tokens: int = key(3, "input sequence: 3 (a b =) or 4 (a op b =, vocabulary and output classes p+2, as "
                         "openai/grok and Grokfast's code; the MLP reads a and b and predicts p+2 classes)",
                      check=lambda v: None if v in (3, 4) else "3 or 4", acts_with=ALGORITHMIC)
    nonzero_y: bool = key(False, "leave out the pairs with b = 0 (for every op; Grokfast's x*y table)",
                          acts_with=ALGORITHMIC)
    dataset: str = key("algorithmic", "the data: the algorithmic table of op mod p, or scikit-learn's bundled 8x8 "
                                      "digits (1,797 images, 64 inputs / 16, 10 classes; arch=mlp; Omnigrok)",
                       choices=C.DATASETS)


@dataclass(frozen=True)
class ModelConfig:
    """Network family and shape.

    ``arch="transformer"``: decoder-only, ``n_layers`` blocks of width ``d_model`` (divisible by ``n_heads``)
    with MLPs of width ``d_mlp``. ``arch="mlp"``: the "2-hot" MLP of Liu et al. 2022 / Gromov 2023 / Prieto et
    al. 2025 with ``n_layers`` hidden layers of width ``d_mlp``; its input is the concatenated one-hot codes
    of a and b (``mlp_input="onehot"``) or learned embeddings of size ``d_model`` (``"embed"``).
    """

    arch: str = key("transformer", "network family: decoder-only transformer, or the 2-hot MLP", choices=C.ARCHS)
    n_layers: int = key(1, "transformer blocks, or hidden layers of the MLP")
    d_model: int = key(128, "residual width (transformer) or embedding size (MLP with mlp_input=embed)")
    n_heads: int = key(4, "attention heads (transformer); must divide d_model", acts_with=TRANSFORMER)
    d_mlp: int = key(512, "hidden width of the transformer's MLP, or of every MLP hidden layer")
    layer_norm: bool = key(False, "LayerNorm before attention, MLP and unembedding (block=prenorm)",
                           acts_with=TRANSFORMER)
    block: str = key("prenorm", "transformer block: prenorm (x + attn(LN(x)), LN if layer_norm), postnorm "
                                "(openai/grok: LN(x + attn(x))), ln_residual (Grokfast's code: x = LN(x); "
                                "x + attn(x); x + mlp(LN(x)))", choices=C.BLOCKS, acts_with=TRANSFORMER)
    init: str = key("lecun", "transformer initialisation: lecun (flax defaults, no attention biases) or torch "
                             "(PyTorch defaults: nn.Linear U(+-1/sqrt(fan_in)) with biases, attention in-"
                             "projection xavier-uniform, zero attention biases (with bias), N(0,1) embeddings, "
                             "LN eps 1e-5)",
                    choices=C.INITS, acts_with=TRANSFORMER)
    pos: str = key("learned", "positions: learned embeddings, or fixed sinusoidal (Vaswani et al. 2017)",
                   choices=C.POSITIONS, acts_with=TRANSFORMER)
    act: str = key("relu", "activation: relu, gelu (exact, erf: torch's nn.GELU), gelu_tanh (the tanh "
                           "approximation), or quadratic x^2 (Gromov 2023)", choices=C.ACTIVATIONS)
    mlp_input: str = key("onehot", "MLP input: concatenated one-hot codes of a and b, or learned embeddings",
                         choices=C.MLP_INPUTS, acts_with=("model.arch", ("mlp",)))
    bias: bool = key(True, "biases in the dense layers that have them")

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads


@dataclass(frozen=True)
class TrainConfig:
    """Everything about the training loop that fixes shapes or the compiled program.

    ``measures`` is kept in canonical order (``config.choices.canonical_measures``) so equal sets make one
    group. ``stop="resolved"`` drops each run from the program once its fate is known (grokked: validation
    accuracy >= ``schedule.THRESHOLD`` at ``patience`` evaluations in a row after train accuracy reached it;
    or diverged) and gives its slot to the next queued run; ``"budget"`` trains every run to ``steps``.
    """

    steps: int = key(40_000, "training steps per run (the budget)")
    batch_size: int | str = key("full", "train pairs per step: full, auto (min(512, n_train/2)) or a number",
                                kind="batch")
    eval_every: int = key(100, "steps between evaluations on the validation split")
    log_every: int = key(1, "steps between logged train metrics")
    warmup_steps: int = key(10, "linear learning-rate warmup over this many updates", check=whole(0))
    warmup_from_zero: bool = key(False, "warmup factor min(u/W, 1) for update u = 0, 1, ... (torch LambdaLR as "
                                        "Grokfast's and openai/grok's code: the first update has lr 0); "
                                        "default min((u+1)/W, 1)")
    batching: str = key("random", "minibatches: random (B distinct train pairs drawn afresh each step) or "
                                  "epoch (a fresh permutation each epoch, split in order, the last batch "
                                  "short, as torch.split or a DataLoader); no effect with batch_size=full",
                        choices=C.BATCHINGS)
    beta1: float = key(0.9, "Adam first-moment decay (momentum for sgd is the key momentum)", check=in_unit)
    beta2: float = key(0.98, "Adam second-moment decay", check=in_unit)
    eps: float = key(1e-8, "Adam epsilon", check=positive)
    decay_mask: str = key("all", "which parameters weight decay acts on: all, or matrices only",
                          choices=C.DECAY_MASKS)
    optimizer: str = key("adamw", "adamw (decoupled decay), adam or sgd (wd as coupled L2, torch semantics)",
                         choices=C.OPTIMIZERS)
    orthograd: bool = key(False, "project each gradient orthogonal to its weights, rescaled to its norm "
                                 "(Prieto et al. 2025)")
    grokfast: str = key("none", "gradient filter before the optimizer: none, ema or ma (Lee et al. 2024)",
                        choices=C.GRADIENT_FILTERS)
    grokfast_window: int = key(100, "window of the ma filter, in steps", acts_with=("train.grokfast", ("ma",)))
    loss: str = key("softmax", "cross-entropy through softmax or StableMax (Prieto et al. 2025), or mse: the mean "
                               "squared error against one-hot targets (Omnigrok)", choices=C.LOSSES)
    precision: str = key("float32", "compute precision of a float32 model: float32 (true float32 matmuls), tf32 "
                                    "(TensorFloat-32 matmuls on GPUs that have them) or bfloat16 (forward and "
                                    "backward in bfloat16; float32 master weights, optimizer state and loss)",
                         choices=C.PRECISIONS, acts_with=("train.dtype", ("float32",)))
    loss_dtype: str = key("float32", "precision of the loss: the logits are cast to float64 before the loss "
                                     "(as Prieto et al.'s and Nanda's code do) with float64; a float64 model's "
                                     "loss is float64 either way", choices=C.DTYPES)
    measures: str = key("norms", "progress measures computed on the device: a +-joined set of norms, fourier, "
                                 "excluded, collapse, logits (or none)", kind="measures", choices=C.MEASURE_NAMES)
    dtype: str = key("float32", "floating-point precision of parameters, training and stored metrics",
                     choices=C.DTYPES)
    eval_batch_size: int = key(4096, "validation pairs per evaluation call (memory, not results)")
    chunk_steps: int = key(500, "steps per compiled call; the host sees data only between chunks")
    snapshot_every: int = key(0, "keep every run's parameters every this many steps (a multiple of chunk_steps) "
                                 "under DIR/params; 0: only each run's final parameters", check=whole(0))
    snapshot_at_transitions: bool = key(False, "also keep every run's parameters at its t_train (first logged train "
                                               "accuracy >= 0.99) and t_val_first (first evaluation at validation "
                                               "accuracy >= 0.99), the steps grokjax fit names so")
    snapshot_optimizer: bool = key(False, "keep each run's optimizer state with its kept parameters (what a warm "
                                          "start with init_optimizer=true continues from)")
    init_from: str = key("", "warm starts: a results directory whose kept parameters the runs with init_run >= 0 "
                             "start from, instead of a fresh initialisation", kind="path")
    init_optimizer: bool = key(False, "warm starts: also take the source run's optimizer state (moments and "
                                      "step count; kept with snapshot_optimizer=true), with this run's own "
                                      "hyperparameters")
    checkpoint_every: int = key(5000, "steps between checkpoints (for --resume)")
    models_per_batch: int = key(0, "slots per group's compiled program (each trains one run at a time, the next "
                                   "queued run taking a freed slot); 0 = as many as fit in memory", check=whole(0))
    stop: str = key("budget", "budget: every run trains all steps; resolved: a run stops once grokked or diverged",
                    choices=C.STOPS)
    repack: str = key("auto", "stop=resolved, once a group's queue is empty: auto (the busy runs move into a "
                              "smaller program where that saves more than its compilation costs) or always (at "
                              "every stop: the same program sizes every time, as over several processes)",
                      choices=C.REPACKS,
                      acts_with=("train.stop", ("resolved",)))
    patience: int = key(3, "stop=resolved: evaluations in a row at validation accuracy >= 0.99 that make a run "
                           "grokked", acts_with=("train.stop", ("resolved",)))
    design: str = key("grid", "grid: train every run of the grid; boundary: train only the runs=N of them that map "
                              "the phase boundary best (where P(grokked within the budget) = 1/2 along the one "
                              "swept number), each freed slot taking the candidate whose outcome is least certain; "
                              "law: the runs=N that narrow the exponent of t_val ∝ wd^alpha most (cells at the "
                              "ends of the range where runs grok)",
                      choices=C.DESIGNS)
    runs: int = key(0, "design=boundary|law: how many of the grid's runs to train; 0: a quarter of them (at least "
                       "8)", check=whole(0), acts_with=("train.design", ("boundary", "law")))
    model_step_budget: int = key(0, "design=boundary|law: choose no more runs once the chosen runs have trained this many "
                                    "model-steps in all (checked at each refill; the runs in slots then finish); "
                                    "0: no limit but runs", check=whole(0), acts_with=("train.design", ("boundary", "law")))


@dataclass(frozen=True)
class PerModel:
    """The per-model numbers of one run: [N] arrays in a compiled program (``engine.data.Hparams``)."""

    wd: float = key(1.0, "weight decay (decoupled for adamw, coupled L2 for adam and sgd)", check=at_least(0),
                    optimizer=True)
    lr: float = key(1e-3, "peak learning rate", check=positive, optimizer=True)
    frac: float = key(0.3, "fraction of the task table used for training", check=open_unit)
    seed: int = key(0, "random seed of the initialisation (and of the split and minibatches unless data_seed)",
                    check=whole(0))
    data_seed: int = key(-1, "random seed of the split and the minibatches; -1: seed", check=whole(-1))
    embed_std: float = key(0.0, "std of the token and position embeddings' normal init; 0: the init's own "
                                "(1/sqrt(d_model) for init=lecun, 1 for init=torch); the transformer's and "
                                "mlp_input=embed's embeddings", check=at_least(0),
                          acts_with=(TRANSFORMER, ("model.mlp_input", ("embed",))))
    init_scale: float = key(1.0, "multiplies every initial weight (Omnigrok's alpha)", check=positive)
    init_run: int = key(-1, "warm starts: the run_id of init_from whose kept parameters this run starts from; -1: a "
                            "fresh initialisation", check=whole(-1))
    init_step: int = key(-1, "warm starts: the kept step of init_run to start from; -1: its last kept (final) "
                             "parameters", check=whole(-1))
    momentum: float = key(0.0, "SGD momentum (sgd only)", check=in_unit, optimizer=True,
                          acts_with=("train.optimizer", ("sgd",)))
    grokfast_alpha: float = key(0.98, "EMA decay of the grokfast=ema filter", check=in_unit, optimizer=True,
                                acts_with=("train.grokfast", ("ema",)))
    grokfast_lamb: float = key(2.0, "amplification of the filtered gradient (grokfast ema and ma)",
                               check=at_least(0), optimizer=True, acts_with=("train.grokfast", ("ema", "ma")))


@dataclass(frozen=True)
class GroupConfig:
    """One static group: everything that needs its own compiled program."""

    task: TaskConfig
    model: ModelConfig
    train: TrainConfig


# Where each declaring dataclass lands in a dotted key path (``model.d_model``, ``hp.wd``).
SECTIONS: dict[str, type] = {"task": TaskConfig, "model": ModelConfig, "train": TrainConfig, "hp": PerModel}

# A run has diverged at the first step whose train loss is non-finite or above this bound, or whose
# parameters after an update are non-finite (cross-entropy at chance is log(n_symbols) ~ 5; a loss of 1e8
# means logit gaps of 1e8 on the training pairs). The engine freezes it there; fit calls it "diverged".
DIVERGENCE_LOSS = 1e8

PER_MODEL_FIELDS = tuple(f.name for f in dataclasses.fields(PerModel))
HP_DEFAULTS: dict[str, Scalar] = {f.name: f.default for f in dataclasses.fields(PerModel)}
OPTIMIZER_HPARAMS = tuple(f.name for f in dataclasses.fields(PerModel) if f.metadata["optimizer"])
INTEGER_HPARAMS = tuple(f.name for f in dataclasses.fields(PerModel) if f.metadata["kind"] == "int")

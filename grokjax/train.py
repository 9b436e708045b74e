"""The training engine: one model per function, vmapped over the model axis, scanned over steps.

``init_one``, ``train_step_one`` and ``evaluate_one`` see ONE model. ``Program`` vmaps them over a batch
of models and scans ``chunk_steps`` steps in one compiled call; the host only sees data at chunk
boundaries. No I/O happens here: metrics are return values.

Randomness depends only on a run's own seed: ``key(seed)`` folded with 0 (split), 1 (init), 2 (batches,
then folded with the step). So a run trains identically alone or inside any grid.

Step convention: the row for step s holds the metrics of the parameters after s updates; train loss and
accuracy are those of the batch that update s+1 is computed from. Evaluation happens at steps that are
multiples of ``eval_every`` and at the last step.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Iterator, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from grokjax.config import GroupConfig, Run, batch_size_of, n_train_of
from grokjax.model import Transformer
from grokjax.tasks import TaskTable, make_table

METRIC_NAMES = ("train_loss", "train_acc", "val_loss", "val_acc", "param_norm")


class Hparams(NamedTuple):
    """Per-model numeric hyperparameters; scalars for one model, [N] arrays for a batch."""

    wd: jax.Array
    lr: jax.Array
    frac: jax.Array
    seed: jax.Array
    init_scale: jax.Array
    n_train: jax.Array  # round(frac * n_pairs), computed on the host


class Split(NamedTuple):
    """A model's own train/validation split, padded to the group's static sizes."""

    train_idx: jax.Array  # [n_train_max] indices into the task table
    train_w: jax.Array  # [n_train_max] 1 for real train pairs, 0 for padding
    val_idx: jax.Array  # [n_val_max]
    val_w: jax.Array  # [n_val_max]


class ModelState(NamedTuple):
    params: Any
    opt_state: Any
    diverged_step: jax.Array  # int32, -1 while the run is healthy


def hparams_for(runs: list[Run], n_pairs: int, dtype: Any = np.float32) -> Hparams:
    """Stack the per-model hyperparameters of some runs into host arrays of shape [N]."""

    def col(name: str, dt: Any) -> np.ndarray:
        return np.array([r.get(f"hp.{name}") for r in runs], dtype=dt)

    frac = col("frac", np.float64)
    n_train = np.array([n_train_of(f, n_pairs) for f in frac], dtype=np.int32)
    return Hparams(col("wd", dtype), col("lr", dtype), frac.astype(dtype), col("seed", np.int32),
                   col("init_scale", dtype), n_train)


def pad_models(tree: Any, n: int) -> Any:
    """Pad the leading model axis to n by repeating the last model (padding runs are discarded)."""

    def pad(x: np.ndarray) -> np.ndarray:
        extra = n - x.shape[0]
        return x if extra == 0 else np.concatenate([x, np.repeat(x[-1:], extra, axis=0)])

    return jax.tree.map(pad, tree)


def param_norm(params: Any) -> jax.Array:
    return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(params)))


def _all_finite(tree: Any) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


@dataclass(frozen=True)
class Engine:
    """Single-model functions for one static group. Shapes are fixed by the group and n_train bounds."""

    group: GroupConfig
    table: TaskTable
    n_train_max: int
    n_train_min: int

    @property
    def dtype(self) -> Any:
        return jnp.float64 if self.group.train.dtype == "float64" else jnp.float32

    @property
    def model(self) -> Transformer:
        return Transformer(self.group.model, self.table.vocab_size, self.table.n_symbols, dtype=self.dtype)

    @property
    def batch_size(self) -> int | None:
        return batch_size_of(self.group.train, self.n_train_min)

    @property
    def n_val_max(self) -> int:
        return self.table.n_pairs - self.n_train_min

    @property
    def eval_batch(self) -> int:
        return min(self.group.train.eval_batch_size, self.n_val_max)

    def optimizer(self, lr: Any = 0.0, wd: Any = 0.0) -> optax.GradientTransformation:
        """AdamW (decoupled decay, PyTorch semantics: p <- p - lr*wd*p) with lr and wd as optimizer
        state, then linear warmup scaling the whole update (as PyTorch's LambdaLR scales lr)."""
        t = self.group.train
        mask = (lambda params: jax.tree.map(lambda x: x.ndim >= 2, params)) if t.decay_mask == "matrices" else None
        adamw = optax.inject_hyperparams(optax.adamw, static_args=("mask",))(
            learning_rate=lr, b1=t.beta1, b2=t.beta2, eps=t.eps, weight_decay=wd, mask=mask)
        if t.warmup_steps == 0:
            return adamw
        warmup = float(t.warmup_steps)
        return optax.chain(adamw, optax.scale_by_schedule(lambda count: jnp.minimum(1.0, (count + 1) / warmup)))

    def keys(self, seed: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        base = jax.random.key(seed)
        return jax.random.fold_in(base, 0), jax.random.fold_in(base, 1), jax.random.fold_in(base, 2)

    def init_one(self, hp: Hparams) -> tuple[ModelState, Split]:
        split_key, init_key, _ = self.keys(hp.seed)
        perm = jax.random.permutation(split_key, self.table.n_pairs).astype(jnp.int32)
        n_val_max = self.n_val_max
        split = Split(
            train_idx=perm[: self.n_train_max],
            train_w=(jnp.arange(self.n_train_max) < hp.n_train).astype(self.dtype),
            val_idx=perm[self.n_train_min:],
            val_w=(jnp.arange(n_val_max) + self.n_train_min >= hp.n_train).astype(self.dtype),
        )
        dummy = jnp.zeros((1, 3), jnp.int32)
        params = self.model.init(init_key, dummy)["params"]
        params = jax.tree.map(lambda x: x * hp.init_scale.astype(x.dtype), params)
        opt_state = self.optimizer(hp.lr.astype(self.dtype), hp.wd.astype(self.dtype)).init(params)
        return ModelState(params, opt_state, jnp.array(-1, jnp.int32)), split

    def loss_one(self, params: Any, inputs: jax.Array, labels: jax.Array, weights: jax.Array
                 ) -> tuple[jax.Array, jax.Array]:
        """Weighted mean cross-entropy and accuracy on the answer token. inputs [B, 3], labels [B]."""
        logits = self.model.apply({"params": params}, inputs)
        logp = jax.nn.log_softmax(logits.astype(jnp.float32) if self.dtype == jnp.float32 else logits)
        nll = -jnp.take_along_axis(logp, labels[:, None], axis=1)[:, 0]
        correct = (jnp.argmax(logits, axis=-1) == labels).astype(weights.dtype)
        total = jnp.maximum(weights.sum(), 1)
        return (nll * weights).sum() / total, (correct * weights).sum() / total

    def batch_one(self, split: Split, hp: Hparams, step: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Indices [B] and weights [B] of this step's batch: the whole split, or B distinct train pairs
        drawn uniformly from the model's own split (fresh each step)."""
        if self.batch_size is None:
            return split.train_idx, split.train_w
        _, _, batch_key = self.keys(hp.seed)
        # Draw over the whole table size so the stream does not depend on the group's padding.
        u = jax.random.uniform(jax.random.fold_in(batch_key, step), (self.table.n_pairs,))[: self.n_train_max]
        u = jnp.where(jnp.arange(self.n_train_max) < hp.n_train, u, -1.0)
        _, pos = jax.lax.top_k(u, self.batch_size)
        return split.train_idx[pos], jnp.ones((self.batch_size,), self.dtype)

    def train_step_one(self, state: ModelState, split: Split, hp: Hparams, step: jax.Array,
                       inputs: jax.Array, labels: jax.Array) -> tuple[ModelState, tuple[jax.Array, jax.Array]]:
        idx, w = self.batch_one(split, hp, step)
        (loss, acc), grads = jax.value_and_grad(self.loss_one, has_aux=True)(state.params, inputs[idx],
                                                                               labels[idx], w)
        updates, opt_state = self.optimizer().update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        healthy = state.diverged_step < 0
        active = step < self.group.train.steps
        finite = jnp.isfinite(loss) & _all_finite(params)
        keep = healthy & active & finite
        pick = lambda new, old: jax.tree.map(lambda a, b: jnp.where(keep, a, b), new, old)  # noqa: E731
        diverged = jnp.where(healthy & active & ~finite, step, state.diverged_step).astype(jnp.int32)
        new_state = ModelState(pick(params, state.params), pick(opt_state, state.opt_state), diverged)
        nan = jnp.array(jnp.nan, loss.dtype)
        return new_state, (jnp.where(healthy & jnp.isfinite(loss), loss, nan), jnp.where(healthy, acc, nan))

    def evaluate_one(self, params: Any, split: Split, inputs: jax.Array, labels: jax.Array
                     ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Validation loss and accuracy over the model's held-out pairs, in chunks of eval_batch_size so
        memory stays bounded; and the global parameter L2 norm."""
        size = self.eval_batch
        n = self.n_val_max
        n_chunks = -(-n // size)
        pad = n_chunks * size - n
        idx = jnp.pad(split.val_idx, (0, pad)).reshape(n_chunks, size)
        w = jnp.pad(split.val_w, (0, pad)).reshape(n_chunks, size)

        def body(acc: tuple[jax.Array, jax.Array], chunk: tuple[jax.Array, jax.Array]):
            i, wt = chunk
            loss, correct = self.loss_one(params, inputs[i], labels[i], wt)
            total = wt.sum()
            return (acc[0] + loss * total, acc[1] + correct * total), None

        zero = jnp.zeros((), self.dtype)
        (loss_sum, correct_sum), _ = jax.lax.scan(body, (zero, zero), (idx, w))
        n_val = jnp.maximum(split.val_w.sum(), 1)
        return loss_sum / n_val, correct_sum / n_val, param_norm(params)


def _chunk_fn(engine: Engine, chunk_steps: int) -> Callable:
    steps, eval_every = engine.group.train.steps, engine.group.train.eval_every
    v_step = jax.vmap(engine.train_step_one, in_axes=(0, 0, 0, None, None, None))
    v_eval = jax.vmap(engine.evaluate_one, in_axes=(0, 0, None, None))

    def train_chunk(states: ModelState, splits: Split, hps: Hparams, start: jax.Array,
                    inputs: jax.Array, labels: jax.Array) -> tuple[ModelState, dict[str, jax.Array], jax.Array]:
        n_models = hps.seed.shape[0]

        def body(states: ModelState, step: jax.Array):
            do_eval = (step % eval_every == 0) | (step == steps - 1)
            nan = jnp.full((n_models,), jnp.nan, engine.dtype)
            val_loss, val_acc, norm = jax.lax.cond(
                do_eval, lambda: v_eval(states.params, splits, inputs, labels), lambda: (nan, nan, nan))
            dead = states.diverged_step >= 0
            val_loss, val_acc = jnp.where(dead, jnp.nan, val_loss), jnp.where(dead, jnp.nan, val_acc)
            states, (train_loss, train_acc) = v_step(states, splits, hps, step, inputs, labels)
            out = dict(train_loss=train_loss, train_acc=train_acc, val_loss=val_loss, val_acc=val_acc,
                       param_norm=norm)
            return states, {k: v.astype(jnp.float32) for k, v in out.items()}

        states, metrics = jax.lax.scan(body, states, start + jnp.arange(chunk_steps, dtype=jnp.int32))
        return states, metrics, states.diverged_step + 0

    return train_chunk


@dataclass
class ChunkResult:
    """What the host receives at a chunk boundary. metrics: name -> [K, n_real] float32 for the steps
    start..start+K-1 (K cut at the budget); diverged_step: [n_real] (-1 healthy); state: the host copy of
    the full (padded) state after the chunk, fetched only where the caller asked for it."""

    start: int
    end: int
    metrics: dict[str, np.ndarray]
    diverged_step: np.ndarray
    state: ModelState | None


def device_memory_budget(device: jax.Device) -> int:
    """Bytes a program may use on this device: free accelerator memory, or half the free host memory."""
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if stats and "bytes_limit" in stats:
        return int(0.9 * (stats["bytes_limit"] - stats.get("bytes_in_use", 0)))
    try:
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        free = 8 << 30
    return int(0.5 * free)


def _program_bytes(compiled: Any) -> int | None:
    try:
        m = compiled.memory_analysis()
        return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
                   - m.alias_size_in_bytes)
    except Exception:  # memory analysis is not offered by every backend
        return None


_PROGRAMS: dict[tuple, "Program"] = {}


class Program:
    """A compiled batch of ``n_models`` models for one group: init and train_chunk, model axis sharded
    over all local devices (padded to a multiple of the device count)."""

    def __init__(self, engine: Engine, n_models: int):
        self.engine = engine
        self.devices = jax.local_devices()
        n_dev = len(self.devices)
        self.n_models = -(-n_models // n_dev) * n_dev
        self.chunk_steps = min(engine.group.train.chunk_steps, engine.group.train.steps)
        mesh = Mesh(np.array(self.devices), ("models",))
        self.sharded = NamedSharding(mesh, PartitionSpec("models"))
        self.replicated = NamedSharding(mesh, PartitionSpec())
        self.inputs = jax.device_put(engine.table.inputs, self.replicated)
        self.labels = jax.device_put(engine.table.labels, self.replicated)
        hp_shape = self._abstract_hparams()
        self._init = jax.jit(jax.vmap(engine.init_one), out_shardings=self.sharded).lower(hp_shape).compile()
        state_shape, split_shape = jax.eval_shape(jax.vmap(engine.init_one), hp_shape)
        shard = lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=self.sharded)  # noqa: E731
        self.abstract = (jax.tree.map(shard, state_shape), jax.tree.map(shard, split_shape), hp_shape)
        by_model = NamedSharding(mesh, PartitionSpec(None, "models"))
        self._chunk = jax.jit(_chunk_fn(engine, self.chunk_steps), donate_argnums=(0,),
                              out_shardings=(self.sharded, by_model, self.sharded)).lower(
            jax.tree.map(shard, state_shape), jax.tree.map(shard, split_shape), hp_shape,
            jax.ShapeDtypeStruct((), jnp.int32), self.inputs, self.labels).compile()
        self.bytes = _program_bytes(self._chunk)

    def _abstract_hparams(self) -> Hparams:
        dt = self.engine.dtype
        n = self.n_models
        f = lambda d: jax.ShapeDtypeStruct((n,), d, sharding=self.sharded)  # noqa: E731
        return Hparams(f(dt), f(dt), f(dt), f(jnp.int32), f(dt), f(jnp.int32))

    @classmethod
    def get(cls, engine: Engine, n_models: int) -> "Program":
        """Compiled programs are cached, so a new numeric grid of the same shape never recompiles."""
        key = (engine, n_models, len(jax.local_devices()))
        if key not in _PROGRAMS:
            _PROGRAMS[key] = cls(engine, n_models)
        return _PROGRAMS[key]

    def put(self, hps: Hparams) -> Hparams:
        host = pad_models(hps, self.n_models)
        dt = np.dtype(self.engine.dtype)
        host = Hparams(*(x.astype(dt) if x.dtype.kind == "f" else x for x in host))
        return jax.device_put(host, self.sharded)

    def init(self, hps: Hparams) -> tuple[ModelState, Split]:
        return self._init(hps)

    def run(self, state: ModelState, splits: Split, hps: Hparams, start: int, n_real: int,
            want_state: Callable[[int], bool] = lambda end: False,
            should_stop: Callable[[], bool] = lambda: False) -> Iterator[ChunkResult]:
        """Train from step ``start`` to the budget, yielding each chunk's metrics.

        The next chunk is dispatched before the previous one's metrics are fetched, so the device does
        not wait on the host. Because the state is donated to the next chunk, a host copy is taken at the
        boundaries where ``want_state(end)`` is true (checkpoints) and always with the last result, which
        is the final chunk or, when ``should_stop()`` (checked before each dispatch) became true, the last
        chunk before the stop.
        """
        steps = self.engine.group.train.steps
        pending = None
        for s in range(start, steps, self.chunk_steps):
            if should_stop():
                break
            state, metrics, dead = self._chunk(state, splits, hps, jnp.int32(s), self.inputs, self.labels)
            end = min(s + self.chunk_steps, steps)
            host_state = jax.device_get(state) if want_state(end) else None
            if pending is not None:
                yield self._fetch(*pending, n_real)
            pending = (s, end, metrics, dead, host_state)
        if pending is not None:
            # The last dispatched state was never donated: the final result (end or stop) always carries it.
            yield self._fetch(*pending[:4], jax.device_get(state), n_real)

    def _fetch(self, start: int, end: int, metrics: dict[str, jax.Array], dead: jax.Array,
               host_state: ModelState | None, n_real: int) -> ChunkResult:
        host = jax.device_get(metrics)
        return ChunkResult(start, end, {name: np.asarray(v)[: end - start, :n_real] for name, v in host.items()},
                           np.asarray(jax.device_get(dead))[:n_real], host_state)

    def restore(self, host_state: ModelState) -> ModelState:
        """Put a host copy of a state (from a checkpoint) back on the devices, sharded like init's."""
        return jax.device_put(host_state, self.sharded)


def choose_models_per_batch(engine: Engine, n_models: int, requested: int = 0,
                            budget: int | None = None) -> tuple[int, str]:
    """Largest batch of models whose compiled program fits the device memory budget.

    Compiles the program for all models first (the usual case, reused for training); if it does not fit,
    estimates the per-model cost from a 1- and 2-model program, then checks the chosen batch's own
    compiled program and shrinks it until it fits.
    Returns (models per batch, a sentence explaining the choice).
    """
    if requested:
        m = min(requested, n_models)
        return m, f"{m} models per batch (models_per_batch={requested})"
    budget = budget if budget is not None else device_memory_budget(jax.local_devices()[0])
    full = Program.get(engine, n_models).bytes
    if full is None or full <= budget:
        shown = "unknown" if full is None else f"{full / 2**20:.0f} MiB"
        return n_models, f"all {n_models} models in one batch ({shown} of {budget / 2**20:.0f} MiB)"
    one, two = Program.get(engine, 1).bytes, Program.get(engine, 2).bytes
    per_model = max(two - one, 1)
    fixed = max(one - per_model, 0)
    m = int(max(1, min(n_models, (budget - fixed) // per_model)))
    # The linear estimate is only a start: check the real program (needed anyway) and shrink until it fits.
    while m > 1 and (used := Program.get(engine, m).bytes) is not None and used > budget:
        m = max(1, min(m - 1, int(m * budget / used)))
    return m, (f"{m} models per batch: {n_models} models need ~{full / 2**20:.0f} MiB, "
                    f"{per_model / 2**20:.1f} MiB each, budget {budget / 2**20:.0f} MiB")


def engine_for(group: GroupConfig, runs: list[Run]) -> Engine:
    table = make_table(group.task)
    n_train = [n_train_of(float(r.get("hp.frac")), table.n_pairs) for r in runs]
    return Engine(group, table, max(n_train), min(n_train))


def train_alone(group: GroupConfig, runs: list[Run]) -> dict[str, np.ndarray]:
    """Train some runs in one program to the end and return stacked metrics name -> [steps, N].
    A small helper for tests and notebooks; the sweep streams instead of holding the history."""
    engine = engine_for(group, runs)
    prog = Program.get(engine, len(runs))
    hps = prog.put(hparams_for(runs, engine.table.n_pairs))
    state, splits = prog.init(hps)
    chunks = [c.metrics for c in prog.run(state, splits, hps, 0, len(runs))]
    return {k: np.concatenate([c[k] for c in chunks]) for k in METRIC_NAMES}


def train_flops_per_chunk(prog: Program) -> float | None:
    """FLOPs of the training steps in one chunk (evaluation excluded), from XLA's cost analysis of one
    vmapped step times the chunk length: XLA counts a scan's body once, not once per iteration."""
    state, split, hps = prog.abstract
    step = jax.jit(jax.vmap(prog.engine.train_step_one, in_axes=(0, 0, 0, None, None, None)))
    try:
        cost = step.lower(state, split, hps, jax.ShapeDtypeStruct((), jnp.int32), prog.inputs,
                          prog.labels).compile().cost_analysis()
    except Exception:  # cost analysis is not offered by every backend
        return None
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost["flops"]) * prog.chunk_steps if cost and "flops" in cost else None

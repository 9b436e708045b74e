"""One model's functions for a static group: init, loss, one train step, evaluation.

Everything here sees ONE model; ``program`` vmaps it. Randomness depends only on a run's own seeds:
``key(seed)`` folded with 1 gives the initialisation; ``key(data_seed)`` (or ``key(seed)`` when data_seed is
-1) folded with 0 gives the split and with 2 the batches (then folded with the step, or with the epoch for
batching=epoch). So a run's randomness is the same alone or inside any grid.

Step convention: the row for step s holds the metrics of the parameters after s updates; train loss and
accuracy are those of the batch that update s+1 is computed from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from grokjax.config.choices import MEASURE_NAMES
from grokjax.config.schedule import THRESHOLD, TRAIN_COLUMNS, is_logged_step
from grokjax.config.structure import DIVERGENCE_LOSS, OPTIMIZER_HPARAMS, GroupConfig
from grokjax.engine.data import Hparams, Split
from grokjax.engine.measures import (
    fourier_basis,
    fourier_measures,
    group_norms,
    key_mask,
    last_layer_norm,
    logit_scale,
    restricted_and_excluded,
    sum_directions,
    tree_norm,
)
from grokjax.grid.expand import Run, batch_size_of, n_train_of
from grokjax.losses import LOSSES, collapse_fractions
from grokjax.models.registry import make_model
from grokjax.models.transformer import embed_std
from grokjax.optim.factory import make_optimizer
from grokjax.tasks.tables import TaskTable, make_table


def is_dead(diverged_step: jax.Array, step: jax.Array) -> jax.Array:
    """Whether the metric row ``step`` belongs to a run that diverged at or before it."""
    return (diverged_step >= 0) & (step >= diverged_step)


class Transitions(NamedTuple):
    """ONE model's parameters at its t_train (the first logged step with train_acc >= THRESHOLD) and its
    t_val_first (the first evaluation with val_acc >= THRESHOLD): those the step's metrics were measured
    with, before its update. Steps -1 until reached (``snapshot_at_transitions``)."""

    train_step: jax.Array  # int32
    val_step: jax.Array  # int32
    train_params: Any
    val_params: Any


class ModelState(NamedTuple):
    params: Any
    opt_state: Any
    diverged_step: jax.Array  # int32, -1 while the run is healthy
    transitions: Transitions | None = None  # with snapshot_at_transitions (None adds no leaves)


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
    def x64(self) -> bool:
        """Whether the group's programs need JAX's 64-bit mode: a float64 model, or a float64 loss."""
        return self.dtype == jnp.float64 or self.group.train.loss_dtype == "float64"

    @property
    def model(self) -> nn.Module:
        return make_model(self.group.model, self.table.vocab_size, self.table.n_classes, self.dtype,
                          self.table.seq_len)

    @property
    def matmul_precision(self) -> str:
        """JAX's default matmul precision for the group's programs: true float32 unless precision=tf32."""
        return "tensorfloat32" if self.group.train.precision == "tf32" else "highest"

    def forward(self, params: Any, inputs: jax.Array) -> jax.Array:
        """The logits [B, n_classes]: in the model's dtype, or (precision=bfloat16) computed in bfloat16
        from a bfloat16 copy of the float32 parameters, so the gradient reaches the float32 master weights."""
        if self.group.train.precision != "bfloat16":
            return self.model.apply({"params": params}, inputs)
        half = make_model(self.group.model, self.table.vocab_size, self.table.n_classes, jnp.bfloat16,
                          self.table.seq_len)
        cast = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
        return half.apply({"params": cast}, inputs.astype(jnp.bfloat16) if self.table.features else inputs)

    @property
    def batch_size(self) -> int | None:
        return batch_size_of(self.group.train, self.n_train_min)

    @property
    def n_val_max(self) -> int:
        return self.table.n_pairs - self.n_train_min

    @property
    def eval_batch(self) -> int:
        return min(self.group.train.eval_batch_size, self.n_val_max)

    def optimizer(self, hp: Hparams | None = None) -> optax.GradientTransformation:
        """The optimizer; with ``hp`` its state starts with this model's numbers (cast to the dtype)."""
        values = None if hp is None else {k: getattr(hp, k).astype(self.dtype) for k in OPTIMIZER_HPARAMS}
        return make_optimizer(self.group.train, values)

    def keys(self, seed: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        base = jax.random.key(seed)
        return jax.random.fold_in(base, 0), jax.random.fold_in(base, 1), jax.random.fold_in(base, 2)

    def data_keys(self, hp: Hparams) -> tuple[jax.Array, jax.Array, jax.Array]:
        """The keys of ``data_seed`` (the split, index 0, and the batches, index 2), or of ``seed`` where
        data_seed is -1."""
        return self.keys(jnp.where(hp.data_seed >= 0, hp.data_seed, hp.seed))

    def init_one(self, hp: Hparams) -> tuple[ModelState, Split]:
        split_key, init_key = self.data_keys(hp)[0], self.keys(hp.seed)[1]
        perm = jax.random.permutation(split_key, self.table.n_pairs).astype(jnp.int32)
        n_val_max = self.n_val_max
        split = Split(
            train_idx=perm[: self.n_train_max],
            train_w=(jnp.arange(self.n_train_max) < hp.n_train).astype(self.dtype),
            val_idx=perm[self.n_train_min:],
            val_w=(jnp.arange(n_val_max) + self.n_train_min >= hp.n_train).astype(self.dtype),
        )
        dummy = jnp.zeros((1, self.table.seq_len), jnp.float32 if self.table.features else jnp.int32)
        params = self.model.init(init_key, dummy)["params"]
        params = jax.tree.map(lambda x: x * hp.init_scale.astype(x.dtype), params)
        params = self._rescale_embeddings(params, hp.embed_std)
        opt_state = self.optimizer(hp).init(params)
        transitions = None
        if self.group.train.snapshot_at_transitions:
            never, zeros = jnp.array(-1, jnp.int32), jax.tree.map(jnp.zeros_like, params)
            transitions = Transitions(never, never, zeros, zeros)
        return ModelState(params, opt_state, jnp.array(-1, jnp.int32), transitions), split

    def _rescale_embeddings(self, params: Any, std: jax.Array) -> Any:
        """Token (and learned position) embeddings drawn at the init's own std, rescaled to ``std`` where it
        is > 0 (a factor of exactly 1 otherwise, so the default init is untouched)."""
        m = self.group.model
        own = embed_std(m) if m.arch == "transformer" else 1.0  # the MLP's nn.Embedding: N(0, 1)
        factor = jnp.where(std > 0, std / own, 1.0)

        def scale(path: tuple, x: jax.Array) -> jax.Array:
            names = [getattr(k, "key", None) for k in path]
            return x * factor.astype(x.dtype) if names[0] in ("embed", "pos_embed") else x

        return jax.tree_util.tree_map_with_path(scale, params)

    def loss_one(self, params: Any, inputs: jax.Array, labels: jax.Array, weights: jax.Array
                 ) -> tuple[jax.Array, jax.Array]:
        """Weighted mean loss (the group's loss: softmax or StableMax cross-entropy, or MSE against one-hot
        targets) and accuracy on the answer. inputs [B, T] tokens (T = 3 or 4) or [B, 64] features, labels [B]."""
        return LOSSES[self.group.train.loss](self.loss_logits(params, inputs), labels, weights)

    def loss_logits(self, params: Any, inputs: jax.Array) -> jax.Array:
        """The logits in the loss's precision: float64 with loss_dtype=float64 (the loss's gradient then
        flows back in the model's dtype), else float32 or the model's float64."""
        logits = self.forward(params, inputs)
        if self.group.train.loss_dtype == "float64" or logits.dtype == jnp.float64:
            return logits.astype(jnp.float64)
        return logits.astype(jnp.float32)

    def batch_one(self, split: Split, hp: Hparams, step: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Indices [B] and weights [B] of this step's batch: the whole split (full batch); with
        batching=random, B distinct train pairs drawn uniformly from the model's own split (fresh each step);
        with batching=epoch, the step's slice of the epoch's permutation (``_epoch_batch``)."""
        if self.batch_size is None:
            return split.train_idx, split.train_w
        _, _, batch_key = self.data_keys(hp)
        if self.group.train.batching == "epoch":
            return self._epoch_batch(split, hp, step, batch_key)
        # Draw over the whole table size so the stream does not depend on the group's padding.
        # dtype explicit: without it the draw depends on the process-wide 64-bit flag.
        u = jax.random.uniform(jax.random.fold_in(batch_key, step), (self.table.n_pairs,), jnp.float32)
        u = u[: self.n_train_max]
        u = jnp.where(jnp.arange(self.n_train_max) < hp.n_train, u, -1.0)
        _, pos = jax.lax.top_k(u, self.batch_size)
        return split.train_idx[pos], jnp.ones((self.batch_size,), self.dtype)

    def _epoch_batch(self, split: Split, hp: Hparams, step: jax.Array, batch_key: jax.Array
                     ) -> tuple[jax.Array, jax.Array]:
        """batching=epoch: each epoch (ceil(n_train / B) steps) a fresh permutation of the model's train
        pairs, cut into batches in order; the last batch of an epoch holds the n_train mod B left over (its
        other rows weigh 0), as torch.split or a DataLoader without drop_last."""
        size = self.batch_size
        per_epoch = (hp.n_train + size - 1) // size
        epoch, j = step // per_epoch, step % per_epoch
        u = jax.random.uniform(jax.random.fold_in(batch_key, epoch), (self.table.n_pairs,), jnp.float32)
        u = jnp.where(jnp.arange(self.n_train_max) < hp.n_train, u[: self.n_train_max], 2.0)
        order = jnp.argsort(u)  # the real train pairs first, shuffled
        pos = j * size + jnp.arange(size)
        real = pos < hp.n_train
        return split.train_idx[order[jnp.where(real, pos, 0)]], real.astype(self.dtype)

    def train_step_one(self, state: ModelState, split: Split, hp: Hparams, step: jax.Array,
                       inputs: jax.Array, labels: jax.Array) -> tuple[ModelState, dict[str, jax.Array]]:
        """One update. Returns the new state and the step's train metrics (``train_metric_names``)."""
        idx, w = self.batch_one(split, hp, step)

        def loss_fn(params: Any) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
            logits = self.loss_logits(params, inputs[idx])
            loss, acc = LOSSES[self.group.train.loss](logits, labels[idx], w)
            return loss, (acc, logits)

        (loss, (acc, logits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = self.optimizer().update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        # Divergence (DIVERGENCE_LOSS): at this step if the loss is bad, at the next one if only the updated
        # parameters are; either way the parameters stay those of the last good step, and every metric
        # row from the diverged step on is NaN (``is_dead``), so fit's t_diverged is the engine's step.
        healthy = ~is_dead(state.diverged_step, step)
        active = step < self.group.train.steps
        loss_ok = jnp.isfinite(loss) & (loss <= DIVERGENCE_LOSS)
        params_ok = _all_finite(params)
        keep = healthy & active & loss_ok & params_ok
        pick = lambda new, old: jax.tree.map(lambda a, b: jnp.where(keep, a, b), new, old)  # noqa: E731
        newly = healthy & active & ~(loss_ok & params_ok)
        diverged = jnp.where(newly, jnp.where(loss_ok, step + 1, step), state.diverged_step).astype(jnp.int32)
        new_state = state._replace(params=pick(params, state.params), opt_state=pick(opt_state, state.opt_state),
                                   diverged_step=diverged)
        nan = jnp.array(jnp.nan, loss.dtype)
        ok_row = ~is_dead(diverged, step)
        out = {"train_loss": loss, "train_acc": acc}
        if "norms" in self.measures:  # of this step's raw gradient and of the update it applied
            out |= {"grad_norm": tree_norm(grads), "update_norm": tree_norm(updates),
                    "unembed_norm": last_layer_norm(state.params, self.group.model.arch)}
        if "collapse" in self.measures:  # on this step's batch (the training split with full batch)
            out |= collapse_fractions(self.group.train.loss, jax.lax.stop_gradient(logits), labels[idx], w)
        return new_state, {k: jnp.where(ok_row, v, nan).astype(self.dtype) for k, v in out.items()}

    def note_transitions(self, state: ModelState, step: jax.Array, train_acc: jax.Array, val_acc: jax.Array
                         ) -> Transitions:
        """``state.transitions`` after ``step``, whose metrics (NaN where not logged, not evaluated or dead)
        were measured with ``state.params``: those parameters kept where the step is the first to reach
        THRESHOLD."""
        tr = state.transitions
        t = self.group.train
        logged = is_logged_step(step, t.log_every, t.eval_every, t.steps)
        at_train = (tr.train_step < 0) & logged & (train_acc >= THRESHOLD)
        at_val = (tr.val_step < 0) & (val_acc >= THRESHOLD)
        keep = lambda hit, new, old: jax.tree.map(lambda a, b: jnp.where(hit, a, b), new, old)  # noqa: E731
        return Transitions(jnp.where(at_train, step, tr.train_step), jnp.where(at_val, step, tr.val_step),
                           keep(at_train, state.params, tr.train_params), keep(at_val, state.params, tr.val_params))

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
            return (acc[0] + (loss * total).astype(self.dtype), acc[1] + (correct * total).astype(self.dtype)), None

        zero = jnp.zeros((), self.dtype)
        (loss_sum, correct_sum), _ = jax.lax.scan(body, (zero, zero), (idx, w))
        n_val = jnp.maximum(split.val_w.sum(), 1)
        return loss_sum / n_val, correct_sum / n_val, param_norm(params)


    # -- progress measures (engine.measures) -------------------------------------------------------
    @property
    def measures(self) -> tuple[str, ...]:
        return tuple(m for m in self.group.train.measures.split("+") if m in MEASURE_NAMES)

    @property
    def train_metric_names(self) -> tuple[str, ...]:
        return (TRAIN_COLUMNS + (("grad_norm", "update_norm", "unembed_norm") if "norms" in self.measures else ())
                + (("collapse_zero_loss", "collapse_denominator_one") if "collapse" in self.measures else ()))

    @property
    def n_freqs(self) -> int:
        """Frequencies of the Fourier spectrum (constant included), 0 without the fourier measure."""
        return (self.table.n_symbols - 1) // 2 + 1 if "fourier" in self.measures else 0

    def number_embedding(self, params: Any) -> jax.Array:
        """W_E [p, d]: the embedding rows of the p number tokens (for the one-hot MLP, the first layer's
        rows for the first operand)."""
        p = self.table.n_symbols
        if self.group.model.arch == "mlp":
            return params["in_kernel"][:p] if self.group.model.mlp_input == "onehot" else params["embed"][:p]
        return params["embed"]["embedding"][:p]

    def measure_one(self, params: Any, split: Split, inputs: jax.Array, labels: jax.Array
                    ) -> tuple[dict[str, jax.Array], jax.Array]:
        """The evaluation-time measures of one model (columns) and its Fourier spectrum [n_freqs]."""
        out: dict[str, jax.Array] = {}
        spectrum = jnp.zeros((self.n_freqs,), self.dtype)
        if "norms" in self.measures:
            out |= group_norms(params, self.group.model.arch)
        if "logits" in self.measures:
            out |= self._logit_scale(params, split, inputs, labels)
        if "fourier" in self.measures or "excluded" in self.measures:
            columns, norms = fourier_measures(self.number_embedding(params), jnp.asarray(self._basis))
            if "fourier" in self.measures:
                out |= columns
                spectrum = norms
            if "excluded" in self.measures:
                logits = self.model.apply({"params": params}, inputs)  # the whole table: [p*p, p]
                kept, removed = restricted_and_excluded(logits, jnp.asarray(self._directions), key_mask(norms))
                loss = LOSSES[self.group.train.loss]
                idx, w = split.train_idx, split.train_w
                out["restricted_loss"] = loss(kept[idx], labels[idx], w)[0]
                out["excluded_loss"] = loss(removed[idx], labels[idx], w)[0]
        return {k: v.astype(self.dtype) for k, v in out.items()}, spectrum.astype(self.dtype)

    def _logit_scale(self, params: Any, split: Split, inputs: jax.Array, labels: jax.Array
                     ) -> dict[str, jax.Array]:
        """measures=logits: the mean correct-class margin and logit norm over the model's training pairs,
        in chunks of eval_batch_size as the evaluation runs (``measures.logit_scale``)."""
        size = self.eval_batch
        n_chunks = -(-self.n_train_max // size)
        pad = n_chunks * size - self.n_train_max
        idx = jnp.pad(split.train_idx, (0, pad)).reshape(n_chunks, size)
        w = jnp.pad(split.train_w, (0, pad)).reshape(n_chunks, size).astype(self.dtype)

        def body(acc: tuple[jax.Array, jax.Array], chunk: tuple[jax.Array, jax.Array]):
            i, wt = chunk
            margin, norm = logit_scale(self.model.apply({"params": params}, inputs[i]), labels[i], wt)
            return (acc[0] + margin.astype(self.dtype), acc[1] + norm.astype(self.dtype)), None

        zero = jnp.zeros((), self.dtype)
        (margin, norm), _ = jax.lax.scan(body, (zero, zero), (idx, w))
        n = jnp.maximum(split.train_w.sum(), 1)
        return {"logit_margin": margin / n, "logit_norm": norm / n}

    @property
    def _basis(self) -> np.ndarray:
        return fourier_basis(self.table.n_symbols)

    @property
    def _directions(self) -> np.ndarray:
        return sum_directions(self.table.n_symbols, -1 if self.group.task.op == "sub" else 1)


def engine_for(group: GroupConfig, runs: list[Run]) -> Engine:
    table = make_table(group.task)
    n_train = [n_train_of(float(r.get("hp.frac")), table.n_pairs) for r in runs]
    return Engine(group, table, max(n_train), min(n_train))



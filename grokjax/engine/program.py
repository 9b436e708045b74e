"""The one place that vmaps and scans: a compiled batch of models for one group.

``Program`` vmaps ``Engine.train_step_one``/``evaluate_one`` over a batch of models and scans
``chunk_steps`` steps in one compiled call; the host only sees data at chunk boundaries. Evaluation
happens at steps that are multiples of ``eval_every``, at the last step ``steps - 1`` and, after the last
update, at ``steps`` (``config.schedule``).
"""

from __future__ import annotations

import functools
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from grokjax.config.schedule import is_eval_step
from grokjax.engine.data import INTEGER_FIELDS, Hparams, Split, pad_models
from grokjax.engine.single import Engine, ModelState, is_dead


def _masked(values: dict[str, jax.Array], drop: jax.Array) -> dict[str, jax.Array]:
    """``values`` (name -> [N, ...]) with NaN in the rows where ``drop`` [N] is set."""
    return {k: jnp.where(drop.reshape(drop.shape + (1,) * (v.ndim - 1)), jnp.nan, v) for k, v in values.items()}


def _chunk_fn(engine: Engine, chunk_steps: int) -> Callable:
    """The compiled chunk: ``chunk_steps`` scan steps, each model at its own step (``starts`` [N] + i), so
    runs born at different chunks share one program. A model past its budget (its run ended inside the
    chunk, or an empty slot whose start is ``steps``) makes no update and gets NaN rows."""
    steps, eval_every = engine.group.train.steps, engine.group.train.eval_every
    v_step = jax.vmap(engine.train_step_one, in_axes=(0, 0, 0, 0, None, None))
    v_eval = jax.vmap(engine.evaluate_one, in_axes=(0, 0, None, None))
    v_measure = jax.vmap(engine.measure_one, in_axes=(0, 0, None, None))
    v_note = jax.vmap(engine.note_transitions, in_axes=(0, 0, 0, 0))
    tracking = engine.group.train.snapshot_at_transitions

    def evaluate(params: Any, splits: Split, inputs: jax.Array, labels: jax.Array) -> dict[str, jax.Array]:
        val_loss, val_acc, norm = v_eval(params, splits, inputs, labels)
        measured, spectrum = v_measure(params, splits, inputs, labels)
        return dict(val_loss=val_loss, val_acc=val_acc, param_norm=norm, **measured, spectrum=spectrum)

    def train_chunk(states: ModelState, splits: Split, hps: Hparams, starts: jax.Array,
                    inputs: jax.Array, labels: jax.Array) -> tuple[ModelState, dict[str, jax.Array], jax.Array]:
        shapes = jax.eval_shape(evaluate, states.params, splits, inputs, labels)
        skipped = {k: jnp.full(v.shape, jnp.nan, v.dtype) for k, v in shapes.items()}

        def body(states: ModelState, step: jax.Array, valid: jax.Array, any_eval: jax.Array):
            """One row for every model at its ``step`` [N]; ``valid`` [N]: the row is one of its run's;
            ``any_eval`` []: whether any model (on any device) evaluates at this step."""
            do_eval = is_eval_step(step, eval_every, steps) & valid
            # Evaluated when any model evaluates: runs born at chunk boundaries share their evaluation steps
            # whenever eval_every divides chunk_steps, so this costs what one shared schedule costs.
            evaluated = jax.lax.cond(any_eval, lambda: evaluate(states.params, splits, inputs, labels),
                                     lambda: skipped)
            before = states
            states, trained = v_step(states, splits, hps, step, inputs, labels)
            dead = is_dead(states.diverged_step, step)  # after the step: it may have found this row bad
            evaluated = _masked(evaluated, dead | ~do_eval)
            trained = _masked(trained, ~valid)
            if tracking:  # the metrics were measured with the parameters before the update
                states = states._replace(transitions=v_note(before, step, trained["train_acc"],
                                                            evaluated["val_acc"]))
            return states, {k: v.astype(engine.dtype) for k, v in (trained | evaluated).items()}

        def measure_final(states: ModelState, at_end: jax.Array) -> tuple[ModelState, dict[str, jax.Array]]:
            after, row = body(states, jnp.full_like(starts, steps), at_end, jnp.any(at_end))
            if "update_norm" in row:  # the update this step would make: none is made past the budget
                row["update_norm"] = jnp.full_like(row["update_norm"], jnp.nan)
            return states._replace(transitions=after.transitions), row

        # Whether any model evaluates at each of the chunk's steps [chunk_steps], reduced over the model axis
        # once, before the scan: a reduction inside it is a collective per step across devices and processes
        # (the default sweep at 4,000 steps over 2 CPU processes and gloo: 91 s with it, 81 s without).
        offsets = jnp.arange(chunk_steps, dtype=jnp.int32)
        at = starts[None] + offsets[:, None]  # [chunk_steps, N]
        any_eval = jnp.any(is_eval_step(at, eval_every, steps) & (at < steps), axis=1)
        states, metrics = jax.lax.scan(lambda st, x: body(st, starts + x[0], starts + x[0] < steps, x[1]), states,
                                       (offsets, any_eval))
        # A model whose budget ends in this chunk also measures its final parameters (after `steps` updates,
        # the ones kept as final): row `chunk_steps`, at step `steps`, train metrics on that step's batch and
        # an evaluation; nothing is updated (the step is past the budget). Elsewhere the row is NaN.
        at_end = (starts < steps) & (starts + chunk_steps >= steps)
        states, final = jax.lax.cond(jnp.any(at_end), lambda: measure_final(states, at_end), lambda: (
            states, {k: jnp.full(v.shape[1:], jnp.nan, v.dtype) for k, v in metrics.items()}))
        metrics = {k: jnp.concatenate([v, final[k][None]]) for k, v in metrics.items()}
        if tracking:  # [3, N]: diverged step, t_train, t_val_first
            tr = states.transitions
            return states, metrics, jnp.stack([states.diverged_step, tr.train_step, tr.val_step])
        return states, metrics, states.diverged_step + 0

    return train_chunk


def _refill_fn(engine: Engine) -> Callable:
    """Fresh state and split (from each row's hyperparameters) in the rows ``mask`` [N] marks, the given
    ones elsewhere: one fixed-shape program, so a slot takes its next run without a recompilation."""
    v_init = jax.vmap(engine.init_one)

    def refill(states: ModelState, splits: Split, hps: Hparams, mask: jax.Array) -> tuple[ModelState, Split]:
        fresh = v_init(hps)
        pick = lambda new, old: jnp.where(mask.reshape(mask.shape + (1,) * (new.ndim - 1)), new, old)  # noqa: E731
        return jax.tree.map(pick, fresh, (states, splits))

    return refill


@dataclass
class ChunkResult:
    """What the host receives at a chunk boundary. metrics: name -> [K + 1, n_real] (the group's dtype): row i
    at each model's own step start + i (NaN past its budget), row K its final parameters' (NaN unless its
    budget ended in the chunk); diverged_step: [n_real] (-1 healthy); with snapshot_at_transitions,
    transition_steps [2, n_real]: t_train and t_val_first (-1 not yet)."""

    metrics: dict[str, np.ndarray]
    diverged_step: np.ndarray
    transition_steps: np.ndarray | None = None


def _program_bytes(compiled: Any) -> int | None:
    try:
        m = compiled.memory_analysis()
        return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
                   - m.alias_size_in_bytes)
    except Exception:  # memory analysis is not offered by every backend
        return None


_PROGRAMS: dict[tuple, "Program"] = {}
_PROGRAMS_LOCK = threading.Lock()


def _in_precision(method: Callable) -> Callable:
    """Run a Program method with JAX's 64-bit mode set for its group (on for float64, off for float32),
    whatever the process-wide flag: a float32 group then traces, compiles and runs the very program a
    float32-only process would (with 64-bit mode on, default integer and float types change and XLA
    fuses and rounds differently), and a float64 group gets float64 however the process started."""

    @functools.wraps(method)
    def wrapped(self: "Program", *args: Any, **kwargs: Any) -> Any:
        engine = self.engine if hasattr(self, "engine") else args[0]  # __init__(self, engine, n_models)
        with jax.enable_x64(engine.x64), jax.default_matmul_precision(engine.matmul_precision):
            return method(self, *args, **kwargs)

    return wrapped


# XLA's CPU backend (jaxlib 0.10) hands the dots, elementwise ops and reductions of a fusion to YNNPACK by
# default. For these programs' small shapes that is slower than XLA's own emitters: the default sweep's
# step ran 1.3x faster without it, and 3x faster once attention was written as products and sums
# (benchmarks/PROFILE.md). So every program is compiled without YNNPACK fusions on the CPU.
CPU_COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}


@functools.cache
def compiler_options(platform: str) -> dict[str, Any]:
    """XLA options for compiling the programs on ``platform``: CPU_COMPILER_OPTIONS on the CPU when this
    XLA knows them (another jaxlib may not: then its defaults), none elsewhere."""
    if platform != "cpu":
        return {}
    try:
        jax.jit(lambda x: x + 1).lower(1.0).compile(compiler_options=CPU_COMPILER_OPTIONS)  # on the CPU backend
    except Exception:  # an XLA without the option rejects it (INVALID_ARGUMENT)
        return {}
    return dict(CPU_COMPILER_OPTIONS)


# The init and refill programs run once per batch and per refilled slot, so their run time is nothing and
# their compilation is all they cost: LLVM's optimisation level 1 instead of the default 2 compiles them
# 2-3x faster (about 1-2.5 s less per program on the 2-core development CPU) and gives the same bits
# (tests/test_train.py checks it on every machine; level 0 does not: it contracts no FMAs). The training
# chunk keeps level 2: level 1 trains slower and rounds differently.
ONCE_CPU_COMPILER_OPTIONS = {"xla_backend_optimization_level": 1}


@functools.cache
def once_compiler_options(platform: str) -> dict[str, Any]:
    """XLA options for the programs run once (init, refill): ``compiler_options`` plus, on the CPU,
    ONCE_CPU_COMPILER_OPTIONS."""
    return compiler_options(platform) | (ONCE_CPU_COMPILER_OPTIONS if platform == "cpu" else {})


def sweep_devices() -> list[jax.Device]:
    """Every device of every process (jax.distributed), ordered by process: process p then holds one
    contiguous block of each program's model axis."""
    return sorted(jax.devices(), key=lambda d: (d.process_index, d.id))


def _to_devices(host: Any, sharding: NamedSharding) -> Any:
    """Put a host pytree (every process holds all of it) onto the devices with ``sharding``. Over several
    processes each one supplies only the pieces its own devices hold."""
    if jax.process_count() == 1:
        return jax.device_put(host, sharding)
    return jax.tree.map(lambda x: jax.make_array_from_callback(np.shape(x), sharding,
                                                               lambda index: np.asarray(x)[index]), host)


def _to_host(tree: Any, replicated: NamedSharding) -> Any:
    """A device pytree on the host, whole in every process. Over several processes it is gathered by one
    program that replicates every leaf (``replicated``: the program's mesh, no axis), compiled once per tree
    shape: ``multihost_utils.process_allgather`` runs a program and a collective per leaf (in
    tests/test_multihost.py's design sweep 1,397 collectives and 11 more compilations; now 46 and none)."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    return jax.tree.map(lambda a: np.asarray(a.addressable_data(0)), _gatherer(replicated)(tree))


@functools.cache
def _gatherer(replicated: NamedSharding) -> Callable:
    return jax.jit(lambda tree: tree, out_shardings=replicated)


class Program:
    """A compiled batch of ``n_models`` models for one group: init and train_chunk, model axis sharded
    over all devices of all processes (padded to a multiple of the device count)."""

    @_in_precision
    def __init__(self, engine: Engine, n_models: int):
        t0 = time.perf_counter()
        self.engine = engine
        self.devices = sweep_devices()
        n_dev = len(self.devices)
        self.n_models = -(-n_models // n_dev) * n_dev
        self.chunk_steps = min(engine.group.train.chunk_steps, engine.group.train.steps)
        mesh = Mesh(np.array(self.devices), ("models",))
        self.sharded = NamedSharding(mesh, PartitionSpec("models"))
        self.replicated = NamedSharding(mesh, PartitionSpec())
        inputs = engine.table.inputs
        self.inputs = _to_devices(inputs.astype(engine.dtype) if engine.table.features else inputs, self.replicated)
        self.labels = _to_devices(engine.table.labels, self.replicated)
        owned = self.sharded.addressable_devices_indices_map((self.n_models,)).values()
        self.own_rows = np.zeros(self.n_models, bool)  # the model rows this process's devices hold
        for (rows,) in owned:
            self.own_rows[rows] = True
        hp_shape = self._abstract_hparams()
        self.compiler_options = compiler_options(self.devices[0].platform)
        self.once_options = once_compiler_options(self.devices[0].platform)
        self._init = jax.jit(jax.vmap(engine.init_one), out_shardings=self.sharded).lower(hp_shape).compile(
            compiler_options=self.once_options)
        state_shape, split_shape = jax.eval_shape(jax.vmap(engine.init_one), hp_shape)
        shard = lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=self.sharded)  # noqa: E731
        self.abstract = (jax.tree.map(shard, state_shape), jax.tree.map(shard, split_shape), hp_shape)
        self._chunks: dict[int, Any] = {}
        self._refill: Any = None
        self.steps_computed = 0  # scan steps dispatched by train_chunk, over the program's lifetime
        self.bytes = _program_bytes(self._compiled(self.chunk_steps))
        tail = engine.group.train.steps % self.chunk_steps
        if tail:  # compiled now, with the rest, so the training rate never includes a compilation
            self._compiled(tail)
        self.compile_s = time.perf_counter() - t0  # what a program of this group costs to build

    def _compiled(self, n_steps: int) -> Any:
        """The compiled chunk of ``n_steps`` steps: ``chunk_steps`` for all but the last chunk of a budget
        that ``chunk_steps`` does not divide, which gets a program of its own length (compiled on first
        use) so that no step past the budget is computed."""
        if n_steps not in self._chunks:
            state, split, hps = self.abstract
            by_model = NamedSharding(self.sharded.mesh, PartitionSpec(None, "models"))
            marks = by_model if self.engine.group.train.snapshot_at_transitions else self.sharded  # [3, N] or [N]
            self._chunks[n_steps] = jax.jit(_chunk_fn(self.engine, n_steps), donate_argnums=(0,),
                                            out_shardings=(self.sharded, by_model, marks)).lower(
                state, split, hps, jax.ShapeDtypeStruct((self.n_models,), jnp.int32, sharding=self.sharded),
                self.inputs, self.labels).compile(
                compiler_options=self.compiler_options)
        return self._chunks[n_steps]

    def _abstract_hparams(self) -> Hparams:
        dt = self.engine.dtype
        n = self.n_models
        f = lambda d: jax.ShapeDtypeStruct((n,), d, sharding=self.sharded)  # noqa: E731
        return Hparams(**{k: f(jnp.int32 if k in INTEGER_FIELDS else dt) for k in Hparams._fields})

    @classmethod
    def _key(cls, engine: Engine, n_models: int) -> tuple:
        return (engine, n_models, len(jax.devices()))

    @classmethod
    def cached(cls, engine: Engine, n_models: int) -> bool:
        """Whether ``get`` would return an already compiled program."""
        with _PROGRAMS_LOCK:
            return cls._key(engine, n_models) in _PROGRAMS

    @classmethod
    def get(cls, engine: Engine, n_models: int) -> "Program":
        """Compiled programs are cached, so a new numeric grid of the same shape never recompiles."""
        key = cls._key(engine, n_models)
        with _PROGRAMS_LOCK:
            if key in _PROGRAMS:
                return _PROGRAMS[key]
        program = cls(engine, n_models)
        with _PROGRAMS_LOCK:
            return _PROGRAMS.setdefault(key, program)

    @_in_precision
    def put(self, hps: Hparams) -> Hparams:
        host = pad_models(hps, self.n_models)
        dt = np.dtype(self.engine.dtype)
        host = Hparams(*(x.astype(dt) if x.dtype.kind == "f" else x for x in host))
        return _to_devices(host, self.sharded)

    @_in_precision
    def init(self, hps: Hparams) -> tuple[ModelState, Split]:
        return self._init(hps)

    @_in_precision
    def train_chunk(self, state: ModelState, splits: Split, hps: Hparams, starts: Any,
                    n_steps: int | None = None) -> tuple[ModelState, dict[str, jax.Array], jax.Array]:
        """One compiled chunk of ``n_steps`` (default ``chunk_steps``) steps (state is donated), each model
        from its own step ``starts`` ([n_models], or one step for all): the new state, metrics name ->
        [n_steps + 1, n_models] (``ChunkResult``), and each model's diverged step (-1 healthy) [n_models],
        or with snapshot_at_transitions [3, n_models]: that, t_train, t_val_first."""
        n_steps = n_steps or self.chunk_steps
        self.steps_computed += n_steps
        if isinstance(starts, jax.Array):  # already on the devices: broadcast there, no host round trip
            starts = jax.device_put(jnp.broadcast_to(starts.astype(jnp.int32), (self.n_models,)), self.sharded)
        else:
            starts = _to_devices(np.broadcast_to(np.asarray(starts, np.int32), (self.n_models,)).copy(), self.sharded)
        return self._compiled(n_steps)(state, splits, hps, starts, self.inputs, self.labels)

    @_in_precision
    def refill(self, state: ModelState, splits: Split, hps: Hparams, mask: np.ndarray) -> tuple[ModelState, Split]:
        """State and split with the rows ``mask`` [n_models] bool started afresh from ``hps`` (state and splits
        donated; ``_refill_fn``)."""
        return self._refilled()(state, splits, hps, _to_devices(np.asarray(mask, bool), self.sharded))

    def _refilled(self) -> Any:
        """The compiled refill (``_refill_fn``), compiled on first use (``prepare_refill``)."""
        if self._refill is None:
            state, split, hps = self.abstract
            mask = jax.ShapeDtypeStruct((self.n_models,), jnp.bool_, sharding=self.sharded)
            self._refill = jax.jit(_refill_fn(self.engine), donate_argnums=(0, 1),
                                   out_shardings=self.sharded).lower(state, split, hps, mask).compile(
                compiler_options=self.once_options)
        return self._refill

    @_in_precision
    def prepare_refill(self) -> None:
        """Compile the refill now (with the program, so training never waits for a compilation)."""
        self._refilled()

    @_in_precision
    def fetch(self, metrics: dict[str, jax.Array], dead: jax.Array, n_real: int) -> ChunkResult:
        """A dispatched chunk's results on the host (waits for it), cut to the first ``n_real`` models."""
        host, marks = _to_host((metrics, dead), self.replicated)
        marks = np.asarray(marks)[..., :n_real]
        dead, transitions = (marks[0], marks[1:]) if marks.ndim == 2 else (marks, None)
        return ChunkResult({name: np.asarray(v)[:, :n_real] for name, v in host.items()}, dead, transitions)

    @_in_precision
    def host(self, state: ModelState) -> ModelState:
        """A host copy of a (not yet donated) state."""
        return _to_host(state, self.replicated)

    @_in_precision
    def restore(self, host_state: ModelState) -> ModelState:
        """Put a host copy of a state (from a checkpoint) back on the devices, sharded like init's."""
        return _to_devices(host_state, self.sharded)


def param_names(engine: Engine) -> list[str]:
    """The dotted paths of one model's parameters (``block_0.query.kernel``), in the order of the first
    leaves of its state (``jax.tree.leaves(state)`` starts with the parameters)."""
    with jax.enable_x64(engine.x64):
        hps = Hparams(**{k: jax.ShapeDtypeStruct((), jnp.int32 if k in INTEGER_FIELDS else engine.dtype)
                         for k in Hparams._fields})
        params = jax.eval_shape(engine.init_one, hps)[0].params
    paths = jax.tree_util.tree_flatten_with_path(params)[0]
    return [".".join(str(getattr(k, "key", k)) for k in path) for path, _ in paths]


def optimizer_names(engine: Engine) -> list[str]:
    """Names of one model's optimizer-state leaves (``jax.tree_util.keystr`` of each path, such as
    ``.hyperparams['wd']`` or ``.inner_state[0].mu['embed']['embedding']``), in the order of the state's
    leaves that follow the parameters."""
    with jax.enable_x64(engine.x64):
        hps = Hparams(**{k: jax.ShapeDtypeStruct((), jnp.int32 if k in INTEGER_FIELDS else engine.dtype)
                         for k in Hparams._fields})
        opt_state = jax.eval_shape(engine.init_one, hps)[0].opt_state
    return [jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_flatten_with_path(opt_state)[0]]


def state_shapes(engine: Engine) -> list[jax.ShapeDtypeStruct]:
    """Shapes and dtypes of one model's state leaves (to check a checkpoint against), without compiling."""
    with jax.enable_x64(engine.x64):
        hps = Hparams(**{k: jax.ShapeDtypeStruct((), jnp.int32 if k in INTEGER_FIELDS else engine.dtype)
                         for k in Hparams._fields})
        return jax.tree.leaves(jax.eval_shape(engine.init_one, hps)[0])


def train_flops_per_chunk(prog: Program) -> float | None:
    """FLOPs of the training steps in one chunk (evaluation excluded), from XLA's cost analysis of one
    vmapped step times the chunk length: XLA counts a scan's body once, not once per iteration."""
    state, split, hps = prog.abstract
    with jax.enable_x64(prog.engine.x64):
        return _train_flops(prog, state, split, hps)


def _train_flops(prog: Program, state: Any, split: Any, hps: Any) -> float | None:
    step = jax.jit(jax.vmap(prog.engine.train_step_one, in_axes=(0, 0, 0, None, None, None)))
    try:
        cost = step.lower(state, split, hps, jax.ShapeDtypeStruct((), jnp.int32), prog.inputs,
                          prog.labels).compile().cost_analysis()
    except Exception:  # cost analysis is not offered by every backend
        return None
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost["flops"]) * prog.chunk_steps if cost and "flops" in cost else None

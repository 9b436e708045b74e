"""What a sweep will cost, before anything is compiled: ``grokjax sweep --dry-run`` (no JAX imported).

The memory figure is an estimate from the shapes (parameters, optimizer state, and the activations of one
training step); the real program's size is measured when it compiles (``engine.memory``).
"""

from __future__ import annotations

from grokjax.config.fields import SHORT_NAMES
from grokjax.config.structure import GroupConfig
from grokjax.grid.design import design_runs, design_slots
from grokjax.grid.expand import Sweep, batch_size_of, n_train_of
from grokjax.tasks.tables import n_pairs_of

METRIC_ROW_BYTES = 16  # a generous size of one compressed metric row on disk


def n_symbols_of(group: GroupConfig) -> int:
    return 10 if group.task.dataset == "digits" else 120 if group.task.op == "s5" else group.task.p


def n_params(group: GroupConfig) -> int:
    """Parameters of one model of the group (the models' own definitions, counted from the shapes)."""
    m, p = group.model, n_symbols_of(group)
    if m.arch == "mlp":
        digits = group.task.dataset == "digits"
        p = p if digits or group.task.tokens == 3 else p + 2  # 4 tokens: the p + 2 classes of the vocabulary
        embed = 0 if m.mlp_input == "onehot" or digits else p * m.d_model
        d_in = 64 if digits else 2 * p if m.mlp_input == "onehot" else 2 * m.d_model
        weights = d_in * m.d_mlp + (m.n_layers - 1) * m.d_mlp * m.d_mlp + m.d_mlp * p
        biases = m.n_layers * m.d_mlp + p if m.bias else 0
        return embed + weights + biases
    d, tokens = m.d_model, group.task.tokens
    vocab = p + tokens - 2
    classes = p if tokens == 3 else vocab
    norms = {"prenorm": 2 if m.layer_norm else 0, "postnorm": 2, "ln_residual": 2}[m.block]
    final_norm = m.block == "ln_residual" or (m.block == "prenorm" and m.layer_norm)
    attention_biases = 4 * d if m.init == "torch" and m.bias else 0
    layer = (4 * d * d + attention_biases + 2 * d * m.d_mlp + (m.d_mlp + d if m.bias else 0) + norms * 2 * d)
    positions = tokens * d if m.pos == "learned" else 0
    return vocab * d + positions + m.n_layers * layer + d * classes + (2 * d if final_norm else 0)


def step_bytes(group: GroupConfig, max_frac: float) -> int:
    """Estimated device bytes of one model in the group's program (its largest train split at ``max_frac``):
    parameters, gradients and two Adam moments, plus the activations of one step (every position's
    residual, attention and MLP activations)."""
    m, t = group.model, group.train
    itemsize = 8 if t.dtype == "float64" else 4
    n_pairs = n_pairs_of(group.task.op, group.task.p, group.task.nonzero_y, group.task.dataset)
    n_train = n_train_of(max_frac, n_pairs)
    batch = batch_size_of(t, n_train) or n_train
    width = (m.d_model * 8 + m.d_mlp * 2) * 3 if m.arch == "transformer" else m.d_mlp * 3
    activations = batch * width * m.n_layers + batch * n_symbols_of(group) * 2
    copies = 4 + (2 if t.snapshot_at_transitions else 0)  # + the parameters kept at t_train and t_val_first
    return itemsize * (copies * n_params(group) + activations)


def run_disk_bytes(group: GroupConfig) -> int:
    """A generous estimate of the disk one run of the group needs: a metric row per logged step, and its
    kept parameters (final, every ``snapshot_every`` steps, at t_train and t_val_first)."""
    t = group.train
    kept = 1 + (t.steps // t.snapshot_every if t.snapshot_every else 0) + 2 * t.snapshot_at_transitions
    itemsize = 8 if t.dtype == "float64" else 4
    return METRIC_ROW_BYTES * -(-t.steps // t.log_every) + kept * itemsize * n_params(group)


def disk_bytes(sweep: Sweep) -> int:
    """A generous estimate of the disk a sweep's metrics and kept parameters need (``run_disk_bytes``)."""
    return sum(n * run_disk_bytes(g) for g, n, _ in sweep.group_sizes())


def describe_plan(sweep: Sweep) -> str:
    """The grid in a few lines: runs, groups, the keys that vary, model-steps, the programs and their slots,
    memory and disk. Counts per
    group, never the runs themselves: a dry run of the largest grid allowed stays instant."""
    groups = [(g, _trained(g, n), f) for g, n, f in sweep.group_sizes()]
    axes = ", ".join(f"{SHORT_NAMES[a]} ({len(sweep.values[a])})" for a in sweep.axes) or "none"
    if sweep.arms:
        axes += f"; {len(sweep.arms)} arms setting " + ", ".join(SHORT_NAMES[k] for k in sweep.swept[len(sweep.axes):])
    model_steps = sum(g.train.steps * n for g, n, _ in groups)
    disk = sum(n * run_disk_bytes(g) for g, n, _ in groups)
    programs = f"{len(groups)} program{'s' if len(groups) > 1 else ''} to compile, one per group"
    design = sweep.values["train.design"][0]
    runs = (f"{sweep.n_runs():,} candidate runs (design={design} trains {groups[0][1]:,})"
            if design != "grid" else f"{sweep.n_runs():,} runs")
    lines = [f"{sweep.name}: {runs} in {len(groups)} compiled group(s); swept: {axes}",
             f"{model_steps:,} model-steps; metrics on disk about {_mib(disk)}; {programs}"]
    for i, (g, n, max_frac) in enumerate(groups):
        per_model = step_bytes(g, max_frac)
        task = ("digits" if g.task.dataset == "digits" else "s5" if g.task.op == "s5"
                else f"{g.task.op} mod {g.task.p}")
        wanted = g.train.models_per_batch or (design_slots(n) if g.train.design != "grid" else 0)
        slots = (f"{min(wanted, n):,} slots (models_per_batch={wanted})" if g.train.models_per_batch else
                 f"up to {min(wanted, n):,} slots (a quarter of the design's runs, as many as fit in memory)"
                 if wanted else f"up to {n:,} slots (as many as fit in memory, chosen when it compiles)")
        queue = (f"the design choosing {n:,} of its {sweep.n_runs():,} candidate runs for them"
                 if g.train.design != "grid" else "the runs queued for them")
        lines.append(f"group {i + 1}: {n:,} runs, {task}, {g.model.arch} ({n_params(g):,} parameters), "
                     f"{g.train.steps:,} steps; {slots}, {queue}; about {_mib(per_model)} per "
                     f"slot, {_mib(per_model * (min(wanted, n) if wanted else n))} for all slots")
    return "\n".join(lines)


def _trained(group: GroupConfig, n: int) -> int:
    """The runs of a group of ``n`` that train: all, or a design's share."""
    return design_runs(group.train.runs, n) if group.train.design != "grid" else n


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"

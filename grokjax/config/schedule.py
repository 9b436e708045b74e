"""The schedule of a sweep, owned here and imported everywhere else: which steps are evaluated and
logged, how a budget is cut into chunks, the accuracy threshold that makes a run memorized or grokked, and
the metric columns every run has.

Step convention: the row for step s holds the metrics of the parameters after s updates. A run evaluates
at the multiples of ``eval_every``, at its last step ``steps - 1`` and at ``steps``, the row of its final
parameters (after the last update: the ones ``Results.params`` opens by default); it logs train metrics at
the multiples of ``log_every`` and at every evaluation step.
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np

THRESHOLD = 0.99  # accuracy that counts as memorized (train) or grokked (validation): fit's default too

TRAIN_COLUMNS = ("train_loss", "train_acc")  # every logged step
EVAL_COLUMNS = ("val_loss", "val_acc", "param_norm")  # evaluation steps only (null elsewhere)
METRIC_COLUMNS = TRAIN_COLUMNS + EVAL_COLUMNS


def is_eval_step(step: Any, eval_every: int, steps: int) -> Any:
    """Whether ``step`` (an int, a NumPy or a JAX array) is an evaluation step."""
    return (step % eval_every == 0) | (step == steps - 1) | (step == steps)


def is_eval_steps(start: int, k: int, eval_every: int, steps: int) -> np.ndarray:
    """[k] bool: which of the steps start..start+k-1 are evaluation steps."""
    return is_eval_step(np.arange(start, start + k), eval_every, steps)


def is_logged_step(step: Any, log_every: int, eval_every: int, steps: int) -> Any:
    """Whether ``step`` (an int, a NumPy or a JAX array) gets a metrics row."""
    return (step % log_every == 0) | is_eval_step(step, eval_every, steps)


def is_logged_steps(start: int, k: int, log_every: int, eval_every: int, steps: int) -> np.ndarray:
    """[k] bool: which of the steps start..start+k-1 get a metrics row."""
    return is_logged_step(np.arange(start, start + k), log_every, eval_every, steps)


def chunk_rows(starts: np.ndarray, n: int, steps: int) -> np.ndarray:
    """[n + 1, N] int64: the run's own step of each metrics row of a chunk of ``n`` steps whose models start
    at their own steps ``starts`` [N] (``steps`` for an empty slot), -1 where the row is none of its run's:
    rows 0..n-1 at starts + i up to the budget, row n the final parameters' (step ``steps``) where the
    budget ends in the chunk."""
    starts = np.asarray(starts, np.int64)
    rows = starts[None, :] + np.arange(n)[:, None]
    at_end = (starts < steps) & (starts + n >= steps)
    return np.concatenate([np.where(rows < steps, rows, -1), np.where(at_end, steps, -1)[None]])


def evals_between(start: int, steps: int, eval_every: int) -> int:
    """How many evaluation steps lie in [start, steps]: the multiples of eval_every, steps - 1 and steps."""
    if start > steps:
        return 0
    if start == steps:
        return 1
    multiples = (steps - 1) // eval_every - (start - 1) // eval_every  # multiples of eval_every in [start, steps)
    return multiples + (0 if (steps - 1) % eval_every == 0 else 1) + 1


def chunk_end(start: int, chunk_steps: int, steps: int) -> int:
    """The end (exclusive) of the chunk that starts at ``start``: ``chunk_steps`` later, cut at the budget."""
    return min(start + chunk_steps, steps)


def chunks(start: int, chunk_steps: int, steps: int) -> Iterator[tuple[int, int]]:
    """(start, end) of each chunk from ``start`` to the budget."""
    while start < steps:
        end = chunk_end(start, chunk_steps, steps)
        yield start, end
        start = end


def crosses(end: int, every: int, k: int) -> bool:
    """Whether the chunk of ``k`` steps that ends at ``end`` crosses a multiple of ``every`` (a checkpoint)."""
    return end // every != (end - k) // every

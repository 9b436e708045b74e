"""Algorithmic tasks of Power et al. 2022 (appendix A.1.1): binary operations mod p and S5 composition.

Each task is a full table of pairs. A pair (a, b) is the token sequence ``a b =`` (``tokens=3``) or
``a op b =`` (``tokens=4``, as openai/grok and Grokfast's code) and the target is the answer token; loss
and accuracy are taken on the answer only. Symbols are tokens 0..n_symbols-1, ``=`` is token n_symbols and
``op`` token n_symbols + 1. With 4 tokens the model predicts over the whole vocabulary (n_symbols + 2
classes), as those codes' output layer does. ``nonzero_y`` leaves out the pairs with b = 0 (Grokfast's
x·y mod 97 table: 97 × 96 = 9,312 pairs).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from grokjax.config.choices import OPS, check_registry
from grokjax.config.structure import TaskConfig

_POLY = {
    "add": lambda x, y, p: (x + y) % p,
    "sub": lambda x, y, p: (x - y) % p,
    "mul": lambda x, y, p: (x * y) % p,
    "x2_y2": lambda x, y, p: (x * x + y * y) % p,
    "x2_xy_y2": lambda x, y, p: (x * x + x * y + y * y) % p,
    "x2_xy_y2_x": lambda x, y, p: (x * x + x * y + y * y + x) % p,
    "x3_xy": lambda x, y, p: (x * x * x + x * y) % p,
    "x3_xy2_y": lambda x, y, p: (x * x * x + x * y * y + y) % p,
}
check_registry("task", [*list(_POLY)[:3], "div", *list(_POLY)[3:], "s5"], OPS)  # div and s5 are special cases


@dataclass(frozen=True, eq=False)  # hashed by identity: make_table caches one table per task
class TaskTable:
    """All pairs of a task. inputs: [n_pairs, T] int32 (a, b, '=' or a, op, b, '='); labels: [n_pairs]
    int32 in [0, n_symbols)."""

    inputs: np.ndarray
    labels: np.ndarray
    n_symbols: int

    @property
    def features(self) -> bool:
        """Whether the inputs are real-valued features (dataset=digits) rather than tokens."""
        return self.inputs.dtype.kind == "f"

    @property
    def seq_len(self) -> int:
        return int(self.inputs.shape[1])

    @property
    def vocab_size(self) -> int:
        return self.n_symbols + self.seq_len - 2  # the symbols, '=' and (4 tokens) 'op'

    @property
    def n_classes(self) -> int:
        """Outputs of the model: the symbols (or digit classes), or (4 tokens) the whole vocabulary."""
        return self.n_symbols if self.features or self.seq_len == 3 else self.vocab_size

    @property
    def n_pairs(self) -> int:
        return int(self.labels.shape[0])


DIGITS_SAMPLES = 1797  # scikit-learn's load_digits


def n_pairs_of(op: str, p: int, nonzero_y: bool = False, dataset: str = "algorithmic") -> int:
    """Samples in the task's table (pairs of the algorithmic table, or digit images)."""
    if dataset == "digits":
        return DIGITS_SAMPLES
    if op == "s5":
        return 120 * (119 if nonzero_y else 120)
    if op == "div" or nonzero_y:
        return p * (p - 1)
    return p * p


@lru_cache(maxsize=16)
def _permutations() -> tuple[tuple[int, ...], ...]:
    return tuple(itertools.permutations(range(5)))


@lru_cache(maxsize=32)
def make_table(task: TaskConfig) -> TaskTable:
    """The full, deterministic table of pairs for a task (same order every time)."""
    if task.dataset == "digits":
        from sklearn.datasets import load_digits  # bundled with scikit-learn: nothing is downloaded

        digits = load_digits()
        inputs = (np.asarray(digits.data, np.float64) / 16.0).astype(np.float32)  # pixels 0..16 -> [0, 1]
        return TaskTable(inputs, np.asarray(digits.target, np.int32), 10)
    if task.op == "s5":
        perms = _permutations()
        index = {q: i for i, q in enumerate(perms)}
        a, b = np.meshgrid(np.arange(120), np.arange(120), indexing="ij")
        a, b = a.ravel(), b.ravel()
        # (a o b)(i) = a(b(i)): apply b first, then a.
        labels = np.array([index[tuple(perms[x][perms[y][i]] for i in range(5))] for x, y in zip(a, b)])
        n_symbols = 120
    else:
        p = task.p
        x, y = np.meshgrid(np.arange(p), np.arange(p), indexing="ij")
        x, y = x.ravel().astype(np.int64), y.ravel().astype(np.int64)
        if task.op == "div":
            keep = y != 0
            x, y = x[keep], y[keep]
            labels = (x * np.array([pow(int(v), p - 2, p) for v in y])) % p  # Fermat inverse, p prime
        else:
            labels = _POLY[task.op](x, y, p)
        a, b, n_symbols = x, y, p
    keep = b != 0 if task.nonzero_y else np.ones(len(b), bool)
    a, b, labels = a[keep], b[keep], np.asarray(labels)[keep]
    eq = np.full_like(a, n_symbols)
    columns = [a, b, eq] if task.tokens == 3 else [a, np.full_like(a, n_symbols + 1), b, eq]
    inputs = np.stack(columns, axis=1).astype(np.int32)
    return TaskTable(inputs, np.asarray(labels, dtype=np.int32), n_symbols)

"""design=boundary: which queued candidate a freed slot trains next.

The candidates are a grid's runs; ``x`` [R] is each one's value of the swept number whose boundary is
mapped. The first ``n_initial`` picks spread over the range (the sorted distinct values of x, evenly, a
space-filling start); every later pick is the value of x where one more run leaves the posterior of x* with
the least expected entropy (QUEST+'s rule, ``boundary.expected_entropy``), at the lowest run_id not yet run
there: a value where outcomes disagree is picked again, so its seeds are added. Runs still training count
as soft outcomes at their predicted probability while the next picks are scored (and each pick of one call
joins them), so slots freed together spread over several values instead of piling onto one. Deterministic:
the same outcomes in the same order give the same picks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from grokjax.design.boundary import Estimate, Grid, estimate, expected_entropy, log_posterior

PENDING, NOT_GROKKED, GROKKED = -1, 0, 1


@dataclass(frozen=True)
class Pick:
    """One chosen candidate: its index, the expected entropy that chose it (NaN in the space-filling
    start) and the estimate of x* from the outcomes known when it was chosen (None before any)."""

    index: int
    acquisition: float
    estimate: Estimate | None


@dataclass
class BoundaryDesign:
    """Chooses up to ``budget`` of the candidates at values ``x`` [R] (> 0), ``n_initial`` of them
    space-filling."""

    x: np.ndarray
    budget: int
    n_initial: int

    def __post_init__(self) -> None:
        self.x = np.asarray(self.x, np.float64)
        self.levels, self.level_of = np.unique(self.x, return_inverse=True)
        self.grid = Grid.spanning(self.x)

    def pick(self, k: int, order: np.ndarray, outcome: np.ndarray) -> list[Pick]:
        """The next ``k`` candidates (fewer once ``budget`` or the candidates run out), given those run so
        far (``order``, candidate indices in launch order) and ``outcome`` [R] (PENDING, NOT_GROKKED or
        GROKKED for the runs of ``order``)."""
        taken = np.zeros(len(self.x), bool)
        taken[order] = True
        k = min(k, self.budget - len(order), int((~taken).sum()))
        picks: list[Pick] = []
        done = order[outcome[order] != PENDING]
        known = estimate(self.x[done], outcome[done], self.x) if len(done) else None
        for _ in range(k):
            if int(taken.sum()) < self.n_initial:
                level, score = self._spread(taken), float("nan")
            else:
                level, score = self._best(order, outcome, picks, taken)
            index = int(np.flatnonzero(~taken & (self.level_of == level))[0])
            taken[index] = True
            picks.append(Pick(index, score, known))
        return picks

    def _spread(self, taken: np.ndarray) -> int:
        """The space-filling start: the i-th of n_initial picks at the i-th of n_initial evenly spaced
        levels (by rank), or the nearest level with a candidate left."""
        i = int(taken.sum())
        target = round(i * (len(self.levels) - 1) / max(self.n_initial - 1, 1))
        open_levels = np.unique(self.level_of[~taken])
        return int(open_levels[np.argmin(np.abs(open_levels - target))])

    def _best(self, order: np.ndarray, outcome: np.ndarray, picks: list[Pick], taken: np.ndarray) -> tuple[int, float]:
        """The open level of least expected entropy, runs still training counted at their predictive
        probability (the outcomes known so far decide it)."""
        done = order[outcome[order] != PENDING]
        pending = np.concatenate([order[outcome[order] == PENDING], [p.index for p in picks]]).astype(np.int64)
        log_post = log_posterior(self.grid, self.x[done], outcome[done])
        if len(pending):
            soft = (np.exp(log_post)[:, :, None] * self.grid.p_grok(self.x[pending])).sum(axis=(0, 1))
            log_post = log_posterior(self.grid, np.concatenate([self.x[done], self.x[pending]]),
                                     np.concatenate([outcome[done], soft]))
        open_levels = np.unique(self.level_of[~taken])
        scores = expected_entropy(self.grid, log_post, self.levels[open_levels])
        j = int(np.argmin(scores))
        return int(open_levels[j]), float(scores[j])

"""The phase boundary x* of one swept number x (wd, lr, frac, ...): where P(grokked within the budget | x)
is one half, with a credible interval, and the expected information of one more run at x.

The model is a logistic in log10 x, P(x) = sigmoid(s * (log10 x - log10 x*)), increasing in x (more weight
decay, data or learning rate makes grokking within the budget likelier: the memorization -> grokking edge of
Liu et al. 2022). Its two parameters get a posterior on a fixed grid (log10 x* uniform over the candidates'
range widened by a tenth each side, the slope s log-uniform from 0.25 to 64 per decade), as QUEST+ (Watson
2017) does for psychometric functions. Written by hand, not with a library: the rule that picks runs
(minimum expected entropy of x*, QUEST+'s) needs the posterior of x* itself, which neither scikit-learn's
GaussianProcessClassifier (no parameter x*) nor a maximum-likelihood logistic (its slope runs off to
infinity on separable outcomes, common with a few dozen runs) gives; the grid posterior is exact, needs no
optimizer and is deterministic, so every process and every resume makes the same choices.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

SLOPES = np.geomspace(0.25, 64.0, 33)  # per decade of x
N_CENTRES = 241
LEVEL = 0.95  # the central credible interval of x*


@dataclass(frozen=True)
class Grid:
    """The parameter grid: ``centres`` [C] values of log10 x*, ``slopes`` [S] per decade."""

    centres: np.ndarray
    slopes: np.ndarray = field(default_factory=lambda: SLOPES)

    @classmethod
    def spanning(cls, x: np.ndarray) -> "Grid":
        """The grid over the range of the candidates ``x`` (> 0), widened by a tenth each side."""
        u = np.log10(np.asarray(x, np.float64))
        lo, hi = float(u.min()), float(u.max())
        pad = 0.1 * (hi - lo) if hi > lo else 0.5
        return cls(np.linspace(lo - pad, hi + pad, N_CENTRES))

    def p_grok(self, x: np.ndarray) -> np.ndarray:
        """P(grokked | x, parameters) [C, S, len(x)]."""
        u = np.log10(np.asarray(x, np.float64))
        z = self.slopes[None, :, None] * (u[None, None, :] - self.centres[:, None, None])
        return 1.0 / (1.0 + np.exp(-z))


def log_posterior(grid: Grid, x: np.ndarray, grokked: np.ndarray) -> np.ndarray:
    """Normalised log posterior [C, S] of the runs at ``x`` [n] with outcomes ``grokked`` [n] (1: grokked
    within the budget, 0: not; fractions count as soft outcomes), under the flat grid prior."""
    y = np.asarray(grokked, np.float64)
    u = np.log10(np.asarray(x, np.float64))
    z = grid.slopes[None, :, None] * (u[None, None, :] - grid.centres[:, None, None])
    log_lik = -(y * np.logaddexp(0.0, -z) + (1 - y) * np.logaddexp(0.0, z)).sum(axis=-1)
    return log_lik - _logsumexp(log_lik)


def _logsumexp(a: np.ndarray, axis: tuple[int, ...] | int | None = None) -> np.ndarray:
    m = np.max(a, axis=axis, keepdims=True)
    out = m + np.log(np.sum(np.exp(a - m), axis=axis, keepdims=True))
    return out if axis is not None else out.reshape(())


@dataclass(frozen=True)
class Estimate:
    """x* (the posterior median) and its central ``LEVEL`` credible interval [low, high], from ``n`` runs
    of which ``n_grokked`` grokked. ``edge``: the interval reaches the end of the candidates' range, so
    the boundary may lie outside it."""

    x_star: float
    low: float
    high: float
    n: int
    n_grokked: int
    edge: bool

    def __str__(self) -> str:
        return f"{self.x_star:.3g} [{self.low:.3g}, {self.high:.3g}]"


def estimate(x: np.ndarray, grokked: np.ndarray, candidates: np.ndarray | None = None) -> Estimate:
    """The boundary from the runs at ``x`` [n] with outcomes ``grokked`` [n] (0/1); the grid spans
    ``candidates`` (default ``x``)."""
    x, g = np.asarray(x, np.float64), np.asarray(grokked, np.float64)
    grid = Grid.spanning(x if candidates is None else candidates)
    marginal = np.exp(_logsumexp(log_posterior(grid, x, g), axis=1)[:, 0])
    cdf = np.cumsum(marginal) / marginal.sum()
    tail = (1 - LEVEL) / 2
    lo, mid, hi = (float(np.interp(q, cdf, grid.centres)) for q in (tail, 0.5, 1 - tail))
    u = np.log10(x if candidates is None else np.asarray(candidates, np.float64))
    edge = lo < u.min() or hi > u.max()
    return Estimate(10 ** mid, 10 ** lo, 10 ** hi, len(g), int(g.sum()), bool(edge))


def marginal_entropy(log_post: np.ndarray) -> float:
    """Entropy (nats) of the posterior of x* (the centres), from a joint log posterior [C, S]."""
    p = np.exp(_logsumexp(log_post, axis=1)[:, 0])
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def expected_entropy(grid: Grid, log_post: np.ndarray, x: np.ndarray) -> np.ndarray:
    """For each candidate value ``x`` [m]: the entropy of x*'s posterior expected after one more run there,
    averaged over its two outcomes by their predictive probabilities (QUEST+'s rule: run where it is
    lowest). [m] nats."""
    post = np.exp(log_post)[:, :, None]
    p1 = grid.p_grok(x)  # [C, S, m]
    out = np.zeros(p1.shape[-1])
    for lik in (p1, 1 - p1):
        joint = post * lik
        q = joint.sum(axis=(0, 1))  # the predictive probability of this outcome, [m]
        marg = joint.sum(axis=1) / np.maximum(q, 1e-300)  # [C, m]
        out += q * -(marg * np.log(np.maximum(marg, 1e-300))).sum(axis=0)
    return out

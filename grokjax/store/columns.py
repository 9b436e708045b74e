"""The data dictionary: every column of every table in a results directory, with meaning, unit and when
it is null. Written into each Parquet file as field metadata (``description``, ``unit``, ``null``) and
printed in docs/results.md (a test keeps the two in step)."""

from __future__ import annotations

import re
from dataclasses import dataclass

import pyarrow as pa

from grokjax.config.fields import MEANINGS


@dataclass(frozen=True)
class Column:
    meaning: str
    unit: str = ""
    null: str = "never"


STEP = "steps"
_EVAL_ONLY = "absent without that measure; null between evaluations; NaN from divergence on"
_RUN_KEYS = {key: Column(meaning) for key, meaning in MEANINGS.items()}

RUNS: dict[str, Column] = {
    "run_id": Column("the run's number in the sweep, 0-based, stable across resumes"),
    "group": Column("the compiled group the run trained in (structural settings), 0-based"),
} | _RUN_KEYS

METRICS: dict[str, Column] = {
    "run_id": RUNS["run_id"],
    "step": Column("number of updates the parameters have had when the row was measured (0: the "
                   "initialisation)", STEP),
    "train_loss": Column("loss (softmax or StableMax cross-entropy, or loss=mse's mean squared error against "
                         "one-hot targets) of the batch this step trains on, before its update; the row of "
                         "step `steps` measures the final parameters, on the batch a next step would take",
                         "nats (mse: squared units)",
                         "NaN from the run's divergence on"),
    "train_acc": Column("argmax accuracy on that batch", "fraction", "NaN from the run's divergence on"),
    "val_loss": Column("mean loss on the whole validation split", "nats",
                       "null between evaluations; NaN from divergence on"),
    "val_acc": Column("accuracy on the whole validation split", "fraction",
                      "null between evaluations; NaN from divergence on"),
    "param_norm": Column("global L2 norm of all parameters", "",
                         "null between evaluations; NaN from divergence on"),
    "grad_norm": Column("measures=norms: L2 norm of this step's raw gradient (before any filter or "
                        "optimizer)", "", "absent without norms; NaN from divergence on"),
    "update_norm": Column("measures=norms: L2 norm of the update this step applied (lr, weight decay "
                          "and filters included)", "", "absent without norms; NaN from divergence on"),
    "unembed_norm": Column("measures=norms: Frobenius norm of the last layer's weights (the unembedding; "
                           "the MLP's readout kernel) before this step's update, at every logged step: the "
                           "norm of Thilak et al. 2022's slingshots", "", "absent without norms; NaN from "
                           "divergence on"),
    "norm_embed": Column("measures=norms: L2 norm of the token and position embeddings (transformer) or "
                         "the MLP's input embeddings (mlp_input=embed)", "", _EVAL_ONLY),
    "norm_attn": Column("measures=norms: L2 norm of all attention weights (query, key, value, out; "
                        "their LayerNorms)", "", _EVAL_ONLY),
    "norm_mlp": Column("measures=norms: L2 norm of all transformer MLP weights (and their LayerNorms)", "",
                       _EVAL_ONLY),
    "norm_unembed": Column("measures=norms: L2 norm of the unembedding (and the final LayerNorm)", "",
                           _EVAL_ONLY),
    "norm_layer_<i>": Column("measures=norms, arch=mlp: L2 norm of hidden layer i's weights and biases "
                             "(layer_0: the input layer)", "", _EVAL_ONLY),
    "norm_readout": Column("measures=norms, arch=mlp: L2 norm of the readout layer", "", _EVAL_ONLY),
    "logit_margin": Column("measures=logits: mean over the training pairs of the correct-class margin "
                           "z_y - max_{j != y} z_j (the logit scale whose growth drives softmax collapse, "
                           "Prieto et al. 2025)", "logit units", _EVAL_ONLY),
    "logit_norm": Column("measures=logits: mean over the training pairs of the logit vector's L2 norm", "",
                         _EVAL_ONLY),
    "fourier_gini": Column("measures=fourier: Gini coefficient of the number embeddings' per-frequency "
                           "norms over Z_p (constant left out; 1 = one frequency)", "", _EVAL_ONLY),
    "n_key_freqs": Column("measures=fourier: how many frequencies, largest first, hold 90% of the "
                          "embeddings' non-constant Fourier energy", "", _EVAL_ONLY),
    "collapse_zero_loss": Column("measures=collapse: fraction of this step's batch (the training split with "
                                 "full batch) whose loss is exactly 0 in the loss's precision (Prieto et al. "
                                 "2025's softmax collapse)", "fraction",
                                 "absent without that measure; NaN from divergence on"),
    "collapse_denominator_one": Column("measures=collapse, loss=softmax: fraction of this step's batch whose "
                                       "softmax denominator sum_k exp(z_k - max z) is exactly 1 in the loss's "
                                       "precision (NaN for other losses)", "fraction",
                                       "absent without that measure; NaN from divergence on"),
    "restricted_loss": Column("measures=excluded: train loss of the logits kept to the key frequencies' "
                              "cos/sin(w(a±b)) components plus the table mean (Nanda et al. 2023)", "nats",
                              _EVAL_ONLY),
    "excluded_loss": Column("measures=excluded: train loss of the logits with those components removed",
                            "nats", _EVAL_ONLY),
}

SPECTRA: dict[str, Column] = {
    "run_id": RUNS["run_id"],
    "step": Column("evaluation step", STEP),
    "freq": Column("frequency k of Z_p (0: the constant component)"),
    "norm": Column("norm of the number embeddings' component at frequency k: sqrt(|cos_k W_E|^2 + "
                   "|sin_k W_E|^2)", "", "NaN from the run's divergence on"),
}

STOPS: dict[str, Column] = {
    "run_id": RUNS["run_id"],
    "stop_step": Column("stop=resolved: the step at which the run left the program (its last metric row is "
                        "stop_step - 1)", STEP),
    "reason": Column("grokked (validation accuracy >= 0.99 at patience evaluations in a row, after train "
                     "accuracy reached 0.99) or diverged"),
}

DESIGN: dict[str, Column] = {
    "run_id": RUNS["run_id"],
    "design_round": Column("design=boundary|law: the refill that chose the run (0: the space-filling start)"),
    "design_rule": Column("the rule that chose the run: start (space-filling), boundary (least expected entropy "
                          "of x*), anchor (design=law: the ends and middle of the range where runs grok, until "
                          "3 cells are full) or law (design=law: the largest fall of the exponent's variance "
                          "per run)", "", "missing: not chosen"),
    "acquisition": Column("the score that chose the run: rule boundary, the expected entropy of x*'s posterior "
                          "after this run (the lowest open then), nats; rule law, the expected fall per run of "
                          "Var(alpha) in units of sigma^2 (the runs' scatter of ln t_val about the law; the "
                          "largest open then)", "", "NaN: rules start and anchor"),
    "x_star_then": Column("design=boundary|law: the boundary estimate x* from the outcomes known when the run "
                          "was chosen", "", "NaN: no outcome known yet"),
    "x_star_low_then": Column("the lower end of that estimate's 95% credible interval", "", "NaN: as x_star_then"),
    "x_star_high_then": Column("the upper end of that estimate's 95% credible interval", "",
                               "NaN: as x_star_then"),
}

_AT = (("t_train", "t_train", "never memorized"), ("t_val", "t_val", "no t_val"),
       ("end", "the last evaluation", "no evaluation"))
FITS: dict[str, Column] = {
    "run_id": RUNS["run_id"],
    "t_train": Column("first logged step with train accuracy >= threshold", STEP, "NaN: never reached"),
    "t_val": Column("first evaluation with validation accuracy >= threshold that the run keeps (the kept "
                    "rule, --keep and --slack) and that at least --confirm evaluations follow", STEP,
                    "NaN: censored (never within the budget, or unconfirmed)"),
    "delay": Column("t_val - t_train, the grokking delay", STEP, "NaN: t_val or t_train missing"),
    "censored": Column("true when t_val was not reached within the budget"),
    "unconfirmed": Column("true when the run reached a kept t_val too late for --confirm evaluations to follow "
                          "it: it is censored"),
    "phase": Column("comprehension, grokking, memorization, confusion or diverged (Liu et al. 2022)"),
    "budget": Column("last observed step + 1: the censoring time", STEP),
    "t_val_first": Column("first evaluation with validation accuracy >= threshold (Power et al.'s first "
                          "reach)", STEP, "NaN: never reached"),
    "t_val_interp": Column("t_val with the crossing linearly interpolated from the previous evaluation",
                           STEP, "NaN: censored"),
    "t_diverged": Column("first step whose train loss is non-finite or above 1e8 (or parameters "
                         "non-finite)", STEP, "NaN: never diverged"),
    "mid_step": Column("midpoint of a logistic fitted to validation accuracy against log10 step", STEP,
                       "NaN: the curve rises by less than 0.5 or the fit failed"),
    "width_decades": Column("width of that logistic", "decades of steps", "NaN: as mid_step"),
    "final_train_acc": Column("last finite train accuracy", "fraction", "NaN: none finite"),
    "final_val_acc": Column("last finite validation accuracy", "fraction", "NaN: none finite"),
    "max_val_acc": Column("best validation accuracy of the run", "fraction", "NaN: none finite"),
    "stop_step": Column("stop=resolved: the step the run stopped at, resolved (see the stops table)", STEP,
                        "NaN: trained to its budget"),
    "t_val_loss_min": Column("epoch-wise double descent (Nakkiran et al. 2021; Davies et al. 2023): the first "
                             "local minimum after t_train of the val loss, log10, smoothed by a running median "
                             "of 5 evaluations, of prominence >= 0.1 decades (grokjax.analysis.beyond)", STEP,
                             "NaN: never memorized, or no such minimum"),
    "t_val_loss_peak": Column("the first prominent maximum of the smoothed val loss after t_val_loss_min", STEP,
                              "NaN: no minimum, or no peak after it"),
    "val_loss_peak_height": Column("the peak's height above that minimum, log10 of the smoothed losses",
                                   "decades", "NaN: no peak"),
    "t_second_descent": Column("the first evaluation after the peak whose smoothed val loss is below the "
                               "minimum's: the second descent", STEP, "NaN: no peak, or it never falls back"),
    "n_val_loss_peaks": Column("prominent maxima of the smoothed val loss after t_train", "", "never"),
    "n_slingshots": Column("slingshots (Thilak et al. 2022) after t_train: train-loss spikes (>= 1 decade above "
                           "the previous 50 steps' minimum) at which the last layer's norm turns (its ln slope "
                           "changes by >= 0.02 per 50 steps; grokjax.analysis.beyond)", "",
                           "NaN: without measures=norms"),
    "slingshot_steps": Column("the slingshots' steps, comma-separated", STEP, "empty: none, or without norms"),
    "slingshot_period": Column("median spacing between consecutive slingshots: the cycle period", STEP,
                               "NaN: fewer than two"),
} | {f"gap_{at}": Column(f"generalization gap val_loss - train_loss at the first evaluation at or after "
                         f"{what}", "nats", f"NaN: {null}") for at, what, null in _AT} \
  | {f"norm2_per_n_{at}": Column(f"param_norm^2 / n_train (the training pairs) at the first evaluation at or "
                                 f"after {what}: the norm-gap relation's x", "", f"NaN: {null}")
     for at, what, null in _AT} \
  | {k: v for k, v in RUNS.items() if k != "run_id"} | {k: v for k, v in DESIGN.items() if k != "run_id"}

CELLS: dict[str, Column] = {
    "n_seeds": Column("runs in the cell (every swept value fixed except the seed)"),
    "n_double_descent": Column("runs of the cell whose val loss shows a double descent: a prominent minimum "
                               "after t_train, a peak, then a fall below that minimum (fits' t_second_descent)"),
    "frac_grokked": Column("fraction of the cell's runs in the grokking or comprehension phase", "fraction"),
    "median_t_val": Column("Kaplan-Meier median of t_val, censored runs censored at their budget, diverged "
                           "runs left out", STEP, "inf: more than half never grok"),
    "ci_low": Column("bootstrap 2.5% quantile of median_t_val (seeds resampled)", STEP,
                     "NaN: fewer than 3 seeds"),
    "ci_high": Column("bootstrap 97.5% quantile of median_t_val", STEP, "inf: unbounded; NaN: fewer than 3 seeds"),
    "median_delay": Column("Kaplan-Meier median of the delay t_val - t_train over runs that memorized",
                           STEP, "NaN: no run memorized; inf: more than half never grok"),
    "delay_ci_low": Column("bootstrap 2.5% quantile of median_delay", STEP, "NaN: fewer than 3 seeds"),
    "delay_ci_high": Column("bootstrap 97.5% quantile of median_delay", STEP,
                            "inf: unbounded; NaN: fewer than 3 seeds"),
    "median_t_train": Column("median t_train of the cell's runs", STEP, "NaN: none memorized"),
    "max_val_acc": Column("best validation accuracy of any run of the cell", "fraction", "NaN: none finite"),
    "final_val_acc": Column("median over the cell's runs of the last validation accuracy", "fraction",
                            "NaN: none finite"),
    "phase": Column("the cell's majority phase"),
} | {f"n_{p}": Column(f"runs of the cell in the {p} phase") for p in
     ("comprehension", "grokking", "memorization", "confusion", "diverged")}

LAWS: dict[str, Column] = {
    "target": Column("what the law is about: t_val (kept rule), delay or t_val_first; boundary: the phase "
                     "boundary x* (its own columns)"),
    "x_name": Column("wd, or lr*wd when lr is swept too; target=boundary: the swept number"),
    "alpha": Column("exponent of t ~ x^alpha, least squares in log-log over cells", "",
                    "NaN: too few grokked cells (see n_cells)"),
    "alpha_low": Column("bootstrap 2.5% quantile of alpha", "", "NaN: not fitted, or a cell has fewer than 3 seeds"),
    "alpha_high": Column("bootstrap 97.5% quantile of alpha", "", "NaN: as alpha_low"),
    "c": Column("intercept of log t = c + alpha log x", "", "NaN: not fitted"),
    "n_cells": Column("distinct x values whose cells mostly grok with a finite median: the points of the fit",
                      "", "NaN: target=boundary"),
    "n_grid_cells": Column("cells of the grid behind those points (two cells may share lr*wd)", "",
                           "NaN: target=boundary"),
    "min_seeds": Column("fewest seeds in a cell behind the points (an interval needs 3)", "", "NaN: target=boundary"),
    "left_out": Column("the x values not fitted and why (x = 0, majority phase, censored median), "
                       "comma-separated", "", "null: target=boundary"),
    "x_min": Column("smallest x fitted", "", "NaN: no cell"),
    "x_max": Column("largest x fitted", "", "NaN: no cell"),
    "x_star": Column("target=boundary: x where P(grokked within the budget) = 1/2, the posterior median of a "
                     "logistic in log x over the runs' outcomes (grokjax.design.boundary)", "",
                     "NaN: other targets"),
    "x_star_low": Column("target=boundary: lower end of x*'s 95% credible interval", "", "NaN: other targets"),
    "x_star_high": Column("target=boundary: upper end of x*'s 95% credible interval", "", "NaN: other targets"),
    "n_runs": Column("target=boundary: the runs behind the estimate (diverged runs left out)", "",
                     "NaN: other targets"),
    "n_grokked": Column("target=boundary: how many of them grokked within the budget", "", "NaN: other targets"),
    "by": Column("target=boundary with two swept numbers: the other one, held at the value in the column of "
                 "its name (e.g. x_name=frac, by=wd, wd=0.3: the critical training fraction frac* at wd 0.3)", "",
                 "null: one swept number, or other targets"),
    "fitted": Column("false when fewer than MIN_LAW_CELLS (3) cells qualified"),
    "threshold": Column("fit option --threshold", "fraction"),
    "slack": Column("fit option --slack", "fraction"),
    "keep": Column("fit option --keep", "fraction"),
    "gap": Column("fit option --gap", STEP),
    "confirm": Column("fit option --confirm", "evaluations"),
}

TABLES: dict[str, dict[str, Column]] = {"runs": RUNS, "metrics": METRICS, "spectra": SPECTRA, "stops": STOPS,
                                        "design": DESIGN, "fits": FITS,
                                        "cells": CELLS, "laws": LAWS}


def column_of(kind: str, name: str) -> Column | None:
    """The dictionary entry of a column (``norm_layer_3`` finds ``norm_layer_<i>``)."""
    columns = TABLES[kind]
    if name in columns:
        return columns[name]
    generic = re.sub(r"_\d+$", "_<i>", name)
    return columns.get(generic)


def describe(table: pa.Table, kind: str) -> pa.Table:
    """``table`` with each known column's meaning, unit and null rule as Parquet field metadata."""
    fields = []
    for f in table.schema:
        col = column_of(kind, f.name)
        if col is not None:
            f = f.with_metadata({"description": col.meaning, "unit": col.unit, "null": col.null})
        fields.append(f)
    return table.cast(pa.schema(fields, metadata=table.schema.metadata))


def column_rank(name: str) -> tuple[int, str]:
    """Sort key of a metrics column: the data dictionary's order (norm_layer_3 at norm_layer_<i>)."""
    order = list(METRICS)
    generic = re.sub(r"_\d+$", "_<i>", name)
    return (order.index(generic) if generic in order else len(order), name)

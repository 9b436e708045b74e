"""Read a results directory back as pandas DataFrames (also while its sweep is still writing)."""

from __future__ import annotations

import json
import numbers
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa

from grokjax.config.schedule import METRIC_COLUMNS
from grokjax.errors import UserError
from grokjax.store.files import read_json, read_parquet
from grokjax.store.layout import (
    FIT_OPTIONS_KEY,
    FITS_PARQUET,
    METRICS_DIR,
    RUNS_PARQUET,
    SHARDS_DIR,
    DESIGN_DIR,
    SPECTRA_DIR,
    STOPS_DIR,
    SWEEP_JSON,
    parts,
)


@dataclass
class Results:
    """A results directory read back: ``runs`` (one row per model), ``metrics`` (long table) and, with
    ``measures=fourier``, ``spectra`` (run_id, step, freq, norm; empty otherwise); with ``stop=resolved``,
    ``stops`` (run_id, stop_step, reason: the runs that left the program before their budget); with
    design=boundary, ``runs`` also says why each run was chosen (``design_round``: -1 for a candidate the
    design did not run, ``acquisition``, ``x_star_then`` ...; see the data dictionary)."""

    path: Path
    sweep: dict[str, Any]
    runs: pd.DataFrame
    metrics: pd.DataFrame
    spectra: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["run_id", "step", "freq", "norm"]))
    stops: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(
        {"run_id": pd.Series(dtype="int64"), "stop_step": pd.Series(dtype="int64"), "reason": pd.Series(dtype=str)}))
    _params_index: Any = field(default=None, repr=False, compare=False)  # store.params.params_index, when read

    @property
    def complete(self) -> bool:
        """Every run trained to its end (for a sharded sweep: every shard has finished)."""
        return bool(self.sweep.get("complete"))

    @property
    def shards(self) -> tuple[list[int], int] | None:
        """For a sweep run with ``--shard I/N``: (the finished shards' indices, N); None otherwise."""
        n = self.sweep.get("shards")
        return None if not n else (self.sweep.get("complete_shards", []), int(n))

    @property
    def axes(self) -> list[str]:
        """The swept keys, as the runs table names its columns (``wd``, ``seed``, ``p``...)."""
        return [a.rsplit(".", 1)[-1] for a in self.sweep["spec"]["axes"]]

    @property
    def arm_keys(self) -> list[str]:
        """The keys the sweep's arms set (``--arm``, ``[[arms]]``), as runs-table columns; [] without arms."""
        arms = self.sweep["spec"].get("arms") or []
        return list(dict.fromkeys(k.rsplit(".", 1)[-1] for arm in arms for k in arm))

    def params(self, run_id: int, step: int | None = None) -> dict[str, Any]:
        """A run's parameters as nested dicts of NumPy arrays (``{"block_0": {"query": {"kernel": ...}}}``):
        the last kept ones by default (its final parameters: at its budget, or at its stop under
        stop=resolved), or those at ``step``, one of the ``snapshot_every`` steps the sweep kept."""
        return self._params(run_id, step)[1]

    def _params(self, run_id: Any, step: Any) -> tuple[int, dict[str, Any]]:
        from grokjax.store.params import read_params

        ids = self.runs["run_id"].tolist()
        if not _whole(run_id) or int(run_id) not in ids:
            raise UserError(f"run_id={run_id!r}: not a run of {self.path}; accepted: 0 to {max(ids)}")
        if step is not None and not _whole(step):
            raise UserError(f"step={step!r}: expected a whole number of steps, or None for the last kept")
        run_id, step = int(run_id), None if step is None else int(step)
        try:
            try:
                at, tree, _ = read_params(self._index(), run_id, step)
            except (KeyError, LookupError, FileNotFoundError):  # the sweep wrote or resumed since: read again
                at, tree, _ = read_params(self._index(fresh=True), run_id, step)
        except KeyError:
            raise UserError(f"run {run_id} of {self.path} has no kept parameters (a sweep written before "
                            f"grokjax kept them, or stopped before its first chunk ended)") from None
        except LookupError:
            kept = read_params(self._index(), run_id, None)[2]
            raise UserError(f"step={step}: run {run_id}'s parameters were not kept then; kept steps: "
                            f"{', '.join(map(str, kept))} (snapshot_every=K keeps more)") from None
        return at, tree

    def optimizer_state(self, run_id: int, step: int | None = None) -> dict[str, Any]:
        """A run's optimizer state kept with its parameters (``snapshot_optimizer=true``), at its last kept
        step or ``step``: each leaf by the ``jax.tree_util.keystr`` of its path (``.inner_state[0].mu['embed']
        ['embedding']``); {} where the sweep kept none."""
        from grokjax.store.params import read_optimizer

        at, _ = self._params(run_id, step)
        return read_optimizer(self._index(), int(run_id), at)

    def model(self, run_id: int, step: int | None = None) -> Any:
        """A run's network at its last kept (or a kept ``step``'s) parameters, as a function of NumPy
        operands: ``f(a, b)`` -> logits [N, classes] for operand arrays a, b [N] of an algorithmic task
        (the inputs built as the run was trained: ``a b =`` or ``a op b =``), ``f(x)`` for digits images
        x [N, 64]."""
        _, tree = self._params(run_id, step)
        row = self.runs.set_index("run_id").loc[run_id]
        from grokjax.run.opened import network

        return network(row.to_dict(), tree)

    def _index(self, fresh: bool = False) -> Any:
        from grokjax.store.params import params_index

        if fresh or self._params_index is None:
            self._params_index = params_index(self.path)
        return self._params_index

    def kept_steps(self, run_id: int) -> list[int]:
        """The steps at which ``run_id``'s parameters were kept (``params(run_id, step)`` opens each)."""
        from grokjax.store.params import read_params

        self._params(run_id, None)  # checks the run id, and that something was kept
        return read_params(self._index(), run_id, None)[2]

    def hooked_transformer(self, run_id: int, step: int | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
        """A transformer run (at its last kept or a kept ``step``) in TransformerLens's layout:
        (``HookedTransformerConfig`` keyword arguments, state dict of NumPy arrays). UserError naming the
        option HookedTransformer has no equivalent for (arch=mlp, block=postnorm|ln_residual,
        act=quadratic). ``grokjax export DIR --to transformerlens OUT`` writes these to files."""
        _, tree = self._params(run_id, step)
        from grokjax.run.opened import hooked

        try:
            return hooked(self.runs.set_index("run_id").loc[run_id].to_dict(), tree)
        except UserError as e:
            raise UserError(f"run {run_id}: {e}") from None

    def frame(self, columns: str | list[str] | None = None) -> pd.DataFrame:
        """The metrics joined with each run's hyperparameters: one row per (run, logged step), columns
        ``run_id step`` + metric columns + runs-table columns: by default the swept keys (``wd seed ...``),
        ``columns="all"`` every one (``p op d_model ...``), or the ones named. The joined columns are
        categoricals (a key takes few values): for the default sweep the frame takes 1.1x the metrics'
        memory, 2.2x with ``columns="all"`` (every key as a plain column took 11.6x)."""
        if isinstance(columns, str) and columns != "all":
            columns = [columns]  # frame("wd"): one column, not the letters of its name
        if columns is None:
            columns = [a for a in self.axes if a in self.runs.columns]
        elif columns == "all":
            columns = [c for c in self.runs.columns if c != "run_id"]
        unknown = [c for c in columns if c not in self.runs.columns]
        if unknown:
            raise UserError(f"frame(columns=...): {unknown[0]!r} is not a column of runs.parquet; accepted: "
                            f"'all' or names among {', '.join(c for c in self.runs.columns if c != 'run_id')}")
        runs = self.runs[["run_id", *[c for c in columns if c != "run_id"]]]
        runs = runs.astype({c: "category" for c in runs.columns if c != "run_id"})
        return self.metrics.merge(runs, on="run_id", how="left", validate="many_to_one")


def _whole(x: Any) -> bool:
    """A whole number: an int or a NumPy integer (``np.int64(0)``), not a bool."""
    return isinstance(x, numbers.Integral) and not isinstance(x, (bool, np.bool_))


def _read_parts(parts: list[Path], sweep_path: Path) -> Iterator[pa.Table]:
    fix = f"rerun the sweep with --out {sweep_path} --resume to recompute it (or delete the file)"
    for part in parts:
        if not part.exists():  # removed by a resume between listing and reading
            continue
        yield read_parquet(part, fix)


def load(path: str | os.PathLike) -> Results:
    """Read a results directory (also while its sweep is still writing)."""
    if not isinstance(path, (str, os.PathLike)):
        raise UserError(f"load({path!r}): expected the path of a results directory (a str or a Path)")
    path = Path(path)
    if not (path / SWEEP_JSON).is_file():
        raise UserError(f"{path}: not a grokjax results directory (no {SWEEP_JSON}); "
                        f"give the --out directory of a sweep")
    sweep = read_json(path / SWEEP_JSON)
    if sweep.get("shards"):
        marks = (re.fullmatch(r"shard(\d+)of(\d+)-complete\.json", m.name) for m in (path / SHARDS_DIR).glob("*"))
        done = sorted(int(m.group(1)) for m in marks if m and int(m.group(2)) == int(sweep["shards"]))
        sweep["complete_shards"] = done
        sweep["complete"] = len(set(done) & set(range(int(sweep["shards"])))) == int(sweep["shards"])
    runs = read_parquet(path / RUNS_PARQUET, "the runs table cannot be recovered from the metrics; rerun the "
                        "sweep into a new --out (its sweep.json holds the command)").to_pandas()
    tables = list(_read_parts(parts(path, METRICS_DIR), path))
    if tables:
        metrics = pa.concat_tables(tables, promote_options="permissive").to_pandas()
        metrics = metrics.sort_values(["run_id", "step"], kind="stable").reset_index(drop=True)
    else:
        metrics = pd.DataFrame({"run_id": pd.Series(dtype="int64"), "step": pd.Series(dtype="int64")}
                               | {c: pd.Series(dtype="float32") for c in METRIC_COLUMNS})
    spectra_tables = list(_read_parts(parts(path, SPECTRA_DIR), path))
    results = Results(path, sweep, runs, metrics)
    if spectra_tables:
        spectra = pa.concat_tables(spectra_tables, promote_options="permissive").to_pandas()
        results.spectra = spectra.sort_values(["run_id", "step", "freq"], kind="stable").reset_index(drop=True)
    stops_tables = list(_read_parts(parts(path, STOPS_DIR), path))
    if stops_tables:
        results.stops = pa.concat_tables(stops_tables).to_pandas().sort_values("run_id").reset_index(drop=True)
    design_tables = list(_read_parts(parts(path, DESIGN_DIR), path))
    if design_tables:  # design=boundary|law: why each chosen run was chosen (-1: a candidate not chosen)
        chosen = pa.concat_tables(design_tables, promote_options="permissive").to_pandas().drop_duplicates("run_id")
        results.runs = runs.merge(chosen, on="run_id", how="left")
        results.runs["design_round"] = results.runs["design_round"].fillna(-1).astype("int64")
    return results





def saved_fits(path: str | os.PathLike) -> tuple[pd.DataFrame | None, str]:
    """The fits ``grokjax fit`` wrote into DIR/fits.parquet with the options it used (in ``attrs``), or
    (None, why not): absent, damaged, or older than the newest metrics part."""
    path = Path(path)
    target = path / FITS_PARQUET
    if not target.is_file():
        return None, f"no {FITS_PARQUET} yet"
    found = parts(path, METRICS_DIR)
    if found and max(p.stat().st_mtime for p in found) > target.stat().st_mtime:
        return None, f"{target} is older than the metrics"
    try:
        table = read_parquet(target, "")
    except UserError:
        return None, f"{target} is damaged"
    options = json.loads((table.schema.metadata or {}).get(FIT_OPTIONS_KEY, b"{}"))
    fits = table.to_pandas()
    fits.attrs.update(options)
    return fits, f"{target} ({', '.join(f'{k} {v:g}' for k, v in options.items())})"

"""Names in a results directory (contract, see docs/results.md)."""

from __future__ import annotations

import re
from pathlib import Path

SWEEP_JSON = "sweep.json"
RUNS_PARQUET = "runs.parquet"
METRICS_DIR = "metrics"
SPECTRA_DIR = "spectra"  # measures=fourier: the per-frequency embedding norms, long table
STOPS_DIR = "stops"  # stop=resolved: when and why each run left the program before its budget
DESIGN_DIR = "design"  # design=boundary|law: which runs each refill chose, and why
SPECTRUM = "spectrum"  # the metrics key of the [steps, models, freqs] spectra a chunk returns
CHECKPOINT_DIR = "checkpoints"
PARAMS_DIR = "params"  # parameters by run and step (store.params)
FITS_PARQUET = "fits.parquet"
CELLS_PARQUET = "cells.parquet"
LAWS_PARQUET = "laws.parquet"
FIT_OPTIONS_KEY = b"grokjax.fit_options"  # Parquet schema metadata: the options fits were computed with
LOCK = ".lock"
# Part names: [shard or process prefix]g<group>-b<batch>-s<first step>.parquet (shards: see
# grid.shard.Shard.prefix; processes of a jax.distributed sweep: store.directory.process_prefix)
PART_NAME = re.compile(r"(?:shard\d+of\d+-|proc\d+of\d+-)?g(?P<group>\d+)-b(?P<batch>\d+)-s(?P<start>\d+)\.parquet")
SHARDS_DIR = "shards"  # --shard: one marker file per completed shard


PART_DIRS = (METRICS_DIR, SPECTRA_DIR, STOPS_DIR, DESIGN_DIR)  # each chunk's parts, one per kind, named alike


def parts(path: Path, kind: str = METRICS_DIR) -> list[Path]:
    """The complete part files of one kind (a folder of ``PART_DIRS``); temporary files are hidden and
    never match."""
    return sorted(p for p in (Path(path) / kind).glob("*.parquet") if PART_NAME.fullmatch(p.name))

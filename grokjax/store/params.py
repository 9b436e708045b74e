"""Parameters kept by run and step: ``DIR/params/[prefix]g<group>-b<batch>-s<clock>.npz``.

Each file holds, for the runs ``run_ids`` [L] of one group's program after the chunk that ends at <clock>
on the program's clock, every parameter as an [L, ...] array named by its path in the model
(``param:block_0.query.kernel``), each row at its run's own step (``steps`` [L]; files of older versions
hold one ``step``). A run's parameters are written at every multiple of ``snapshot_every`` (if set), at its
stop (stop=resolved, ``...-stop.npz``) and at its budget's end, so every run's final parameters are kept.
With ``snapshot_at_transitions``, ``...-at.npz`` holds those at the t_train and t_val_first reached in the
chunk.
NumPy archives, written whole and renamed into place (atomic).
"""

from __future__ import annotations

import contextlib
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from grokjax.errors import UserError
from grokjax.store.files import atomic_file
from grokjax.store.layout import PARAMS_DIR

PARAMS_NAME = re.compile(r"(?P<prefix>(?:shard\d+of\d+-)?)g(?P<group>\d+)-b(?P<batch>\d+)-s(?P<step>\d+)(?:-at|-stop)?\.npz")
_KEY = "param:"
_OPT = "opt:"  # snapshot_optimizer: the optimizer state's leaves, by jax.tree_util.keystr of their paths


class ParamsStore:
    """Saves and clears one writer's parameter files. Needs ``path``, ``prefix`` and ``_guard``."""

    path: Path
    prefix: str

    def _guard(self, write: Any) -> None:  # pragma: no cover - ResultsDir's
        raise NotImplementedError

    def save_params(self, group: int, batch: int, at: int, run_ids: np.ndarray, names: list[str],
                    leaves: list[np.ndarray], steps: np.ndarray, kind: str = "",
                    optimizer: dict[str, np.ndarray] | None = None) -> None:
        """The parameters (``names`` and their [L, ...] ``leaves``) of the runs ``run_ids`` [L], each at its own
        ``steps`` [L], into the file named by the program's clock ``at``; ``kind``: "" (final and
        ``snapshot_every`` parameters), "stop" (a stop's, stop=resolved) or "at" (snapshots at transitions).
        ``optimizer``: their optimizer states' leaves by name, [L, ...] each (snapshot_optimizer)."""
        if not len(run_ids):
            return
        suffix = {"": "", "stop": "-stop", "at": "-at"}[kind]
        path = self.path / PARAMS_DIR / f"{self.prefix}g{group:03d}-b{batch:03d}-s{at:09d}{suffix}.npz"
        arrays = {_KEY + n: np.ascontiguousarray(np.asarray(x)[: len(run_ids)]) for n, x in zip(names, leaves)}
        arrays |= {_OPT + n: np.ascontiguousarray(np.asarray(x)[: len(run_ids)]) for n, x in (optimizer or {}).items()}
        when = np.broadcast_to(np.asarray(steps, np.int64), (len(run_ids),))

        def write() -> None:
            path.parent.mkdir(exist_ok=True)
            with atomic_file(path) as tmp, open(tmp, "wb") as f:
                np.savez(f, run_ids=np.asarray(run_ids, np.int64), steps=when, **arrays)

        self._guard(write)

    def _params_files(self, group: int, batch: int | None = None) -> list[tuple[int, Path]]:
        folder = self.path / PARAMS_DIR
        if not folder.is_dir():
            return []
        out = []
        for p in folder.iterdir():
            m = PARAMS_NAME.fullmatch(p.name)
            if m and m["prefix"] == self.prefix and int(m["group"]) == group and (
                    batch is None or int(m["batch"]) == batch):
                out.append((int(m["step"]), p))
        return out

    def first_damaged_params(self, group: int, batch: int) -> tuple[int, Path] | None:
        """(step, file) of this batch's earliest parameters file that cannot be read, if any."""
        for step, p in sorted(self._params_files(group, batch)):
            if not params_file_ok(p):
                return step, p
        return None

    def clear_params_after(self, group: int, batch: int, step: int) -> None:
        """Remove this batch's parameter files after ``step`` (written after the checkpoint resumed from)."""
        for s, p in self._params_files(group, batch):
            if s > step:
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()

    def clear_group_params(self, group: int) -> None:
        for _, p in self._params_files(group):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()


def damaged(path: Path, e: BaseException) -> UserError:
    return UserError(f"{path}: not a readable parameters file ({type(e).__name__}); remove it (the parameters "
                     f"it kept are lost) or resume the sweep (--resume trains them again)")


def params_file_ok(path: Path) -> bool:
    """Whether a parameters file opens and holds its run ids, step(s) and arrays whole."""
    try:
        with np.load(path) as z:
            ids = z["run_ids"]
            _ = z["steps"] if "steps" in z.files else z["step"]
            return all(len(z[k]) >= len(ids) for k in z.files if k.startswith((_KEY, _OPT)))
    except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile):
        return False


ParamsIndex = dict[int, dict[int, tuple[Path, int]]]  # run_id -> step -> (file, row)


def params_index(path: Path) -> ParamsIndex:
    """Where each run's kept parameters are: run_id -> step -> (file, row). A file holds one step for
    all its rows (``step``) or one per row (``steps``: the snapshots at transitions)."""
    index: ParamsIndex = {}
    folder = Path(path) / PARAMS_DIR
    files = sorted(p for p in folder.iterdir() if PARAMS_NAME.fullmatch(p.name)) if folder.is_dir() else []
    for p in files:
        try:
            with np.load(p) as z:
                ids = z["run_ids"]
                steps = z["steps"] if "steps" in z.files else np.full(len(ids), int(z["step"]))
        except FileNotFoundError:  # removed by a resume since the listing
            continue
        except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile) as e:  # a zero-byte file: EOFError
            raise damaged(p, e) from None
        for row, (rid, step) in enumerate(zip(ids.tolist(), steps.tolist())):
            index.setdefault(rid, {})[step] = (p, row)
    return index


def read_params(index: ParamsIndex, run_id: int, step: int | None) -> tuple[int, dict[str, Any], list[int]]:
    """(step, nested dict of NumPy arrays, every kept step) of ``run_id``'s parameters: at ``step``, or the
    last kept one. KeyError when the run has no kept parameters; LookupError when ``step`` was not kept."""
    found = index.get(run_id)
    if not found:
        raise KeyError(run_id)
    kept = sorted(found)
    at = kept[-1] if step is None else step
    if at not in found:
        raise LookupError(at)
    p, row = found[at]
    tree: dict[str, Any] = {}
    try:
        with np.load(p) as z:
            for key in z.files:
                if key.startswith(_KEY):
                    *parents, leaf = key[len(_KEY):].split(".")
                    node = tree
                    for name in parents:
                        node = node.setdefault(name, {})
                    node[leaf] = np.array(z[key][row])
    except (EOFError, ValueError, KeyError, IndexError, zipfile.BadZipFile) as e:  # damaged since indexed
        raise damaged(p, e) from None
    return at, tree, kept


def read_optimizer(index: ParamsIndex, run_id: int, step: int) -> dict[str, np.ndarray]:
    """The optimizer state kept with ``run_id``'s parameters at ``step`` (a kept step), by leaf name; {} where
    none was kept (snapshot_optimizer=false)."""
    p, row = index[run_id][step]
    try:
        with np.load(p) as z:
            return {k[len(_OPT):]: np.array(z[k][row]) for k in z.files if k.startswith(_OPT)}
    except (EOFError, ValueError, KeyError, IndexError, zipfile.BadZipFile) as e:
        raise damaged(p, e) from None

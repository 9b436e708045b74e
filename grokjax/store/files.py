"""Atomic writes (temporary name, fsync, rename) and small readers shared by the store."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from grokjax.errors import UserError


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_parquet(path: Path, table: pa.Table) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: not a readable grokjax sweep record ({e})")


def remove_tree(path: Path) -> None:
    for p in sorted(path.rglob("*"), reverse=True):
        with contextlib.suppress(OSError):
            p.rmdir() if p.is_dir() else p.unlink()
    with contextlib.suppress(OSError):
        path.rmdir()



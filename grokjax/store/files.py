"""Atomic writes (temporary name, fsync, rename) and small readers shared by the store."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import threading
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from grokjax.errors import UserError


class StorageError(Exception):
    """Writing the results failed (disk full, read-only, permissions...). The message says what was kept."""


def tmp_name(path: Path) -> Path:
    """The hidden temporary name a file is written under before it is renamed into place: unique to this
    process and thread, so writers sharing a directory (shards) never write through one temporary file."""
    return path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """Yield a temporary path to write; on success it is fsynced and renamed to ``path``, on failure it
    is removed (a full disk leaves no partial file behind) and the error propagates."""
    tmp = tmp_name(path)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


@contextlib.contextmanager
def atomic_files(paths: list[Path]) -> Iterator[list[Path]]:
    """``atomic_file`` for several files written as one: all are written under temporary names and fsynced
    before any is renamed into place, so a failed write (a full disk) leaves every previous file as it was."""
    tmps = [tmp_name(p) for p in paths]
    try:
        yield tmps
        for tmp in tmps:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        for tmp, path in zip(tmps, paths):
            os.replace(tmp, path)
    except BaseException:
        for tmp in tmps:
            with contextlib.suppress(OSError):
                tmp.unlink()
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)


def atomic_parquet(path: Path, table: pa.Table) -> None:
    with atomic_file(path) as tmp:
        pq.write_table(table, tmp)


def write_error(path: Path, e: OSError, kept: str) -> StorageError:
    """A one-line error for a failed write to ``path``: why, and what is kept."""
    reason = "the disk is full" if e.errno == errno.ENOSPC else (e.strerror or str(e))
    return StorageError(f"writing {path} failed: {reason}; {kept}")


def read_json(path: Path) -> dict[str, Any]:
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: not a readable grokjax sweep record ({e}); it is damaged: restore it or "
                        f"rerun the sweep into a new --out")
    if not isinstance(record, dict) or "spec" not in record:
        raise UserError(f"{path}: not a grokjax sweep record (no spec); restore it or rerun the sweep")
    return record


def read_parquet(path: Path, what: str) -> pa.Table:
    """Read a Parquet file, or fail with one line naming it, what is wrong and what to do."""
    try:
        return pq.read_table(path)
    except FileNotFoundError:
        raise UserError(f"{path} is missing: {what}")
    except (OSError, pa.ArrowException) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"{path} is damaged ({reason}): {what}")


def parquet_ok(path: Path) -> bool:
    """Whether a Parquet file's footer and row groups can be read (a truncated file cannot)."""
    try:
        pq.read_table(path)
        return True
    except (OSError, pa.ArrowException):
        return False

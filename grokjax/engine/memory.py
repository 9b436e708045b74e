"""How many models of a group fit in one compiled program on this device."""

from __future__ import annotations

import os
import resource
from pathlib import Path

import jax

from grokjax.engine.program import Program
from grokjax.engine.single import Engine
from grokjax.errors import UserError


def device_memory_budget(device: jax.Device) -> int:
    """Bytes a program may use on this device: free accelerator memory, or half the free host memory (the
    process's own limits included: ``host_memory_free``)."""
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if stats and "bytes_limit" in stats:
        return int(0.9 * (stats["bytes_limit"] - stats.get("bytes_in_use", 0)))
    return int(0.5 * host_memory_free())


UNLIMITED = 1 << 60  # a cgroup limit at or above this is "max" (cgroup v1 writes 2^63 rounded to pages)


def host_memory_free(cgroup_root: Path = Path("/sys/fs/cgroup"), proc: Path = Path("/proc/self")) -> int:
    """Host memory this process can still take: the machine's free memory, or less where the process is
    limited, by its address-space limit (RLIMIT_AS, ``ulimit -v``: minus what it has mapped) or by its
    cgroup's (SLURM's ``--mem``, a container's): cgroup v2 ``memory.max`` or v1 ``memory.limit_in_bytes``
    minus the usage, the tightest over the cgroup and its ancestors."""
    try:
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        free = 8 << 30
    soft = resource.getrlimit(resource.RLIMIT_AS)[0]
    if soft != resource.RLIM_INFINITY:
        free = min(free, max(soft - _mapped_bytes(proc), 0))
    for limit, used in _cgroup_limits(cgroup_root, proc):
        free = min(free, max(limit - used, 0))
    return free


def _mapped_bytes(proc: Path) -> int:
    """The process's virtual size (VmSize), which RLIMIT_AS bounds."""
    try:
        for line in (proc / "status").read_text().splitlines():
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _cgroup_limits(root: Path, proc: Path) -> list[tuple[int, int]]:
    """(limit, usage) in bytes of every memory-limited cgroup above this process (v2 and v1)."""
    try:
        lines = (proc / "cgroup").read_text().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        _, controllers, rel = line.split(":", 2)
        if controllers == "":  # v2: 0::/path
            base, files = root, ("memory.max", "memory.current")
        elif "memory" in controllers.split(","):
            base, files = root / "memory", ("memory.limit_in_bytes", "memory.usage_in_bytes")
        else:
            continue
        parts = [p for p in rel.split("/") if p]
        for depth in range(len(parts), -1, -1):
            folder = base.joinpath(*parts[:depth])
            limit, used = (_read_bytes(folder / f) for f in files)
            if limit is not None and limit < UNLIMITED:
                out.append((limit, used or 0))
    return out


def _read_bytes(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # "max": no limit


def choose_models_per_batch(engine: Engine, n_models: int, requested: int = 0,
                            budget: int | None = None) -> tuple[int, str]:
    """Most slots (models trained at once, each one run at a time) whose compiled program fits the device
    memory budget, at most ``n_models`` (the group's runs).

    Compiles the program for all models first (the usual case, reused for training); if it does not fit,
    estimates the per-model cost from a 1- and 2-model program, then checks the chosen batch's own
    compiled program and shrinks it until it fits.
    Returns (slots, a sentence explaining the choice).
    """
    budget = budget if budget is not None else device_memory_budget(jax.local_devices()[0])
    if requested:
        m = min(requested, n_models)
        used = Program.get(engine, m).bytes
        if used is not None and used > budget:
            fits = _linear_fit(engine, n_models, budget)
            raise UserError(f"models_per_batch={requested}: {m} models need {used / 2**20:,.0f} MiB, but "
                            f"{budget / 2**20:,.0f} MiB are free on {jax.local_devices()[0].platform}; at most "
                            f"{fits} fit (models_per_batch=0 chooses for you)")
        return m, f"{m} slots (models_per_batch={requested})"
    full = Program.get(engine, n_models).bytes
    if full is None or full <= budget:
        shown = "unknown" if full is None else f"{full / 2**20:.0f} MiB"
        return n_models, f"{n_models} slots, one per run ({shown} of {budget / 2**20:.0f} MiB)"
    one = Program.get(engine, 1).bytes
    if one is not None and one > budget:
        raise UserError(f"one model of this group needs {one / 2**20:,.0f} MiB, more than the "
                        f"{budget / 2**20:,.0f} MiB free; use a smaller model, p or eval_batch_size")
    per_model = _per_model_bytes(engine)
    m = _linear_fit(engine, n_models, budget)
    # The linear estimate is only a start: check the real program (needed anyway) and shrink until it fits.
    while m > 1 and (used := Program.get(engine, m).bytes) is not None and used > budget:
        m = max(1, min(m - 1, int(m * budget / used)))
    return m, (f"{m} slots: {n_models} models would need ~{full / 2**20:.0f} MiB, "
                    f"{per_model / 2**20:.1f} MiB each, budget {budget / 2**20:.0f} MiB")




def _per_model_bytes(engine: Engine) -> int:
    one, two = Program.get(engine, 1).bytes, Program.get(engine, 2).bytes
    return max((two or 0) - (one or 0), 1)


def _linear_fit(engine: Engine, n_models: int, budget: int) -> int:
    """Models that fit by the linear estimate from a 1- and a 2-model program (at least 1)."""
    per_model = _per_model_bytes(engine)
    fixed = max((Program.get(engine, 1).bytes or 0) - per_model, 0)
    return int(max(1, min(n_models, (budget - fixed) // per_model)))

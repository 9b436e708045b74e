"""Strict, fast test settings: float64 available (vmapped-vs-alone comparisons), tiny configs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import jax
import pytest

jax.config.update("jax_enable_x64", True)

# A test session never starts jax.distributed: stray cluster variables (the tests may run inside a SLURM job
# or an mpirun) are removed, also for the grokjax processes the tests launch.
for _name in list(os.environ):
    if _name.startswith(("SLURM_", "OMPI_")) or _name in ("TPU_WORKER_HOSTNAMES", "GROKJAX_DISTRIBUTED"):
        del os.environ[_name]

REPO = Path(__file__).resolve().parent.parent

# A persistent XLA compilation cache, shared by the test processes (the xdist workers) and the grokjax
# processes the tests launch, and kept between runs in the user's cache directory (as pip keeps its
# wheels), one folder per machine (_machine_key; GROKJAX_TEST_XLA_CACHE chooses another): the tests compile many of the same tiny programs, and a
# repeated run on one machine, CI's included, compiles none of them again. Measured on the 2-core
# development machine with an empty cache (2026-12-07, packages byte-compiled): the suite took 846 s with
# 2 workers, 332 s warm (on 2026-12-04, 984 s with 3 workers: the CPUs are saturated either way). A
# CompileCounter turns the cache off while it counts (a cache hit is no compilation), until its test ends.


def _machine_key() -> str:
    """The CPU's model and instruction-set flags, and jaxlib's version, hashed: a cached executable holds
    machine code for the CPU that compiled it, so a home directory shared between machines (or a CI cache
    restored on another runner) must not hand an AVX-512 program to an AVX2 CPU (SIGILL)."""
    import hashlib
    import platform

    import jaxlib

    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    cpu = sorted({line for line in lines if line.startswith(("model name", "flags", "Features"))})
    text = "\n".join([platform.machine(), platform.processor(), jaxlib.__version__, *cpu])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


_CACHE = os.environ.get("GROKJAX_TEST_XLA_CACHE") or str(
    Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "grokjax" / "pytest-xla" / _machine_key())
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _CACHE)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


@pytest.fixture(autouse=True)
def _compilation_cache_back_on():
    yield
    jax.config.update("jax_enable_compilation_cache", True)


# A model small enough to train in seconds on 2 CPU cores.
TINY = ["op=add", "p=11", "d_model=16", "n_heads=2", "d_mlp=32", "n_layers=1", "steps=60", "eval_every=20",
        "chunk_steps=20", "frac=0.5", "wd=1", "lr=3e-3", "seeds=1"]


def assert_same_params(got, want, rtol: float = 0.0) -> None:
    """Two results directories keep the same steps of every run, with the same parameters at each: bitwise,
    or to ``rtol``."""
    import numpy as np

    for run_id in want.runs.run_id.tolist():
        assert got.kept_steps(run_id) == want.kept_steps(run_id), run_id
        for step in want.kept_steps(run_id):
            for x, y in zip(*(jax.tree.leaves(r.params(run_id, step)) for r in (got, want))):
                if rtol:
                    np.testing.assert_allclose(x, y, rtol=rtol, atol=1e-12)
                else:
                    np.testing.assert_array_equal(x, y)


def merged(*lists: list[str]) -> list[str]:
    """key=value lists merged left to right: a later key replaces an earlier one. An MLP drops TINY's
    n_heads (a key given where it has no effect is refused)."""
    out: dict[str, str] = {}
    for items in lists:
        for item in items:
            key = item.split("=", 1)[0]
            out["seed" if key == "seeds" else key] = item
    if out.get("arch") == "arch=mlp":
        out.pop("n_heads", None)
    return list(out.values())


class CompileCounter:
    """Counts XLA backend compilations of functions whose name contains ``name``."""

    def __init__(self, name: str):
        self.name, self.count = name, 0
        jax.config.update("jax_enable_compilation_cache", False)  # every compilation counted happens
        jax.monitoring.register_event_duration_secs_listener(self)

    def __call__(self, event: str, duration: float, **kw: object) -> None:
        if event == "/jax/core/compile/backend_compile_duration" and self.name in str(kw.get("fun_name", "")):
            self.count += 1


@pytest.fixture
def tiny() -> list[str]:
    return list(TINY)


def run_cli(args: list[str], cwd: Path | None = None, env: dict | None = None, timeout: float = 300
            ) -> subprocess.CompletedProcess:
    """``python -m grokjax ARGS`` in a fresh process."""
    full_env = dict(os.environ) | {"PYTHONPATH": str(REPO)} | (env or {})
    return subprocess.run([sys.executable, "-m", "grokjax", *args], capture_output=True, text=True,
                          cwd=cwd, env=full_env, timeout=timeout)


def snapshot(path: Path) -> dict[str, bytes]:
    """Every file under path with its bytes (to show that nothing was touched)."""
    if not path.exists():
        return {}
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}

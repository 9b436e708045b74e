"""Grid shards for job arrays: ``--shard I/N`` trains the runs whose run_id % N == I."""

from __future__ import annotations

import re
from dataclasses import dataclass

from grokjax.errors import UserError

MAX_SHARDS = 100_000


@dataclass(frozen=True)
class Shard:
    """Slice ``index`` (0-based) of ``count`` deterministic slices of a grid, by run_id (round robin, so
    every shard gets a share of each group and of each wd)."""

    index: int
    count: int

    def has(self, run_id: int) -> bool:
        return run_id % self.count == self.index

    @property
    def label(self) -> str:
        return f"{self.index}/{self.count}"

    @property
    def prefix(self) -> str:
        """The start of this shard's part, checkpoint and lock names in a shared results directory."""
        return f"shard{self.index:05d}of{self.count:05d}-"


def parse_shard(text: str) -> Shard:
    """``"I/N"`` (as SLURM's ``$SLURM_ARRAY_TASK_ID/N``) -> Shard; UserError naming the value otherwise."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if m is None or not 0 <= int(m.group(1)) < int(m.group(2)) <= MAX_SHARDS:
        raise UserError(f"--shard {text}: expected I/N with 0 <= I < N <= {MAX_SHARDS} (slice I of N, 0-based; "
                        f"e.g. --shard 0/4, or --shard $SLURM_ARRAY_TASK_ID/4)")
    return Shard(int(m.group(1)), int(m.group(2)))

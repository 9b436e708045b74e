"""Exceptions the CLI turns into one line: UserError (exit 2) and Interrupted (exit 128 + signal)."""

import signal
from pathlib import Path


class UserError(Exception):
    """A mistake in what the user asked for (a bad key, value, file or directory).

    The message is a single line that names the bad value and what would be accepted.
    """

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


class Interrupted(Exception):
    """SIGINT/SIGTERM arrived; the message says what was saved."""

    def __init__(self, signum: int, path: Path, saved: tuple[int, int] | None, shard: str | None = None):
        what = ("before any checkpoint was written: nothing was trained yet" if saved is None else
                f"checkpoint written (group {saved[0] + 1}, after {saved[1]} steps of its program)")
        super().__init__(f"stopped by {signal.Signals(signum).name} {what}. Continue with: "
                         f"grokjax sweep ... --out {path} --resume" + (f" --shard {shard}" if shard else ""))
        self.signum = signum

"""What a sweep can be set to, without JAX: every key declared once (``structure``), the registry derived
from those declarations (``fields``), the names of the registered families (``choices``), the schedule
rules every other module imports (``schedule``) and the named sweeps in ``sweeps/*.toml`` (``presets``).

Nothing here imports JAX, flax or optax, so parsing and checking a sweep (``grokjax sweep --dry-run``)
stays fast. This ``__init__`` imports nothing.
"""

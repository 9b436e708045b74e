"""From user text to the grid of runs, without JAX: the ``key=value`` grammar (``grammar``, never
``eval``), the resolved sweep with its runs, static groups and cross-field checks (``expand``), and
slices of the grid for job arrays (``shard``). This ``__init__`` imports nothing."""

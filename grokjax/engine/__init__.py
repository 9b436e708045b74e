"""The pure training engine: ``data`` (splits, batches, per-model arrays), ``single`` (one model's
init, step and evaluation), ``program`` (the one place that vmaps, scans and jits them), ``memory``
(how many models fit). Nothing here does I/O.
"""

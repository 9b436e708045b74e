"""Sweep specifications: typed structure, fields, the key=value grammar, presets and the resolved grid.

Modules: ``structure`` (frozen dataclasses), ``fields`` (the registry of keys), ``grammar`` (parsing user
text, never ``eval``), ``presets`` (named sweeps and TOML files), ``grid`` (the resolved Sweep and its
groups). This ``__init__`` imports nothing so that any module may import ``grokjax.spec.structure``.
"""

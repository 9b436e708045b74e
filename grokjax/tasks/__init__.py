"""Algorithmic tasks: full tables of pairs (``tables``)."""

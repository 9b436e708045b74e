"""Sweep orchestration (``sweep``) and what the user sees while it runs (``progress``)."""

"""Pure analysis of results (no writes): per-run times and phases (``fit``), survival statistics per cell
(``survival``), the wd law (``law``), terminal tables (``summary``) and figures (``plots``).
"""

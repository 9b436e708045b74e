"""The ONLY code that opens files: the results directory (``results``), reading it back (``load``),
atomic writes (``files``), fits and figures (``outputs``).
"""

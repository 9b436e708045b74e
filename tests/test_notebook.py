"""docs/beyond.ipynb runs: its code cells, executed in order on a tiny real wd x frac sweep with the norm
and logit measures on, read every quantity it names (a column renamed or dropped is a KeyError here)."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pandas as pd
import pytest

from grokjax.grid.expand import build_sweep
from grokjax.run.sweep import run_sweep

NOTEBOOK = Path(__file__).resolve().parents[1] / "docs" / "beyond.ipynb"
TINY = ["p=11", "d_model=8", "n_heads=2", "d_mlp=16", "steps=60", "eval_every=10", "chunk_steps=20",
        "seeds=2", "wd=[0.3,1]", "frac=[0.5,0.7]", "lr=1e-2", "measures=norms+logits"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("notebook") / "beyond"
    run_sweep(build_sweep(None, TINY), path, quiet=True)
    return path


def _cells() -> list[str]:
    notebook = json.loads(NOTEBOOK.read_text())
    return ["".join(c["source"]) for c in notebook["cells"] if c["cell_type"] == "code"]


def test_the_notebook_reads_every_quantity_from_one_load(tiny):
    cells = _cells()
    assert 'DIR = "results/beyond"' in cells[0]
    cells[0] = cells[0].replace('"results/beyond"', repr(str(tiny)))
    namespace: dict = {}
    shown = []
    for source in cells:  # as IPython runs a cell: a last expression is shown
        tree = ast.parse(source)
        last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
        exec(compile(tree, "beyond.ipynb", "exec"), namespace)  # noqa: S102 - the repository's own notebook
        if last is not None:
            shown.append(eval(compile(ast.Expression(last.value), "beyond.ipynb", "eval"), namespace))  # noqa: S307
    tables = [s for s in shown if isinstance(s, pd.DataFrame)]
    assert len(tables) == 7
    report = namespace["report"]
    assert len(report.fits) == 8 and len(report.cells) == 4
    margins = tables[-1]
    assert len(margins) == 8 and margins["logit_margin"].notna().all() and (margins["logit_norm"] > 0).all()
    assert namespace["frame"]["unembed_norm"].notna().any()

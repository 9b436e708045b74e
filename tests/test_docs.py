"""The docs stay true: every `grokjax ...` command of README.md and docs/*.md runs (a sweep with --dry-run;
fit, plot and export on a tiny real results directory), and every relative link and anchor resolves."""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import pytest

from grokjax.cli import main
from grokjax.grid.expand import build_sweep
from grokjax.run.sweep import run_sweep

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
TINY = ["p=11", "d_model=8", "n_heads=2", "d_mlp=16", "steps=40", "eval_every=10", "chunk_steps=20",
        "seeds=1", "wd=[0.3,1]", "measures=none"]
# Shell variables the docs' scripts use, and what they stand for here; DIR and OUT are the placeholders of
# prose commands (a results directory, an output path).
VARIABLES = {"OUT": "results/out", "SLURM_ARRAY_TASK_ID": "0", "i": "0", "RESUME": ""}
VALUED = {"--to", "--runs", "--step", "--keep", "--slack", "--confirm", "--threshold", "--format", "--output",
          "--out", "--shard", "--coordinator", "--num-processes", "--process-id", "--cluster-timeout"}
PROGRAM = re.compile(r"^\s*(?:[A-Z_]+=\S*\s+)*(?:srun\s+|mpirun\s+)?grokjax\s")


def _fenced(text: str) -> list[str]:
    """Command lines of the ```bash blocks (continuations joined), each from `grokjax` on."""
    out, fence, lines = [], None, text.split("\n")
    for n, line in enumerate(lines):
        if line.startswith("```"):
            fence = line[3:].strip() if fence is None else None
        elif fence in ("bash", "sh", "") and PROGRAM.match(line):
            while line.rstrip().endswith("\\"):
                n += 1
                line = line.rstrip()[:-1] + " " + lines[n].strip()
            out.append(line[line.index("grokjax"):])
    return out


def _inline(text: str) -> list[str]:
    """`grokjax sub args` in prose, where every argument is concrete or the DIR/OUT placeholder."""
    outside = re.sub(r"```.*?```", "", text, flags=re.S)
    found = re.findall(r"`(grokjax [^`]+)`", outside)
    concrete = re.compile(r"^(DIR|OUT|[^A-Z\[].*|[A-Za-z_]+=.*)$")
    return [c for c in found if len(c.split()) > 2 or c.split()[1] in ("sweep", "keys")
            if "..." not in c and "|" not in c and all(concrete.match(t) for t in c.split()[1:])]


def _words(command: str) -> list[str]:
    command = re.sub(r"\$\{?(\w+)\}?", lambda m: VARIABLES[m.group(1)], command)
    try:
        words = shlex.split(command, comments=True)
    except ValueError:  # a command quoted inside another (the TPU recipe): its closing quote
        words = shlex.split(command.rstrip().rstrip('"'), comments=True)
    words = words[: words.index("&&")] if "&&" in words else words
    return [w for w in words[1:] if w not in ("&", "")]


def commands() -> list[tuple[str, list[str]]]:
    out = {}
    for page in PAGES:
        text = page.read_text()
        for c in _fenced(text) + _inline(text):
            if "..." in c:  # a pattern (`grokjax sweep ... --shard 2/8`), not a command
                continue
            out.setdefault(" ".join(_words(c)), (page.relative_to(REPO).as_posix(), _words(c)))
    return list(out.values())


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("docs") / "tiny"
    run_sweep(build_sweep(None, TINY), path, quiet=True)
    return path


def _on_tiny(words: list[str], tiny: Path, tmp: Path) -> list[str]:
    """fit/plot/export: each results directory named becomes a copy of the tiny sweep, an export's target a
    fresh path, a figure's --output a file in tmp."""
    out, positional, previous = [words[0]], 0, None
    for w in words[1:]:
        if previous in ("--output", "--out"):
            w = str(tmp / Path(w).name)
        elif not w.startswith("-") and previous not in VALUED:
            positional += 1
            copy = tmp / f"dir{positional}"
            if words[0] == "export" and positional == 2:
                w = str(copy)
            else:
                if not copy.exists():
                    shutil.copytree(tiny, copy)
                w = str(copy)
        out.append(w)
        previous = w if w.startswith("-") else None
    return out


@pytest.mark.parametrize("page, words", commands(), ids=lambda x: x if isinstance(x, str) else " ".join(x))
def test_every_documented_command_runs(page, words, tiny, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    if words[0] == "sweep":
        words = [*words, "--dry-run"]
    elif words[0] in ("fit", "plot", "export"):
        words = _on_tiny(words, tiny, tmp_path)
    try:
        code = main(words)
    except SystemExit as e:  # --version, --help: argparse exits
        code = e.code
    err = capsys.readouterr().err
    assert code == 0, f"{page}: grokjax {' '.join(words)} -> exit {code}: {err}"


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation (but - and _) dropped, spaces as -."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return {_slug(h) for h in re.findall(r"^#+ (.+)$", text, flags=re.M)}


def test_every_relative_link_resolves():
    broken = []
    for page in PAGES:
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"^[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            if not file.exists():
                broken.append(f"{page.name}: {target} (no such file)")
            elif anchor and file.suffix == ".md" and anchor not in _anchors(file):
                broken.append(f"{page.name}: {target} (no such heading)")
    assert not broken, "\n".join(broken)


def test_the_docs_index_lists_every_page():
    index = (REPO / "docs" / "README.md").read_text()
    missing = [p.name for p in PAGES[1:] if p.name != "README.md" and f"]({p.name})" not in index]
    assert not missing, missing

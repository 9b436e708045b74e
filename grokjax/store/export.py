"""Export a results directory to the tools people already use: TensorBoard event files (one run directory
per model, scalars per step, hyperparameters through the HParams plugin), offline W&B runs (synced later
with ``wandb sync``), or TransformerLens models (per run and kept step: the HookedTransformerConfig and the
state dict, loaded by ``hooked_transformer``). The trackers' writers are optional extras, imported only
here; the TransformerLens files are written with NumPy alone (the extra is needed to load them)."""

from __future__ import annotations

import io
import json
import math
import os
import re
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from grokjax.errors import UserError
from grokjax.store.files import atomic_write_bytes, write_error
from grokjax.store.load import Results, load, saved_fits

TARGETS = ("tensorboard", "wandb", "transformerlens")
SUMMARY_COLUMNS = ("t_train", "t_val", "delay", "t_val_first", "final_train_acc", "final_val_acc")
_EXTRA = {"tensorboard": ("tensorboardX", "grokjax[tensorboard]"), "wandb": ("wandb", "grokjax[wandb]"),
          "transformerlens": ("transformer_lens", "grokjax[transformerlens]")}
TL_CONFIG, TL_STATE, TL_ABOUT = "config.json", "state_dict.npz", "grokjax.json"  # one exported model's files


def run_name(run_id: int) -> str:
    return f"run_{run_id:05d}"


def _plain(v: Any) -> int | float | str | bool:
    """A NumPy or pandas scalar as a Python one (what the writers accept)."""
    v = v.item() if hasattr(v, "item") else v
    return v if isinstance(v, (int, float, str, bool)) else str(v)


def _hparams(results: Results) -> dict[int, dict[str, int | float | str | bool]]:
    runs = results.runs.set_index("run_id")
    return {int(rid): {k: _plain(v) for k, v in row.items()} for rid, row in runs.iterrows()}


def _summaries(results: Results) -> dict[int, dict[str, float]]:
    """The saved fits' times per run, if ``grokjax fit`` wrote them (NaN ones left out)."""
    fits, _ = saved_fits(results.path)
    if fits is None:
        return {}
    out = {}
    for row in fits.itertuples():
        vals = {c: float(getattr(row, c)) for c in SUMMARY_COLUMNS if hasattr(row, c)}
        out[int(row.run_id)] = {k: v for k, v in vals.items() if math.isfinite(v)}
    return out


def _rows(metrics: pd.DataFrame) -> Any:
    """Per run: (run_id, [(step, {metric: value})]) with the null entries dropped; every metric column
    (the measures' included)."""
    columns = [c for c in metrics.columns if c not in ("run_id", "step")]
    for rid, m in metrics.groupby("run_id", sort=True):
        rows = []
        for step, *values in m[["step", *columns]].itertuples(index=False, name=None):
            rows.append((int(step), {c: float(v) for c, v in zip(columns, values) if not pd.isna(v)}))
        yield int(rid), rows


def _to_tensorboard(results: Results, out: Path, say: Callable[[str], None]) -> int:
    from tensorboardX import SummaryWriter
    from tensorboardX.summary import hparams

    hps, summaries = _hparams(results), _summaries(results)
    n = 0
    for rid, rows in _rows(results.metrics):
        with SummaryWriter(logdir=str(out / run_name(rid)), flush_secs=3600) as w:
            for step, vals in rows:
                for tag, v in vals.items():
                    w.add_scalar(tag, v, step)
            final = {f"fit/{k}": v for k, v in summaries.get(rid, {}).items()}
            for tag, v in final.items():
                w.add_scalar(tag, v, 0)
            for summary in hparams(hps[rid], final or {"fit/none": 0.0}):
                w.file_writer.add_summary(summary)
        n += 1
        if n % 50 == 0:
            say(f"exported {n} of {len(hps)} runs")
    return n


def _to_wandb(results: Results, out: Path, project: str, say: Callable[[str], None]) -> int:
    os.environ.setdefault("WANDB_MODE", "offline")  # never the network: the user syncs later
    os.environ.setdefault("WANDB_SILENT", "true")
    import wandb

    hps, summaries = _hparams(results), _summaries(results)
    group = f"{results.sweep.get('name', 'sweep')}-{results.sweep.get('fingerprint', '')[:8]}"
    try:
        return _log_wandb_runs(wandb, results, out, project, group, hps, summaries, say)
    finally:
        wandb.teardown()  # the service and its threads end with the export, not with the process


def _log_wandb_runs(wandb: Any, results: Results, out: Path, project: str, group: str, hps: dict,
                    summaries: dict, say: Callable[[str], None]) -> int:
    """One offline wandb run per grokjax run, with its metrics as history and its fit as summary."""
    n = 0
    for rid, rows in _rows(results.metrics):
        run = wandb.init(mode="offline", dir=str(out), project=project, group=group, name=run_name(rid),
                         config=hps[rid], reinit="create_new",
                         settings=wandb.Settings(console="off", x_disable_stats=True, silent=True))
        for step, vals in rows:
            run.log(vals, step=step)
        run.summary.update(summaries.get(rid, {}))
        run.finish()
        n += 1
        if n % 50 == 0:
            say(f"exported {n} of {len(hps)} runs")
    return n


def _selected(results: Results, runs: list[int] | None, step: int | str | None) -> list[tuple[int, list[int]]]:
    """(run_id, steps to export) for ``--runs`` (default every run) and ``--step`` (an int, ``all`` or the
    last kept); UserError for a run or step that is not there, or a run TransformerLens cannot express."""
    from grokjax.models.transformerlens import refusal, unsupported
    from grokjax.run.opened import model_config

    ids = results.runs["run_id"].tolist() if runs is None else runs
    if not ids:
        raise UserError("--runs: no run_id given; e.g. --runs 0,5 (or leave --runs out for every run)")
    twice = sorted({rid for rid in ids if ids.count(rid) > 1})
    if twice:
        raise UserError(f"--runs: run {twice[0]} is given twice; give each run_id once")
    rows = results.runs.set_index("run_id")
    chosen = []
    for rid in ids:
        kept = results.kept_steps(rid)  # UserError for a bad run id or one without kept parameters
        if (what := unsupported(model_config(rows.loc[rid].to_dict()))) is not None:
            raise UserError(f"run {rid}: {refusal(what)} (choose runs with --runs)")
        if step == "all":
            chosen.append((rid, kept))
        elif step is None:
            chosen.append((rid, kept[-1:]))
        else:
            results.params(rid, int(step))  # UserError naming the kept steps
            chosen.append((rid, [int(step)]))
    return chosen


def _npz_bytes(arrays: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _to_transformerlens(results: Results, out: Path, chosen: list[tuple[int, list[int]]],
                        say: Callable[[str], None]) -> int:
    n = 0
    rows = results.runs.set_index("run_id")
    for rid, steps in chosen:
        for step in steps:
            config, state = results.hooked_transformer(rid, step)
            folder = out / run_name(rid) / f"step_{step}"
            folder.mkdir(parents=True)
            about = {"run_id": rid, "step": step, "source": str(Path(results.path).resolve()),
                     "hyperparameters": {k: _plain(v) for k, v in rows.loc[rid].items()},
                     "inputs": "tokens [a, b, '='] with '=' = d_vocab_out (tokens=3), or [a, op, b, '='] with "
                               "'=' = p and op = p + 1 (tokens=4); the answer is read at the last position"}
            atomic_write_bytes(folder / TL_CONFIG, json.dumps(config, indent=1).encode())
            atomic_write_bytes(folder / TL_STATE, _npz_bytes(state))
            atomic_write_bytes(folder / TL_ABOUT, json.dumps(about, indent=1).encode())
            n += 1
        if n and n % 50 == 0:
            say(f"exported {n} models")
    return n


def hooked_transformer(folder: str | os.PathLike, device: str = "cpu") -> Any:
    """The model exported to ``folder`` (``OUT/run_XXXXX/step_S``), its weights loaded strictly, in the
    TransformerLens installed (``pip install 'grokjax[transformerlens]'``): on 4.x a ``TransformerBridge``
    booted native with the state dict converted by ``convert_tl_checkpoint``; on 2.x and 3.x a
    ``HookedTransformer``. Both give the same hook names (``blocks.0.mlp.hook_post``, ...)."""
    folder = Path(folder)
    if not (folder / TL_CONFIG).is_file() or not (folder / TL_STATE).is_file():
        raise UserError(f"{folder}: not an exported model (no {TL_CONFIG} and {TL_STATE}); expected a folder "
                        f"OUT/run_XXXXX/step_S written by grokjax export DIR --to transformerlens OUT")
    try:
        import torch
        import transformer_lens  # noqa: F401
    except ImportError:
        raise UserError("loading a TransformerLens export needs transformer_lens and torch: "
                        "pip install 'grokjax[transformerlens]'") from None
    config = json.loads((folder / TL_CONFIG).read_text())
    with np.load(folder / TL_STATE) as z:
        state = {k: torch.from_numpy(z[k]) for k in z.files}
    try:  # 2.x and 3.x; on 4.x this import raises ImportError (and hasattr would too)
        from transformer_lens import HookedTransformer, HookedTransformerConfig
    except ImportError:
        return _bridge(folder, config, state, device)
    model = HookedTransformer(HookedTransformerConfig(**config, device=device))
    missing, unexpected = model.load_state_dict(state, strict=False)  # the attention mask is the model's
    weights = {k for k, _ in model.named_parameters()}
    if unexpected or weights & set(missing):
        raise UserError(f"{folder}: this TransformerLens version names the weights otherwise (missing "
                        f"{sorted(weights & set(missing))[:3]}, unexpected {sorted(unexpected)[:3]})")
    return model.eval()


def _bridge(folder: Path, config: dict[str, Any], state: dict[str, Any], device: str) -> Any:
    """TransformerLens 4.x: a native ``TransformerBridge`` of the exported config, the HookedTransformer-
    layout state dict converted and loaded strictly."""
    from transformer_lens import TransformerBridge, TransformerBridgeConfig
    from transformer_lens.conversion_utils import convert_tl_checkpoint

    cfg = TransformerBridgeConfig(**config)
    model = TransformerBridge.boot_native(cfg, device=device)
    try:
        model.load_state_dict(convert_tl_checkpoint(state, cfg), strict=True)
    except (RuntimeError, ValueError) as e:
        raise UserError(f"{folder}: this TransformerLens version does not take the exported weights: "
                        f"{str(e).splitlines()[0][:200]}") from None
    return model.eval()


IN_PROGRESS = "export-in-progress.json"  # in OUT while an export writes; replaced by DONE at its end
DONE = "export.json"
_PROJECT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


def export(path: str | os.PathLike, to: str, out: str | os.PathLike, project: str = "grokjax",
           say: Callable[[str], None] = lambda s: None, runs: list[int] | None = None,
           step: int | str | None = None) -> int:
    """Write every run of the results directory ``path`` to ``out`` (a new or empty directory) as
    TensorBoard event files, offline W&B runs or (``runs`` or every run, at ``step``: a kept step, ``all``
    or by default the last kept) TransformerLens models. Returns the number of runs (models) exported.

    ``out/export-in-progress.json`` marks an export being written; a finished one leaves ``out/export.json``
    (source, target, runs) instead, so a killed export never looks finished."""
    if to not in TARGETS:
        raise UserError(f"--to {to}: expected one of {', '.join(TARGETS)}")
    if to == "wandb" and not _PROJECT.fullmatch(project):
        raise UserError(f"--project {project!r}: a W&B project name is 1 to 128 letters, digits, '_', '-' or '.', "
                        f"starting with a letter or digit")
    if to != "transformerlens":
        module, extra = _EXTRA[to]
        try:
            __import__(module)
        except ImportError:
            raise UserError(f"--to {to} needs the {module} package: pip install '{extra}'") from None
    elif step is not None and step != "all" and not (isinstance(step, int) and not isinstance(step, bool)):
        raise UserError(f"--step {step!r}: expected a kept step (a whole number), 'all', or none for the last kept")
    if to != "transformerlens" and (runs is not None or step is not None):
        raise UserError(f"--runs and --step choose models for --to transformerlens; --to {to} exports every run")
    results = load(path)
    if results.metrics.empty:
        raise UserError(f"{path}: no metrics written yet; nothing to export")
    chosen = _selected(results, runs, step) if to == "transformerlens" else []
    out = Path(out)
    if (out / IN_PROGRESS).exists():
        raise UserError(f"{out}: holds an export that did not finish ({IN_PROGRESS}); remove {out} and export again")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out}: exists and is not an empty directory; export into a new directory")
    record = {"source": str(Path(path).resolve()), "to": to, "project": project if to == "wandb" else None}
    try:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out / IN_PROGRESS, json.dumps(record).encode())
    except OSError as e:
        raise UserError(f"{out}: cannot write there ({e.strerror}); choose a writable directory") from None
    try:
        if to == "transformerlens":
            n = _to_transformerlens(results, out, chosen, say)
        else:
            n = _to_tensorboard(results, out, say) if to == "tensorboard" else _to_wandb(results, out, project, say)
    except OSError as e:
        raise write_error(out, e, f"the runs written so far are in {out}; remove it and export again") from e
    if to == "wandb":  # wandb falls back to a temporary directory where it cannot write: check it wrote here
        written = len(list((out / "wandb").glob("offline-run-*")))
        if written != n:
            raise UserError(f"{out}: W&B wrote {written} of {n} runs there (it falls back to a temporary "
                            f"directory where it cannot write); choose a writable directory")
    atomic_write_bytes(out / DONE, json.dumps(record | {"runs": n}).encode())
    (out / IN_PROGRESS).unlink()
    return n

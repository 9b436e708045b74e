"""The sweep grammar of DESIGN.md, every error class, and the named sweep files."""

from __future__ import annotations

import numpy as np
import pytest

from grokjax.config.presets import find_config, named_sweeps
from grokjax.errors import UserError
from grokjax.grid.expand import build_sweep
from grokjax.grid.grammar import parse_expression


def test_scalar_forms():
    s = build_sweep(None, ["wd=0.5", "op=mul", "model.d_model=64", "n_heads=4", "layer_norm=true", "steps=1e3",
                           "seeds=1"])
    v = s.values
    assert v["hp.wd"] == [0.5] and v["task.op"] == ["mul"] and v["model.d_model"] == [64]
    assert v["model.layer_norm"] == [True] and v["train.steps"] == [1000] and v["hp.seed"] == [0]
    assert isinstance(v["train.steps"][0], int)
    assert "hp.wd" not in s.axes


@pytest.mark.parametrize("text, expected", [
    ("[0.1,0.3,1]", [0.1, 0.3, 1]),
    ("0.1,0.3,1", [0.1, 0.3, 1]),
    ("[2]", [2]),
    ("logspace(-3,1,5)", list(10.0 ** np.linspace(-3, 1, 5))),
    ("linspace(0,1,3)", [0.0, 0.5, 1.0]),
    ("range(1,4)", [1, 2, 3]),
    ("range(0,10,4)", [0, 4, 8]),
    ("range(0.5,1.6,0.5)", [0.5, 1.0, 1.5]),
])
def test_sweep_expressions(text, expected):
    values, is_axis = parse_expression("wd", text)
    assert is_axis
    np.testing.assert_allclose(values, expected, rtol=1e-12)


def test_logspace_includes_both_ends():
    s = build_sweep(None, ["wd=logspace(-3,1,32)", "seeds=16"])
    wd = s.values["hp.wd"]
    assert len(wd) == 32 and wd[0] == pytest.approx(1e-3) and wd[-1] == pytest.approx(10.0)
    assert s.values["hp.seed"] == list(range(16)) and s.n_runs() == 512
    assert len(s.groups()) == 1  # numeric axes never split the grid


def test_seeds_forms_and_grid_order():
    s = build_sweep(None, ["wd=[0.1,1]", "seeds=[0,3,7]"])
    (g, runs), = s.groups()
    assert [(r.get("hp.wd"), r.get("hp.seed")) for r in runs] == [
        (0.1, 0), (0.1, 3), (0.1, 7), (1.0, 0), (1.0, 3), (1.0, 7)]
    assert [r.run_id for r in runs] == list(range(6))


def test_structural_values_make_groups():
    s = build_sweep(None, ["p=[7,11]", "wd=[0.1,1]", "seeds=1", "d_model=16", "n_heads=2"])
    groups = s.groups()
    assert [g.task.p for g, _ in groups] == [7, 11]
    assert [len(runs) for _, runs in groups] == [2, 2]
    assert sorted(r.run_id for _, runs in groups for r in runs) == [0, 1, 2, 3]


def test_toml_config_with_overrides(tmp_path):
    cfg = tmp_path / "mine.toml"
    cfg.write_text('wd = "logspace(-2,0,3)"\nseeds = 2\nop = "sub"\n[model]\nd_model = 48\nn_heads = 3\n')
    s = build_sweep(str(cfg), ["wd=0.5"])
    assert s.values["hp.wd"] == [0.5] and s.values["task.op"] == ["sub"]
    assert s.values["model.d_model"] == [48] and s.values["hp.seed"] == [0, 1] and s.name == "mine"


@pytest.mark.parametrize("name", named_sweeps())
def test_every_named_sweep_file_builds(name):
    """The presets live only in sweeps/NAME.toml: each one is found by name and passes every check."""
    path = find_config(name)
    assert path is not None and path.parent.name == "sweeps"
    assert build_sweep(name).name == name


def test_no_config_is_the_default_sweep_file():
    assert build_sweep(None).fingerprint() == build_sweep("default").fingerprint() == \
        build_sweep(str(find_config("default"))).fingerprint()


def test_presets_follow_the_papers():
    nanda = build_sweep("nanda2023").groups()[0][0]
    assert (nanda.task.p, nanda.model.n_layers, nanda.model.d_model, nanda.model.d_mlp) == (113, 1, 128, 512)
    assert nanda.model.layer_norm is False and nanda.train.batch_size == "full" and nanda.train.steps == 40_000
    assert nanda.train.warmup_from_zero and (nanda.train.beta1, nanda.train.beta2) == (0.9, 0.98)
    power = build_sweep("power2022").groups()[0][0]
    assert (power.task.p, power.model.n_layers, power.train.batch_size, power.train.steps) == (97, 2, "auto", 100_000)
    assert (power.model.block, power.model.init, power.model.pos, power.model.bias, power.task.tokens) == (
        "postnorm", "torch", "sinusoidal", False, 4)
    prieto = build_sweep("prieto2025").groups()
    assert [(g.train.orthograd, g.train.loss, g.train.beta2) for g, _ in prieto] == [
        (False, "softmax", 0.99), (False, "stablemax", 0.999), (True, "softmax", 0.99)]
    g = prieto[0][0]
    assert (g.model.arch, g.model.n_layers, g.model.d_mlp, g.model.bias, g.task.p) == ("mlp", 2, 200, False, 113)
    grokfast = build_sweep("grokfast2024").groups()
    assert [g.train.grokfast for g, _ in grokfast] == ["none", "ema"]
    assert [runs[0].get("hp.wd") for _, runs in grokfast] == [0.0, 0.005]  # the paper's two arms
    g, runs = grokfast[1]
    assert (g.task.op, g.train.optimizer, g.model.n_layers, g.train.batch_size) == ("mul", "adam", 2, 512)
    assert (g.model.block, g.model.init, g.model.act, g.task.tokens, g.task.nonzero_y, g.train.batching) == (
        "ln_residual", "torch", "gelu", 4, True, "epoch")
    assert (runs[0].get("hp.grokfast_alpha"), runs[0].get("hp.grokfast_lamb")) == (0.98, 2.0)
    digits = build_sweep("omnigrok_digits").groups()[0]
    assert (digits[0].task.dataset, digits[0].train.loss, digits[0].model.d_mlp, digits[0].train.batch_size) == (
        "digits", "mse", 200, 200)
    assert [r.get("hp.init_scale") for r in digits[1]] == [8.0, 8.0] and [r.get("hp.wd") for r in digits[1]] == [
        0.01, 0.1]


# Each entry: arguments, a fragment the one-line error must contain.
BAD_INPUTS = [
    (["wdd=0.1"], "did you mean 'wd'"),
    (["wd=abc"], "expected a number"),
    (["wd=0.1.2"], "malformed value"),
    (["wd="], "malformed value"),
    (["wd=[]"], "empty list"),
    (["wd=[0.1,1"], "unbalanced brackets"),
    (["wd=[[0.1]]"], "nested"),
    (["wd=logspce(-3,1,4)"], "did you mean 'logspace'"),
    (["wd=logspace(-3,1)"], "takes 3 arguments"),
    (["wd=logspace(-3,1,0)"], "n=0"),
    (["wd=logspace(a,1,3)"], "not a number"),
    (["seed=range(5,2)"], "range is empty"),
    (["seed=range(0,5,0)"], "step must not be 0"),
    (["wd=-1"], "out of range"),
    (["lr=0"], "out of range"),
    (["frac=1.5"], "strictly between 0 and 1"),
    (["seeds=1e9"], "at most 100,000 values per key"),
    (["seed=range(0,1e9)"], "seed=range(0,1e9): 1,000,000,000 values"),
    (["wd=logspace(-3,1,1000000)"], "at most 100,000 values per key"),
    (["p=1000003"], "at most 4,000,000"),
    (["wd=logspace(-3,1,1000)", "seeds=2000"], "at most 1,000,000 runs"),
    (["wd=1e400"], "wd=1e400: expected a finite number"),
    (["wd=[1,,2]"], "wd=[1,,2]: malformed value"),
    (["seeds=[0,0]"], "appears twice"),
    (["lr=[1e-3,0.001]"], "appears twice"),
    (["frac=0"], "strictly between 0 and 1"),
    (["p=2"], "out of range"),
    (["op=div", "p=91"], "not prime"),
    (["op=addd"], "did you mean 'add'"),
    (["d_model=30", "n_heads=4"], "not divisible"),
    (["steps=0"], "out of range"),
    (["steps=1.5"], "whole number"),
    (["seeds=0"], "seeds=N needs N >= 1"),
    (["layer_norm=maybe"], "true or false"),
    (["batch_size=0"], "'full' or 'auto'"),
    (["batch_size=100000", "p=11"], "larger than the train split"),
    (["wd=0.1", "wd=1"], "given twice"),
    (["seed=1", "seeds=2"], "given twice"),
    (["wd"], "not key=value"),
    (["=3"], "no key"),
    (["wd=nan"], "expected a number"),
    (["wd=1e999"], "finite"),
]


@pytest.mark.parametrize("args, fragment", BAD_INPUTS, ids=[" ".join(a) for a, _ in BAD_INPUTS])
def test_bad_input_is_one_clear_line(args, fragment):
    with pytest.raises(UserError) as e:
        build_sweep(None, args)
    message = str(e.value)
    assert fragment in message and "\n" not in message


def test_bad_config_files(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("wd = [0.1,\n")
    with pytest.raises(UserError, match="not valid TOML"):
        build_sweep(str(bad))
    typo = tmp_path / "typo.toml"
    typo.write_text("weight_decay = 0.1\n")
    with pytest.raises(UserError, match="unknown key 'weight_decay'"):
        build_sweep(str(typo))
    nested = tmp_path / "nested.toml"
    nested.write_text("wd = [[0.1]]\n")
    with pytest.raises(UserError, match="plain value"):
        build_sweep(str(nested))
    with pytest.raises(UserError, match="did you mean 'nanda2023'"):
        build_sweep("nanda2022")

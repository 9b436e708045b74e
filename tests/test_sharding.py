"""The model axis sharded over 4 (forced host) devices gives the same metrics as one device."""

from __future__ import annotations

import pandas as pd
import pytest
from conftest import merged, run_cli

import grokjax


@pytest.mark.slow
def test_four_devices_match_one(tmp_path, tiny):
    # 6 models: padded to 8 on 4 devices. float64: 1- and 4-device programs have other shapes, which round
    # differently in float32.
    args = merged(tiny, ["wd=[0.1,0.3,1]", "seeds=2", "dtype=float64"])
    one, four = tmp_path / "one", tmp_path / "four"
    p1 = run_cli(["sweep", *args, "--out", str(one), "--no-plot", "--quiet"])
    p4 = run_cli(["sweep", *args, "--out", str(four), "--no-plot", "--quiet"],
                 env={"XLA_FLAGS": "--xla_force_host_platform_device_count=4"})
    assert p1.returncode == 0 and p4.returncode == 0, p1.stderr + p4.stderr
    spec = grokjax.load(four).sweep
    assert len(spec["devices"]) == 4
    m1, m4 = grokjax.load(one).metrics, grokjax.load(four).metrics
    assert len(m4) == len(m1) == 6 * 61  # steps 0..59 and the final row
    pd.testing.assert_frame_equal(m1, m4, rtol=1e-10, atol=1e-12)

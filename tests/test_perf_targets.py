"""benchmarks.perf_targets: issue 13's ratios are same-run quotients, the exponents are fitted slopes."""

from __future__ import annotations

import math

import numpy as np
import pytest

from benchmarks import perf_targets as T


@pytest.fixture(scope="module")
def quick():
    return T.targets(quick=True), T.scaling(quick=True)


def test_target_ratios_are_quotients_of_this_runs_medians(quick):
    t, _ = quick
    for g in ("gd_grid_1300", "gd_pow2_4096"):
        h = t["heatmap_sweep"][g]
        assert h["ratio"] == pytest.approx(h["seconds"]["sweep"] / h["seconds"]["eigh_floor"], rel=1e-12)
    for v in t["newton_vs_loop"].values():
        assert v["ratio"] == pytest.approx(v["seconds"]["loop"] / v["seconds"]["auto"], rel=1e-12)
        assert v["accuracy"]["auto_vs_loop"] <= 1e-12
    ve = t["verify"]
    assert ve["ratio"] == pytest.approx(ve["seconds"]["verify_model"] / ve["seconds"]["forward"], rel=1e-12)
    assert ve["ratio_alpha_ignore"] == pytest.approx(ve["seconds"]["verify_model"] / ve["seconds"]["forward_alpha_ignore"], rel=1e-12)
    assert ve["verify_passed"]
    assert max(t["heatmap_sweep"]["accuracy"].values()) <= 1e-10
    assert set(t["met"].values()) <= {True, False} and len(t["met"]) == 5
    md = T.markdown(*quick)
    assert "eigh floor" in md and "Measured cost exponents" in md


def test_exponents_are_fitted_slopes(quick):
    _, sc = quick
    for name, row in sc["costs"].items():
        for var in ("B", "n", "d", "k"):
            if var not in row:
                continue
            f = row[var]
            assert len(f["sizes"]) == len(f["seconds"]) >= 2 and all(s > 0 for s in f["seconds"])
            want = np.polyfit(np.log(f["sizes"]), np.log(f["seconds"]), 1)[0]
            assert f["exponent"] == pytest.approx(want, rel=1e-9) and math.isfinite(f["exponent"]), (name, var)


def test_interleaved_medians():
    calls = []
    med = T.interleaved([lambda: calls.append("a"), lambda: calls.append("b")], 3)
    assert calls == ["a", "b"] * 3 and len(med) == 2 and all(m >= 0 for m in med)

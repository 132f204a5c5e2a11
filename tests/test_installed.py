"""Installed use: shipped checkpoints by name, LICENSE and SPDX field, --help defaults,
progress output on stderr, strict JSON."""

import json
import math
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch

import benchmarks
from construct import CheckpointError, build_newton_transformer, load_model
from construct.checkpoint import dumps_strict

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_checkpoints_load_by_name(tmp_path, monkeypatch):
    names = benchmarks.checkpoint_names()
    assert {"cpu", "cpu-kappa100", "d10", "lstm-cpu"} <= set(names)
    monkeypatch.chdir(tmp_path)  # no folder called "cpu" here: the name means the shipped one
    a, b = benchmarks.checkpoint("cpu"), load_model("cpu")
    c = load_model(ROOT / "benchmarks" / "checkpoints" / "cpu")
    X, y = torch.randn(2, 11, 5), torch.randn(2, 11)
    assert torch.equal(a.predict_all(X, y), c.predict_all(X, y)) and torch.equal(b.predict_all(X, y), c.predict_all(X, y))
    with pytest.raises(CheckpointError, match="shipped"):
        benchmarks.checkpoint("nope")
    with pytest.raises(CheckpointError, match="shipped checkpoints load by name"):
        load_model("nope")


def test_eval_only_takes_a_name_and_reports_progress(tmp_path, monkeypatch, capsys):
    from benchmarks.train import main

    monkeypatch.chdir(tmp_path)
    assert main(["--preset", "cpu", "--out", "cpu", "--eval-only", "--eval-prompts", "50"]) == 0
    out, err = capsys.readouterr()
    res = json.loads(out)  # stdout is the JSON result only
    assert res["prompts"] == 50 and res["model"]["last"] < res["zero"]["last"]
    assert "eval-only: loading cpu" in err and "done in" in err


def test_verify_cli_reports_progress_on_stderr(tmp_path, capsys):
    from verify.__main__ import main

    build_newton_transformer(2, 2, 0.05).save(tmp_path / "m")
    assert main([str(tmp_path / "m"), "--prompts", "2", "--n", "6", "--json"]) == 0
    out, err = capsys.readouterr()
    json.loads(out)  # --json output stays pure JSON
    assert "verify [" in err and "loading" in err and "done" in err


@pytest.mark.parametrize("module, option, default", [
    ("construct", ["demo"], "(default: 20)"),
    ("benchmarks.run", [], "(default: 0)"),
    ("benchmarks.train", [], "(default: 10000)"),
    ("benchmarks.width", [], "default"),
    ("benchmarks.perf", [], "default"),
    ("verify", [], "(default 8)"),
])
def test_help_shows_defaults(module, option, default, capsys):
    import importlib

    mod = importlib.import_module(module + ".__main__" if module in ("construct", "verify") else module)
    fn = getattr(mod, "run", None) if module == "benchmarks.run" else mod.main
    with pytest.raises(SystemExit):
        fn(option + ["--help"])
    assert default in capsys.readouterr().out


def test_strict_json():
    text = dumps_strict({"a": float("nan"), "b": [float("inf"), 1.5, torch.tensor(2.0)]})
    assert json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON token {c}")) == \
        {"a": None, "b": [None, 1.5, 2.0]}
    assert "NaN" not in text and "Infinity" not in text


def test_license_file_and_spdx_field():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert meta["license"] == "MIT" and meta["license-files"] == ["LICENSE"]
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")


@pytest.mark.slow
def test_wheel_ships_checkpoints_that_load_by_name(tmp_path):
    """Build the wheel, install it in a fresh venv (torch from the system), load 'cpu' by name."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "w"), str(ROOT)], check=True)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    py = venv / "bin" / "python"
    wheel = next((tmp_path / "w").glob("newton_icl-*.whl"))
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall", str(wheel)], check=True)
    code = ("import benchmarks, construct; m = benchmarks.checkpoint('cpu'); "
            f"assert all(m.__file__.startswith({str(venv)!r}) for m in (benchmarks, construct)), construct.__file__; "
            "print(type(construct.load_model('d10')).__name__)")
    r = subprocess.run([str(py), "-c", code], cwd=tmp_path, capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "GargRegressor"

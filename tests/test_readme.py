"""The README's Python examples run as written, and their shown output is what they print."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _blocks():
    t = README.read_text()
    out = []
    for m in re.finditer(r"```python\n(.*?)```", t, re.S):
        line = t[: m.start()].count("\n") + 1
        rest = t[m.end():]
        shown = re.match(r"\s*prints\s*```text\n(.*?)```", rest, re.S)  # a "prints" block right after
        out.append(pytest.param(m.group(1), shown.group(1) if shown else None, id=f"README.md:{line}"))
    return out


@pytest.mark.parametrize("code, shown", _blocks())
def test_readme_python_example_runs_and_prints_what_is_shown(code, shown, monkeypatch, tmp_path):
    if "construct.export" in code:
        pytest.importorskip("transformer_lens")
        pytest.importorskip("transformers")
    monkeypatch.chdir(README.parent)  # examples load benchmarks/checkpoints/... relative to the repo
    code = code.replace('"/tmp/', f'"{tmp_path}/')
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        exec(compile(code, str(README), "exec"), {"__name__": "readme_example"})
    printed = [ln.rstrip() for ln in buf.getvalue().splitlines()]
    if shown is not None:  # the text block after "prints" is the whole output
        assert printed == [ln.rstrip() for ln in shown.strip("\n").splitlines()]
    # "# <output>" comment lines that start like a printed line must match it (the rest is commentary)
    comments = [ln.split("# ", 1)[1] for ln in code.splitlines() if ln.startswith("# ")]
    for p in printed:
        head = p.split(" ")[0]
        claimed = [c for c in comments if c.split(" ")[0] == head and c.startswith(head + " ")]
        if claimed:
            assert any(_same_output(p, c) for c in claimed), (p, claimed)


def _same_output(printed: str, comment: str) -> bool:
    """``comment`` starts with ``printed``'s words; numbers agree to 1e-7 relative.

    The TransformerLens example prints 8 decimals of a compiled softmax/LayerNorm network, whose
    round-off is about 1e-9 of its residual scale (~1e5): the last printed digit moves with the CPU's BLAS.
    """
    pw, cw = printed.split(), comment.split()
    if len(cw) < len(pw):
        return False
    for a, b in zip(pw, cw):
        try:
            x, y = float(a), float(b)
        except ValueError:
            if a != b:
                return False
            continue
        if abs(x - y) > 1e-7 * max(abs(x), abs(y), 1e-300):
            return False
    return True


def test_readme_has_python_examples():
    assert len(_blocks()) >= 3


def test_readme_worked_example_is_the_real_demo_output():
    """The "Real output" block under "## Worked example" is what `python -m construct demo` prints today."""
    import subprocess
    import sys

    t = README.read_text()
    block = re.search(r"```(?:text)?\n(.*?)```", t[t.index("## Worked example"):], re.S).group(1)
    cmd, *shown = block.rstrip("\n").splitlines()
    assert cmd == "$ python -m construct demo"
    r = subprocess.run([sys.executable, "-m", "construct", "demo"], capture_output=True, text=True,
                       cwd=README.parent, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert _portable(r.stdout.rstrip("\n").splitlines()) == _portable(shown)


def _portable(lines):
    """The output up to round-off: errors below 1e-13 read "<round-off>" and long floats keep 10 digits
    (their last digits depend on the BLAS's summation order, so on the CPU)."""
    def num(m):
        v = float(m.group(0))
        if v != 0 and abs(v) < 1e-13:
            return "<round-off>"
        return f"{v:.9e}" if len(m.group(0).split("e")[0].lstrip("-+")) > 12 else m.group(0)
    return [re.sub(r"[-+]?\d\.\d+e[-+]\d+", num, ln.rstrip()) for ln in lines]

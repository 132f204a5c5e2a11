"""Time ``python -m benchmarks.run --quick`` at an older commit against the working tree, in one run.

    python -m benchmarks.runner_speed --old 6ca5bab --new b9669eb --repeats 3 --only a,b,c,d,e,f,g

Extracts ``--old`` into a temporary folder (``git archive``), then runs the two runners alternately
(old, new, old, new, …) so that both see the same machine load, each in a fresh process with
``--no-progress`` into its own output folder.  Reports the median wall time and CPU time (user +
system of the child) of each, their ratio, the median wall seconds of each experiment and of the
rest of the process, and whether every output file is identical apart from timing fields (JSON
keys naming seconds/timings/load, the CSV/markdown lines that carry them); figures whose pixels
changed are listed apart from the data.
Nothing here is imported by the runner; it is a measuring tool for issue 13.
"""

from __future__ import annotations

import argparse

from construct.cli import HelpFormatter
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from construct.checkpoint import dumps_strict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_TIMING_KEY = re.compile(r"(second|_s$|^wall|timings|loadavg|load_average|elapsed|command|^jobs$)", re.I)  # jobs: processes used


def _strip(obj):
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if not _TIMING_KEY.search(k)}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def compare(a: Path, b: Path, skip: tuple[str, ...] = ("g_perf/", "f_width/quick/", "summary.md")) -> dict:
    """Files of two output folders: identical bytes, identical apart from timing fields, or different.

    ``skip``: outputs that are timings by nature (the performance table, training logs with wall
    seconds, the summary's copy of them); summary.json is compared with its timing keys and the
    skipped experiments' sections removed.  Figures (``*.png``) whose bytes differ are listed under
    ``figures_different``, not ``different``: issue 13 lets the drawing change, never the data
    (JSON, CSV) beside it.
    """
    fa = {str(p.relative_to(a)) for p in a.rglob("*") if p.is_file()}
    fb = {str(p.relative_to(b)) for p in b.rglob("*") if p.is_file()}
    res = {"only_old": sorted(fa - fb), "only_new": sorted(fb - fa), "identical": 0, "identical_but_timings": 0,
           "different": [], "figures_different": [], "skipped": 0}
    for f in sorted(fa & fb):
        if f.startswith(skip):
            res["skipped"] += 1
            continue
        x, y = (a / f).read_bytes(), (b / f).read_bytes()
        if x == y:
            res["identical"] += 1
        elif f.endswith(".png"):
            res["figures_different"].append(f)
        elif f.endswith(".json") and _data(json.loads(x), f, skip) == _data(json.loads(y), f, skip):
            res["identical_but_timings"] += 1
        else:
            res["different"].append(f)
    return res


def _data(obj, name: str, skip: tuple[str, ...]):
    """A JSON output without its timing fields (and, for summary.json, without the skipped experiments)."""
    obj = _strip(obj)
    if name == "summary.json" and isinstance(obj.get("experiments"), dict):
        obj["experiments"] = {k: v for k, v in obj["experiments"].items() if not f"{k}/".startswith(skip)}
    return obj


def _run(src: Path, out: Path, args: list[str]) -> tuple[float, float]:
    env = dict(os.environ, PYTHONPATH=str(src))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "benchmarks.run", "--quick", "--no-progress", "--out", str(out), *args],
                   cwd=src, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def _parts(out: Path, wall: float) -> dict[str, float]:
    """Wall seconds of each experiment (the run's summary.json), of the runner's own timed body
    (``wall_s``: loading the checkpoints, the experiments, the summary) and of everything else in
    the process (interpreter start, imports, exit).  With ``--jobs`` > 1 the experiments overlap,
    so their seconds add up to more than ``wall_s``."""
    meta = json.loads((out / "summary.json").read_text())["meta"]
    return {**meta["experiment_seconds"], "runner wall_s": meta["wall_s"], "start-up and exit": wall - meta["wall_s"]}


def _medians(runs: list[dict[str, float]]) -> dict[str, float]:
    keys = [k for k in runs[0] if all(k in r for r in runs)]
    return {k: sorted(r[k] for r in runs)[len(runs) // 2] for k in keys}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(formatter_class=HelpFormatter, prog="python -m benchmarks.runner_speed", description=__doc__.split("\n\n")[0])
    ap.add_argument("--old", required=True, help="git revision of the old runner")
    ap.add_argument("--new", default=None, help="git revision of the new runner (default: this working tree)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", default=None, help="experiments for both runners (default: all of the old one's)")
    args = ap.parse_args(argv)
    if args.repeats < 1:
        ap.error("--repeats must be >= 1")
    extra = ["--only", args.only] if args.only else []
    tmp = Path(tempfile.mkdtemp(prefix="runner-speed-"))
    old_src = tmp / "old"
    try:
        new_src = ROOT if args.new is None else tmp / "new"
        for rev, dest in ((args.old, old_src), (args.new, new_src)):
            if rev is None:
                continue
            dest.mkdir()
            archive = subprocess.run(["git", "archive", rev], cwd=ROOT, check=True, capture_output=True).stdout
            subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)  # no worktree registered
        times: dict[str, list[tuple[float, float]]] = {"old": [], "new": []}
        parts: dict[str, list[dict[str, float]]] = {"old": [], "new": []}
        for i in range(args.repeats):
            for name, src in (("old", old_src), ("new", new_src)):
                times[name].append(_run(src, tmp / f"{name}{i}", extra))
                parts[name].append(_parts(tmp / f"{name}{i}", times[name][-1][0]))
        med = {k: (sorted(w for w, _ in v)[len(v) // 2], sorted(c for _, c in v)[len(v) // 2]) for k, v in times.items()}
        cmp = compare(tmp / "old0", tmp / "new0")
        res = {"old": args.old, "new": args.new or "working tree", "repeats": args.repeats, "only": args.only, "times_wall_cpu_s": times,
               "median_wall_s": {k: v[0] for k, v in med.items()}, "median_cpu_s": {k: v[1] for k, v in med.items()},
               "speedup_wall": med["old"][0] / med["new"][0], "speedup_cpu": med["old"][1] / med["new"][1],
               "median_wall_s_by_part": {k: _medians(v) for k, v in parts.items()},
               "outputs": cmp, "load_average": os.getloadavg()}
        print(dumps_strict(res, indent=1))
        return 0 if not cmp["different"] and not cmp["only_old"] else 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

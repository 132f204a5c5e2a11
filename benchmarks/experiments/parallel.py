"""Running the experiments in several processes: ``python -m benchmarks.run --jobs N``.

The experiments are independent computations on seeded data, so they can run side by side.  With
N > 1 the runner forks N − 1 worker processes after it has loaded the checkpoints (the workers
inherit the loaded models, the imports and the context), and every process takes the next *unit*
from one shared queue until none is left:

* a unit is one experiment, or every experiment of one ``group`` (registry hint) in registration
  order, so that data they share through the context (``ctx.suite(1.0)``) is computed once;
* units start heaviest first (sum of the registry's ``cost`` hints), which balances the processes;
  the main process takes the heaviest before it forks;
* experiments registered ``alone`` (the performance table g) run afterwards in the main process,
  with nothing else running, so that their timings are not disturbed.  The runner lifts this in
  ``--quick``, where g's workloads are too small for its timings to mean anything (it is a smoke
  test of the code paths there), and g takes its turn in the queue like the others.

Workers are forked only where that is safe (:func:`usable_jobs`): with torch at more than one
thread (``--threads 0`` or ``2``) a forked worker can hang in OpenMP, so the experiments then run
in one process, with a note in the summary.

What an experiment leaves in the context (checks, files, notes, non-finite numbers, the suites'
timings) is recorded per experiment and put back together in registration order, so that
summary.json and summary.md are laid out exactly as in a one-process run.  Every data file is the
same whichever process writes it: tests/test_benchmarks.py compares ``--jobs 1`` with ``--jobs 2``
byte for byte.  What differs are the timings, and a worker's progress reaches the bar only when it
finishes an experiment.

Cost: the wall time is about max(sum of the units each process ran) + the ``alone`` experiments,
instead of their total; the CPU time grows by whatever shared data two processes both compute (the
κ = 1 suite when ``m`` and the ``suite-kappa1`` group land in different processes: about 0.5 s in
``--quick``).  Measured numbers are in the README ("g. Speed").
"""

from __future__ import annotations

import multiprocessing
import pickle
import queue
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Callable

import torch

from benchmarks.experiments.registry import EXPERIMENTS, Experiment

SuiteKey = tuple[str, float]


@dataclass
class Outcome:
    """One experiment's result and what it added to the context, for the merge."""

    key: str
    result: dict
    seconds: float
    checks: list[tuple[str, dict]] = field(default_factory=list)   # added or replaced, in order
    files: dict[str, list[str]] = field(default_factory=dict)      # appended per folder
    notes: list[str] = field(default_factory=list)
    nonfinite: list[str] = field(default_factory=list)
    suites: dict[SuiteKey, tuple[dict, int]] = field(default_factory=dict)  # created: (timings, n_layers)
    asked: list[SuiteKey] = field(default_factory=list)            # suites it asked the context for


@dataclass(frozen=True)
class SuiteStats:
    """What the runner's end-of-run probe check reads from a suite (which may live in a worker)."""

    key: SuiteKey
    timings: dict
    n_layers: int


def plan(keys: list[str], alone: bool = True) -> tuple[list[list[str]], list[str]]:
    """(units, alone): the units of ``keys`` heaviest first, and the ``alone`` experiments in order
    (none when ``alone`` is False: they are units like the others then).

    Ties keep registration order; each unit lists its experiments in registration order.
    """
    order = {k: i for i, k in enumerate(EXPERIMENTS)}
    keys = sorted(keys, key=order.__getitem__)
    units: dict[str, list[str]] = {}
    for k in keys:
        e = EXPERIMENTS[k]
        if not (alone and e.alone):
            units.setdefault(f"group:{e.group}" if e.group else f"key:{k}", []).append(k)
    ranked = sorted(units.values(), key=lambda u: (-sum(EXPERIMENTS[k].cost for k in u), order[u[0]]))
    return ranked, [k for k in keys if alone and EXPERIMENTS[k].alone]


def usable_jobs(jobs: int, units: int | None = None) -> tuple[int, str | None]:
    """(processes, why fewer): ``jobs`` where forking is possible and safe here, else 1 and the reason;
    never more than ``units``, the units of work there are (:func:`plan`), when given.

    Forking needs ``fork`` (POSIX) and torch at one thread.  Torch's CPU kernels run on GNU OpenMP,
    which is not fork-safe: a forked process that enters a parallel region after its parent ran one
    waits forever (measured with torch 2.13: parent and worker at 2 threads, one 2000×2000 ``exp``
    each; tests/test_benchmarks.py).  At one thread torch enters no parallel region.
    """
    if jobs <= 1:
        return jobs, None
    if "fork" not in multiprocessing.get_all_start_methods():
        return 1, f"--jobs {jobs}: this platform cannot fork; the experiments ran in one process"
    if (threads := torch.get_num_threads()) > 1:
        return 1, (f"--jobs {jobs}: torch runs {threads} threads, and its OpenMP is not fork-safe (a forked "
                   "worker can hang); the experiments ran in one process (--threads 1 runs them side by side)")
    return (jobs if units is None else max(1, min(jobs, units))), None


def run_one(ctx, e: Experiment) -> Outcome:
    """Run ``e`` on ``ctx`` and record what it added to the context."""
    checks = dict(ctx.checks)
    files = {k: len(v) for k, v in ctx.files.items()}
    n_bad = len(ctx.nonfinite)
    suites, n_asked = set(ctx._suites), len(ctx.suites_asked)
    ctx.current = e.folder
    # every note the experiment makes, also one that an experiment before it in this process made
    # (ctx.note keeps the first): its place in the merged list is that of the first experiment in
    # registration order to make it, as in a one-process run, whichever ran first here
    before, ctx.notes = ctx.notes, []
    t0 = time.perf_counter()
    try:
        result = e.fn(ctx) or {}
    finally:
        own, ctx.notes = ctx.notes, before
        for msg in own:
            ctx.note(msg)
    out = Outcome(e.key, result, time.perf_counter() - t0)
    out.checks = [(k, v) for k, v in ctx.checks.items() if checks.get(k) is not v]
    out.files = {k: v[files.get(k, 0):] for k, v in ctx.files.items() if len(v) > files.get(k, 0)}
    out.notes, out.nonfinite = own, ctx.nonfinite[n_bad:]
    out.suites = {k: (dict(s.timings), s.n_layers) for k, s in ctx._suites.items() if k not in suites}
    out.asked = ctx.suites_asked[n_asked:]
    return out


def _serial(ctx, keys: list[str], on_start: Callable[[Experiment], None], on_done: Callable[[Outcome], None]):
    """Run ``keys`` here, one after another: {key: Outcome}."""
    outcomes = {}
    for k in keys:
        on_start(EXPERIMENTS[k])
        outcomes[k] = run_one(ctx, EXPERIMENTS[k])
        on_done(outcomes[k])
    return outcomes


def _send(conn, kind: str, payload) -> None:
    """One message to the main process, by value.  (``conn.send`` would pass tensors through
    torch's shared-memory reducer, whose file descriptors vanish when the worker exits.)  The
    bytes go through a pipe between a process and its own fork and are never stored."""
    conn.send_bytes(pickle.dumps((kind, payload), protocol=pickle.HIGHEST_PROTOCOL))


def _worker(ctx, units: list[list[str]], take: Callable[[], int | None], conn, threads: int) -> None:
    """A forked process: run units from the shared queue, send each outcome to the main process."""
    ctx._progress = None
    torch.set_num_threads(threads)
    key = None
    try:
        with torch.no_grad():
            while (i := take()) is not None:
                for key in units[i]:
                    _send(conn, "done", run_one(ctx, EXPERIMENTS[key]))
        _send(conn, "end", None)
    except BaseException:  # noqa: BLE001 -- reported to the main process, which raises
        _send(conn, "error", (key, traceback.format_exc()))
    finally:
        conn.close()


class WorkerError(RuntimeError):
    """An experiment failed (or its process died) in a ``--jobs`` worker process."""


def run_experiments(ctx, keys: list[str], jobs: int = 1, alone: bool = True,
                    on_start: Callable[[Experiment], None] = lambda e: None,
                    on_done: Callable[[Outcome], None] = lambda o: None) -> tuple[dict[str, Outcome], list[SuiteStats]]:
    """Run ``keys`` on ``ctx`` in ``jobs`` processes: ({key: Outcome} in registration order, the suites).

    ``jobs == 1`` (or fewer :func:`usable_jobs`: no ``fork``, or torch at more than one thread)
    runs everything here in registration order.
    Otherwise see the module docstring (``alone=False`` schedules the ``alone`` experiments like
    the others); ``ctx`` ends up with the checks, files, notes and
    non-finite lists of all experiments, in registration order.  ``on_start`` / ``on_done`` are
    called in the main process (for the progress bar).
    """
    order = {k: i for i, k in enumerate(EXPERIMENTS)}
    keys = sorted(keys, key=order.__getitem__)
    units, last = plan(keys, alone)
    jobs, why = usable_jobs(jobs, len(units))
    if why:
        ctx.note(why)
    if jobs <= 1:
        outcomes = _serial(ctx, keys, on_start, on_done)
        stats = [SuiteStats(k, s.timings, s.n_layers) for k, s in ctx._suites.items()]
        return outcomes, stats

    base = (dict(ctx.checks), {k: list(v) for k, v in ctx.files.items()}, list(ctx.notes), list(ctx.nonfinite))
    mp = multiprocessing.get_context("fork")
    counter = mp.Value("i", 0)

    def take() -> int | None:
        with counter.get_lock():
            i = counter.value
            counter.value += 1
        return i if i < len(units) else None

    threads = torch.get_num_threads()
    procs, conns = [], []
    outcomes: dict[str, Outcome] = {}
    inbox: queue.Queue = queue.Queue()  # (kind, payload) from every worker, filled by reader threads
    live = 0  # workers that have not sent "end" or "error" yet

    def reader(c) -> None:
        """Drain one worker's pipe as messages arrive, so that a worker never waits on a full pipe
        while the main process runs an experiment of its own."""
        while True:
            try:
                msg = pickle.loads(c.recv_bytes())
            except (EOFError, OSError):
                msg = ("error", (None, "the worker process exited without reporting (killed?)"))
            inbox.put(msg)
            if msg[0] != "done":
                return

    def collect(block: bool) -> None:
        nonlocal live
        while live:
            try:
                kind, payload = inbox.get(block=block)
            except queue.Empty:
                return
            if kind == "done":
                outcomes[payload.key] = payload
                on_done(payload)
                continue
            live -= 1
            if kind == "error":
                key, tb = payload
                missing = [k for u in units for k in u if k not in outcomes]
                what = f"experiment {key!r} failed" if key else f"one of the experiments {missing} failed"
                raise WorkerError(f"{what} in a --jobs worker process (rerun with --jobs 1 --only "
                                  f"{key or ','.join(missing)} to debug it in one process):\n{tb}")

    # the main process takes its first unit (the heaviest) before any fork, so that which process
    # runs it does not depend on how soon a new worker is scheduled
    i = take()
    try:  # from the first fork on: whatever raises here, the finally ends the workers started so far
        for _ in range(jobs - 1):
            recv, send = mp.Pipe(duplex=False)
            p = mp.Process(target=_worker, args=(ctx, units, take, send, threads), daemon=False)
            conns.append(recv)
            p.start()
            procs.append(p)
            live += 1
            send.close()  # before the next fork: the next worker must not hold this one's write end
        for c in conns:  # threads only once every fork is done (a fork copies no thread, only its locks)
            threading.Thread(target=reader, args=(c,), daemon=True).start()
        while i is not None:
            outcomes.update(_serial(ctx, units[i], on_start, on_done))
            collect(block=False)
            i = take()
        collect(block=True)
    finally:
        for p in procs:
            if p.is_alive() and live:
                p.terminate()
            p.join()
        for c in conns:
            c.close()
    outcomes.update(_serial(ctx, last, on_start, on_done))
    return _merge(ctx, keys, outcomes, base)


def _merge(ctx, keys: list[str], outcomes: dict[str, Outcome], base) -> tuple[dict[str, Outcome], list[SuiteStats]]:
    """Lay the context out as a one-process run would have: every experiment's additions in
    registration order; suites in the order of the first experiment asking for them."""
    ctx.checks, ctx.files, ctx.notes, ctx.nonfinite = base[0], base[1], base[2], base[3]
    first: dict[SuiteKey, int] = {}
    made: dict[SuiteKey, tuple[dict, int]] = {}
    for i, key in enumerate(keys):
        o = outcomes[key]
        ctx.checks.update(o.checks)
        for folder, names in o.files.items():
            ctx.files.setdefault(folder, []).extend(names)
        for msg in o.notes:
            ctx.note(msg)
        ctx.nonfinite += o.nonfinite
        for k in o.asked:
            first.setdefault(k, i)
        for k, v in o.suites.items():
            made.setdefault(k, v)
    stats = [SuiteStats(k, *made[k]) for k in sorted(made, key=lambda k: first.get(k, len(keys)))]
    return {k: outcomes[k] for k in keys}, stats


__all__ = ["Outcome", "SuiteStats", "WorkerError", "plan", "run_experiments", "run_one", "usable_jobs"]

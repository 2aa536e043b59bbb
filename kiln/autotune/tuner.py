"""The tuning loop: tasks, a task scheduler, search, measurement and the database together.

``tune(model, target, trials, db)`` (and ``kiln tune``) extracts the model's tasks, then
repeatedly lets the task scheduler pick a task, asks the search for a batch of
candidates, measures them in separate processes, appends the batch to the database
(durably, before the next batch) and teaches the cost model. ``trials`` is the budget of
measurements for the model, counting those already in the database: rerunning after a
crash or ``kill -9`` resumes where the database ends.

Task scheduler (a simplified form of Ansor's gradient scheduler): every task gets one
batch first, heaviest first; after that the next batch goes to the task whose estimated
latency reduction is largest -- weight x current best latency x its recent relative
improvement (at least 1/(rounds+1), so no task is starved for ever).

Verification (``verify_top``): the fastest of hundreds of noisy measurements is partly the
luckiest (the winner's curse), so at the end of a run each task's ``verify_top`` fastest
records are re-timed beside the default schedule in interleaved rounds, and the verdict --
a record only when it beats the default by more than ``VERIFY_MARGIN`` -- is what the
compiler applies. These re-timings are not trials of the budget.
"""
from __future__ import annotations

import math
import random
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from kiln.autotune.cost_model import latencies_of, load_cost_model
from kiln.autotune.database import Database
from kiln.autotune.measure import MeasureOptions, Measurer, default_schedule, schedule_of
from kiln.autotune.search import EvolutionarySearch, RandomSearch
from kiln.autotune.space import Candidate, DesignSpace, canonical
from kiln.autotune.tasks import Task, extract_tasks
from kiln.errors import KilnError, TuningError, TuningWarning

SEARCHES = {"evolutionary": EvolutionarySearch, "random": RandomSearch}
VERIFY_MARGIN = 0.02  # a gain within the machine's run-to-run noise is no reason to leave the default


@dataclass
class TaskState:
    task: Task
    space: DesignSpace
    search: EvolutionarySearch
    measured: set = field(default_factory=set)
    results: list = field(default_factory=list)   # (decisions, latency or None)
    default_latency: float | None = None           # the untuned kernel as first measured
    default_retimed: float | None = None           # ... and re-timed beside the records (verify)
    rounds: int = 0
    history: list = field(default_factory=list)   # best latency after each round
    verdict: float | None = None                  # latency of the verified choice (verify)
    done: bool = False
    failed: str = ""

    @property
    def trials(self) -> int:
        return len(self.results)

    @property
    def best(self) -> float | None:
        ok = [lat for _, lat in self.results if lat is not None]
        return min(ok) if ok else None

    @property
    def current(self) -> float | None:
        """The latency the compiled model gets: the verified choice, else the best record,
        else the untuned kernel."""
        if self.verdict is not None:
            return self.verdict
        b = self.best
        return b if b is not None else self.default_latency

    @property
    def reference(self) -> float | None:
        """The untuned kernel's latency to compare with: re-timed in the same interleaved
        rounds as the verdict when verification ran (a first measurement alone can be far
        off: 0.73 ms for a kernel that re-timed at 0.026 ms), else as first measured."""
        return self.default_retimed if self.default_retimed is not None else self.default_latency

    def best_decisions(self) -> list[dict]:
        ok = sorted((lat, canonical(d), d) for d, lat in self.results if lat is not None)
        return [d for _, _, d in ok]


def pick_task(states: list[TaskState]) -> TaskState | None:
    alive = [s for s in states if not s.done]
    if not alive:
        return None
    fresh = [s for s in alive if s.rounds == 0]
    if fresh:
        return fresh[0]

    def gain(s: TaskState) -> float:
        cur = s.current or 0.0
        h = s.history
        recent = (h[-2] - h[-1]) / h[-2] if len(h) >= 2 and h[-2] else 0.0
        return s.task.weight * cur * max(recent, 1.0 / (1 + s.rounds))

    return max(alive, key=gain)


def estimated_latency(states: list[TaskState]) -> float:
    """Sum over tasks of weight x latency: the tuned part of one inference."""
    return sum(s.task.weight * (s.current or 0.0) for s in states if not s.failed)


@dataclass
class TuneResult:
    db: Path
    tasks: list[dict]
    curve: list[tuple[int, float]]   # (trials so far, estimated latency of the tuned kernels in s)
    trials: int
    untuned_latency: float
    tuned_latency: float

    def summary(self) -> str:
        speed = self.untuned_latency / self.tuned_latency if self.tuned_latency else float("nan")
        return (f"{len(self.tasks)} tasks, {self.trials} trials; tuned kernels {self.tuned_latency * 1e3:.3f} ms "
                f"per inference vs {self.untuned_latency * 1e3:.3f} ms untuned ({speed:.2f}x); database {self.db}")


def task_rows(states: list[TaskState]) -> list[dict]:
    rows = []
    for s in states:
        best, now = s.best, s.current
        rows.append({"task": s.task.name, "key": s.task.key, "weight": s.task.weight, "flops": s.task.flops,
                     "trials": s.trials, "best_latency": best, "latency": now, "default_latency": s.reference,
                     "best_gflops": s.task.flops / now / 1e9 if now else None,
                     "failed": s.failed})
    return rows


def tune(model, target="host", trials: int = 64, db="tuning", *, cost_model="xgb", search: str = "evolutionary",
         batch_size: int = 8, seed: int = 0, measure: MeasureOptions | None = None, progress=None,
         curve: str | Path | None = None, input_shapes=None, example_inputs=None,
         tasks: list[Task] | None = None, population: int = 64, generations: int = 3,
         default_first: bool = True, verify_top: int = 4, verify_rounds: int = 5) -> TuneResult:
    """Tune ``model`` for ``target`` with ``trials`` measurements in all; results go to ``db``.

    ``progress``: a callable ``(states, total_trials, budget)`` called after every batch
    (the CLI passes a live ``rich`` table). ``curve``: write the tuning curve to this PNG.
    ``default_first``: the evolutionary search measures the default rules' schedule as its
    first trial of each task (one trial of the budget; see search.py). ``verify_top``: how
    many of each task's fastest records are re-timed beside the default at the end
    (``verify_rounds`` interleaved rounds; 0 skips verification, and the compiler then
    applies the fastest record as measured).
    """
    if not isinstance(trials, int) or trials < 0:
        raise TuningError(f"trials must be a non-negative integer, got {trials!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise TuningError(f"batch_size must be a positive integer, got {batch_size!r}")
    if search not in SEARCHES:
        raise TuningError(f"unknown search {search!r}; expected one of {', '.join(SEARCHES)}")
    if not isinstance(verify_top, int) or verify_top < 0:
        raise TuningError(f"verify_top must be a non-negative integer, got {verify_top!r}")
    if not isinstance(verify_rounds, int) or verify_rounds < 1:
        raise TuningError(f"verify_rounds must be a positive integer, got {verify_rounds!r}")
    from kiln.targets import get_target

    target_impl = get_target(target)
    if target_impl.name != "host":
        raise TuningError(f"tuning measures kernels on this machine; target {target_impl} cannot be tuned yet "
                          "(tune --target host)")
    target_name = str(target_impl)
    if tasks is None:
        tasks = extract_tasks(model, target_impl, input_shapes=input_shapes, example_inputs=example_inputs)
    database = Database(db)
    costs = load_cost_model(cost_model, seed=seed)
    rng = random.Random(seed)
    states = []
    for t in tasks:
        database.commit_workload(t)
        space = DesignSpace(t.func, t.stages, t.caps)
        kwargs = ({"population": population, "generations": generations, "default_first": default_first}
                  if search == "evolutionary" else {})
        st = TaskState(t, space, SEARCHES[search](space, costs, seed=rng.randrange(1 << 30), **kwargs))
        for r in database.records(t.key, target_name):  # resume: what earlier runs measured counts
            st.measured.add(canonical(r["decisions"]))
            st.results.append((r["decisions"], r["latency"]))
        if st.results:
            st.rounds = math.ceil(len(st.results) / batch_size)
            st.history.append(st.best or math.inf)
            _warm_start(costs, st)
        states.append(st)

    # builds live under the database, so the next run clears what a killed run left behind
    scratch = Path(db) / "build"
    shutil.rmtree(scratch, ignore_errors=True)
    measurer = Measurer(measure, workdir=str(scratch))
    total = sum(s.trials for s in states)
    curve_points: list[tuple[int, float]] = []
    try:
        for s in states:
            try:
                _, s.default_latency = measurer.reference(s.task)
                if database.untuned(s.task.key, target_name) is None:
                    # the default schedule competes with the search's records in `best`
                    database.commit([{"key": s.task.key, "target": target_name, "decisions": {},
                                      "trace": default_schedule(s.task).trace, "latency": s.default_latency,
                                      "error": None, "untuned": True}])
            except TuningError as e:
                s.failed, s.done = str(e), True
                warnings.warn(f"skipping task {s.task.name}: {e}", TuningWarning, stacklevel=2)
        curve_points.append((total, estimated_latency(states)))
        if progress:
            progress(states, total, trials)
        while total < trials:
            s = pick_task(states)
            if s is None:
                break
            n = min(batch_size, trials - total)
            batch = s.search.next_batch(s.task, s.measured, s.best_decisions(), n)
            if not batch:
                s.done = True  # the design space is exhausted
                continue
            # a candidate that would beat the task's best is re-run before its time counts
            results = measurer.measure(s.task, [c.func for c in batch], confirm_below=s.best)
            now = time.time()
            database.commit([{"key": s.task.key, "target": target_name, "decisions": c.decisions,
                              "trace": c.trace, "latency": r.latency, "error": r.error,
                              "detail": r.detail[:300], "costs": r.costs, "time": now,
                              **({"runs": r.runs} if r.runs else {})}
                             for c, r in zip(batch, results)])
            for c, r in zip(batch, results):
                s.measured.add(c.key)
                s.results.append((c.decisions, r.latency))
            costs.update(s.task, batch, results)
            s.rounds += 1
            s.history.append(s.best or math.inf)
            total += len(batch)
            curve_points.append((total, estimated_latency(states)))
            if progress:
                progress(states, total, trials)
        if verify_top:
            for s in states:
                verify(s, measurer, database, target_name, verify_top, verify_rounds)
            curve_points.append((total, estimated_latency(states)))
            if progress:
                progress(states, total, trials)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    _save_model(costs, Path(db))
    untuned = sum(s.task.weight * (s.reference or 0.0) for s in states if not s.failed)
    result = TuneResult(Path(db), task_rows(states), curve_points, total, untuned, estimated_latency(states))
    if curve is not None:
        from kiln.autotune.progress import plot_curve

        plot_curve(result, curve)
    return result


def verify(s: TaskState, measurer: Measurer, database: Database, target: str, top: int, rounds: int) -> None:
    """Re-time the task's ``top`` fastest records and the default schedule in ``rounds``
    interleaved rounds and commit the verdict: the fastest record if it beats the default by
    more than ``VERIFY_MARGIN``, else the default (``decisions`` {})."""
    if s.failed or s.default_latency is None:
        return
    records = database.records(s.task.key, target)
    last = database.verdict(s.task.key, target)
    if last is not None and all(r.get("time", 0) <= last.get("time", 0) for r in records):
        s.verdict = last["latency"]  # nothing measured since the last verdict
        retimed = last.get("retimed") or [{}]
        s.default_retimed = retimed[0].get("latency") if not retimed[0].get("decisions") else None
        return
    default = default_schedule(s.task)
    seen, picks, funcs = {canonical(s.space.default())}, [], [default.func]
    for r in sorted(records, key=lambda r: r["latency"] or math.inf):
        if r["latency"] is None or len(picks) >= top:
            break
        k = canonical(r["decisions"])
        if k in seen:
            continue  # the default (measured by the search too) or a repeat
        seen.add(k)
        try:
            funcs.append(schedule_of(s.task, r["trace"]))
        except KilnError:
            continue  # a record of another version of the rules that no longer replays
        picks.append(r)
    if not picks:
        return
    timed = measurer.retime(s.task, funcs, rounds=rounds)
    if not timed[0].ok:
        return  # the default itself failed on a re-run: leave the records as measured
    s.default_retimed = timed[0].latency
    winner = 0  # index into timed: 0 is the default
    ok = [(t.latency, i) for i, t in enumerate(timed) if i and t.ok]
    if ok and min(ok)[0] < timed[0].latency * (1.0 - VERIFY_MARGIN):
        winner = min(ok)[1]
    chosen = picks[winner - 1] if winner else {"decisions": {}, "trace": default.trace}
    lat = timed[winner].latency
    database.commit([{"key": s.task.key, "target": target, "decisions": chosen["decisions"],
                      "trace": chosen["trace"], "latency": lat, "error": None, "verified": True,
                      "runs": timed[winner].runs,
                      "retimed": [{"decisions": r["decisions"], "latency": t.latency, "error": t.error}
                                  for r, t in zip([{"decisions": {}}] + picks, timed)]}])
    s.verdict = lat


def _warm_start(costs, st: TaskState) -> None:
    """Teach the model what the database already holds for this task."""
    cands, lats = [], []
    for d, lat in st.results:
        try:
            cands.append(Candidate.of(st.space, d))
        except TuningError:
            continue  # a record from another version of the design space
        lats.append(lat)
    if cands:
        costs.update(st.task, cands, latencies_of(lats))


def _save_model(costs, directory: Path) -> None:
    from kiln.autotune.cost_model import XGBModel

    if isinstance(costs, XGBModel) and costs.booster is not None:
        costs.save(directory / "cost_model.json")


__all__ = ["tune", "verify", "TuneResult", "TaskState", "pick_task", "estimated_latency", "SEARCHES",
           "VERIFY_MARGIN"]

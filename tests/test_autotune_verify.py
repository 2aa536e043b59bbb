"""Measurement fidelity: weights evicted before each timed call, and the verification that
re-times each task's fastest records beside the default schedule before one is applied."""
from __future__ import annotations

import random

import pytest

import kiln
from kiln.autotune.database import Database
from kiln.autotune.measure import MeasureOptions, Measurer, Result, default_func, harness_source
from kiln.autotune.space import Candidate, DesignSpace, canonical
from kiln.autotune.tasks import extract_tasks, task_key
from kiln.autotune.tuner import VERIFY_MARGIN, TaskState, verify
from tests.test_autotune import mlp


@pytest.fixture(scope="module")
def task():
    return extract_tasks(mlp())[0]


# -- cold weights -----------------------------------------------------------------------------

def test_tasks_name_the_parameters_that_hold_weights(task):
    params = [b.name for b in task.func.params]
    assert task.weights and set(task.weights) <= set(params)
    assert "in0" not in task.weights  # x, the model's input, comes from the previous kernel
    assert not any(w.startswith("out") for w in task.weights)


def test_the_harness_evicts_exactly_the_weights(task):
    func = default_func(task)
    warm, cold = harness_source(func), harness_source(func, task.weights)
    assert "evict_weights" not in warm and "_mm_clflush" not in warm
    index = {b.name: i for i, b in enumerate(func.params)}
    assert f"static const int cold[{len(task.weights)}] = {{ {', '.join(str(index[w]) for w in task.weights)} }};" in cold
    assert cold.count("evict_weights();") == 2  # before the first call and before each timed call


@pytest.mark.parametrize("cold", [True, False])
def test_cold_and_warm_measurements_run_and_check_outputs(task, cold):
    with Measurer(MeasureOptions(repeats=2, min_repeat_ms=0.2, cold_weights=cold)) as m:
        results = m.measure(task, [default_func(task)])
        again = m.retime(task, [default_func(task)], rounds=2)
    assert results[0].ok and results[0].latency > 0 and len(results[0].costs) >= 2
    assert again[0].ok and len(again[0].runs) == 2


# -- verification -----------------------------------------------------------------------------

class ScriptedMeasurer:
    """``retime`` answers with the latencies it was given, by position (0: the default)."""

    def __init__(self, latencies):
        self.latencies = latencies
        self.calls = []

    def retime(self, task, funcs, rounds=5):
        self.calls.append((len(funcs), rounds))
        return [Result(lat, None, "", [lat], [lat] * rounds) if lat else Result(None, "crash", "scripted")
                for lat in self.latencies[: len(funcs)]]


def _state(task, db: Database, measured: list[float]) -> TaskState:
    """A task state whose database holds one search record per latency in ``measured``."""
    space = DesignSpace(task.func, task.stages, task.caps)
    rng, seen, records = random.Random(0), {canonical(space.default())}, []
    while len(records) < len(measured):
        d = space.sample(rng)
        if canonical(d) not in seen:
            seen.add(canonical(d))
            records.append(d)
    db.commit([{"key": task.key, "target": "host", "decisions": d, "trace": Candidate.of(space, d).trace,
                "latency": lat, "error": None} for d, lat in zip(records, measured)])
    st = TaskState(task, space, None)
    st.default_latency = 1e-3
    return st


@pytest.mark.parametrize("retimed, wins", [
    ([1.0e-3, 1.05e-3, 1.2e-3], None),          # the lucky record is slower when re-timed: the default
    ([1.0e-3, 0.90e-3, 0.95e-3], 0),            # a real gain: the fastest re-timed record
    ([1.0e-3, 1.2e-3, 0.85e-3], 1),             # the re-timing reorders the records
    ([1.0e-3, 1.0e-3 * (1 - VERIFY_MARGIN / 2), 1.1e-3], None),  # a gain within the noise margin
    ([1.0e-3, None, 0.9e-3], 1),                # a record that crashes on a re-run is out
])
def test_verify_applies_a_record_only_when_it_beats_the_default(task, tmp_path, retimed, wins):
    db = Database(tmp_path / "db")
    st = _state(task, db, [0.5e-3, 0.6e-3])
    measurer = ScriptedMeasurer(retimed)
    verify(st, measurer, db, "host", top=4, rounds=3)
    assert measurer.calls == [(3, 3)]  # the default and both records, three rounds
    verdict = db.verdict(task.key, "host")
    assert db.best(task.key, "host") is verdict and st.verdict == verdict["latency"]
    records = db.records(task.key, "host")
    if wins is None:
        assert verdict["decisions"] == {} and verdict["latency"] == retimed[0]
        kernels = kiln.compile(mlp(), db=str(tmp_path / "db")).result.kernels
        assert [k.trace for k in kernels if task_key(k.unscheduled, "host") == task.key] == [verdict["trace"]]
    else:
        assert verdict["decisions"] == records[wins]["decisions"] and verdict["trace"] == records[wins]["trace"]
        assert verdict["latency"] == retimed[1 + wins]
    assert [r["latency"] for r in verdict["retimed"]] == retimed
    assert len(db) == 2 and verdict not in records  # a verdict is no trial


def test_verify_keeps_the_records_when_the_default_fails_and_the_newest_verdict_wins(task, tmp_path):
    db = Database(tmp_path / "db")
    st = _state(task, db, [0.5e-3])
    verify(st, ScriptedMeasurer([None, 0.4e-3]), db, "host", top=4, rounds=2)
    assert db.verdict(task.key, "host") is None and db.best(task.key, "host")["latency"] == 0.5e-3
    verify(st, ScriptedMeasurer([1e-3, 0.8e-3]), db, "host", top=4, rounds=2)
    assert db.best(task.key, "host")["decisions"] == db.records(task.key, "host")[0]["decisions"]
    idle = ScriptedMeasurer([1e-3, 1.1e-3])
    verify(st, idle, db, "host", top=4, rounds=2)
    assert idle.calls == [] and st.verdict == 0.8e-3  # nothing measured since the verdict: kept
    _state(task, db, [0.45e-3, 0.5e-3])  # a later run measures more
    verify(st, ScriptedMeasurer([1e-3, 1.1e-3, 1.2e-3]), db, "host", top=2, rounds=2)
    again = Database(tmp_path / "db")  # verdicts survive a reload; the newest decides
    assert again.best(task.key, "host")["decisions"] == {} and len(again) == 3


def test_verify_retimes_only_the_top_records(task, tmp_path):
    db = Database(tmp_path / "db")
    st = _state(task, db, [0.7e-3, 0.5e-3, 0.6e-3, 0.9e-3])
    measurer = ScriptedMeasurer([1e-3, 0.5e-3, 0.6e-3])
    verify(st, measurer, db, "host", top=2, rounds=1)
    assert measurer.calls == [(3, 1)]
    fastest = min(db.records(task.key, "host"), key=lambda r: r["latency"])
    assert db.verdict(task.key, "host")["decisions"] == fastest["decisions"]


def test_tune_writes_a_verdict_per_task_and_compile_applies_it(tmp_path):
    result = kiln.tune(mlp(), trials=4, db=str(tmp_path / "db"), batch_size=2, population=8, generations=1,
                       verify_top=2, verify_rounds=2, measure=MeasureOptions(repeats=1, min_repeat_ms=0.1))
    db = Database(tmp_path / "db")
    for row in result.tasks:
        verdict = db.verdict(row["key"], "host")
        assert verdict is not None and len(verdict["retimed"]) >= 2
        assert verdict["latency"] <= verdict["retimed"][0]["latency"]
    for k in kiln.compile(mlp(), db=str(tmp_path / "db")).result.kernels:
        verdict = db.verdict(task_key(k.unscheduled, "host"), "host")
        assert verdict is None or k.trace == verdict["trace"]
    none = kiln.tune(mlp(), trials=4, db=str(tmp_path / "db2"), batch_size=2, population=8, generations=1,
                     verify_top=0, measure=MeasureOptions(repeats=1, min_repeat_ms=0.1))
    assert not any(Database(tmp_path / "db2").verdict(r["key"], "host") for r in none.tasks)


def test_the_untuned_reference_is_the_default_retimed_beside_the_records(task, tmp_path):
    """A first measurement of the default can be far off (one ran 28x slow): once verified,
    the table's and the summary's untuned latency is the default re-timed in the same rounds
    as the verdict, so tuned/untuned compares like with like."""
    from kiln.autotune.tuner import task_rows

    db = Database(tmp_path / "db")
    st = _state(task, db, [0.5e-3])
    st.default_latency = 28e-3  # a slow first measurement
    assert st.reference == 28e-3
    verify(st, ScriptedMeasurer([1e-3, 0.9e-3]), db, "host", top=4, rounds=2)
    assert st.reference == 1e-3 and st.current == 0.9e-3
    (row,) = task_rows([st])
    assert row["default_latency"] == 1e-3 and row["latency"] == 0.9e-3
    again = _state(task, db, [])  # a rerun with nothing new to measure reads the verdict's re-timing
    again.default_latency = 5e-3
    idle = ScriptedMeasurer([1e-3])
    verify(again, idle, db, "host", top=4, rounds=2)
    assert idle.calls == [] and again.reference == 1e-3 and again.verdict == 0.9e-3

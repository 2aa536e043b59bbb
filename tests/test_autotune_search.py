"""Search efficiency: confirmed bests, interleaved re-timing, the default schedule first,
cold-start batches, the evolutionary population, and XGB transfer from a pretrained model.

No test here depends on how fast anything runs: where timings matter, the measurer's
timings are replaced by scripted ones (the kernels are still built, run and checked).
"""
from __future__ import annotations

import itertools
import json
import random
import statistics
from dataclasses import replace

import numpy as np
import pytest

from kiln.autotune.cost_model import CostModel, RandomModel, XGBModel, load_cost_model
from kiln.autotune.database import Database
from kiln.autotune.features import FEATURE_VERSION
from kiln.autotune.measure import MeasureOptions, Measurer, Result, default_func
from kiln.autotune.search import EvolutionarySearch, RandomSearch
from kiln.autotune.space import Candidate, DesignSpace, canonical
from kiln.autotune.tasks import extract_tasks
from kiln.autotune.tuner import tune
from kiln.errors import TuningError
from tests.test_autotune import _broken, mlp

FAST = dict(repeats=1, min_repeat_ms=0.1)


@pytest.fixture(scope="module")
def tasks():
    return extract_tasks(mlp())


@pytest.fixture(scope="module")
def space(tasks):
    t = tasks[0]
    return DesignSpace(t.func, t.stages, t.caps)


class ScriptedMeasurer(Measurer):
    """Runs every kernel for real (outputs are checked) but reports scripted latencies."""

    def __init__(self, latencies, **options):
        super().__init__(MeasureOptions(**{**FAST, **options}))
        self.script = iter(latencies)
        self.ran: list[str] = []

    def _run(self, exe, inputs_file, outputs_file, threads):
        res = super()._run(exe, inputs_file, outputs_file, threads)
        self.ran.append(exe.parent.name)
        if not res.ok or exe.parent.name.endswith("_ref"):
            return res
        lat = next(self.script)
        if lat is None:
            return Result(None, "crash", "scripted crash")
        return replace(res, latency=lat)


# -- a single lucky run no longer defines the best ---------------------------------------------

def test_a_would_be_best_is_confirmed_by_more_runs(tasks):
    t = tasks[-1]
    f = default_func(t)
    # before: without confirmation, one lucky run (1 ms) is the candidate's time
    with ScriptedMeasurer([1e-3], confirm=0) as m:
        (res,) = m.measure(t, [f], confirm_below=2e-3)
    assert res.latency == 1e-3 and res.runs == []
    # after: it would beat the best (2 ms), so it runs twice more; the median counts
    with ScriptedMeasurer([1e-3, 3e-3, 4e-3]) as m:
        (res,) = m.measure(t, [f], confirm_below=2e-3)
    assert res.runs == [1e-3, 3e-3, 4e-3] and res.latency == 3e-3
    # slower than the best: measured once, as before
    with ScriptedMeasurer([5e-3]) as m:
        (res,) = m.measure(t, [f], confirm_below=2e-3)
    assert res.latency == 5e-3 and res.runs == []
    # the bar moves within a batch: the second candidate must beat the first one's confirmed time
    with ScriptedMeasurer([1e-3, 1e-3, 1e-3, 1.5e-3]) as m:
        a, b = m.measure(t, [f, f], confirm_below=None)
    assert a.runs == [1e-3] * 3 and b.runs == [] and b.latency == 1.5e-3
    # a candidate that crashes on a confirming run never counts
    with ScriptedMeasurer([1e-3, None]) as m:
        (res,) = m.measure(t, [f], confirm_below=2e-3)
    assert res.latency is None and res.error == "crash" and "confirming run" in res.detail


def test_retime_interleaves_rounds_and_checks_outputs(tasks):
    t = tasks[-1]
    good = default_func(t)
    funcs = [good, _broken(good, "wrong"), good]
    # rounds: first round checks outputs (the wrong one is dropped), then A, B rotate
    with ScriptedMeasurer([1, 9, 2, 3, 4, 5, 6, 7, 8, 10]) as m:
        results = m.retime(t, funcs, rounds=3)
        order = [name for name in m.ran if not name.endswith("_ref")]
    assert [r.error for r in results] == [None, "wrong", None]
    a, _, c = results
    assert len(a.runs) == len(c.runs) == 3
    assert a.latency == statistics.median(a.runs) and c.latency == statistics.median(c.runs)
    first, second = order[0], order[2]
    assert order[3:5] == [second, first]  # round 2 starts with the other candidate
    with pytest.raises(TuningError, match="rounds must be a positive integer"):
        Measurer().retime(t, [good], rounds=0)


def test_tune_records_confirmations_and_measures_the_default_first(tasks, tmp_path):
    t = tasks[0]
    res = tune(None, trials=6, db=str(tmp_path / "db"), cost_model="xgb", batch_size=3, tasks=[t],
               population=8, generations=1, measure=MeasureOptions(**FAST))
    assert res.trials == 6
    records = Database(tmp_path / "db").records(t.key, "host")
    sp = DesignSpace(t.func, t.stages, t.caps)
    assert records[0]["decisions"] == sp.default()  # trial 1 is the untuned schedule
    assert len(records[0]["runs"]) == 3  # the first valid time is always a would-be best
    for r in records:
        if "runs" in r:
            assert r["latency"] == pytest.approx(statistics.median(r["runs"]))
    # pure random search stays the unguided baseline: no default trial
    tune(None, trials=3, db=str(tmp_path / "rnd"), cost_model="random", search="random", batch_size=3,
         tasks=[t], seed=5, measure=MeasureOptions(**FAST))
    rnd = Database(tmp_path / "rnd").records(t.key, "host")
    assert len(rnd) == 3 and rnd[0]["decisions"] != sp.default()


def test_records_without_confirmation_fields_still_load_and_resume(tasks, tmp_path):
    t = tasks[0]
    sp = DesignSpace(t.func, t.stages, t.caps)
    old = Candidate.of(sp, sp.default())
    db = Database(tmp_path / "db")
    db.commit_workload(t)
    db.commit([{"key": t.key, "target": "host", "decisions": old.decisions, "trace": old.trace,
                "latency": 1e-3, "error": None}])  # a record as the first format wrote it
    res = tune(None, trials=3, db=str(tmp_path / "db"), cost_model="random", batch_size=2, tasks=[t],
               population=8, generations=1, measure=MeasureOptions(**FAST))
    assert res.trials == 3
    keys = [canonical(r["decisions"]) for r in Database(tmp_path / "db").records(t.key, "host")]
    assert len(keys) == len(set(keys)) == 3  # the default, measured before, is not measured again


# -- the search ---------------------------------------------------------------------------

class NoPredict(CostModel):
    trained = False

    def predict(self, task, candidates):
        raise AssertionError("an untrained model must not rank the first batch")

    def update(self, task, candidates, results):
        pass


class Bigger(CostModel):
    """Prefers bigger register tiles."""

    def __init__(self):
        self.calls = 0

    def predict(self, task, candidates):
        self.calls += 1
        return np.array([c.decisions["row_tile"] * c.decisions["col_tile"] for c in candidates], float)

    def update(self, task, candidates, results):
        pass


def _spread(sp, batch):
    pts = np.array([sp.coordinates(c.decisions) for c in batch])
    return np.mean([np.linalg.norm(a - b) for a, b in itertools.combinations(pts, 2)])


def _knobs_changed(a, b):
    return sum(a[k] != b[k] for k in a)


def test_first_batch_is_the_default_its_neighbours_and_spread_samples_when_the_model_knows_nothing(tasks, space):
    t = tasks[0]
    batch = EvolutionarySearch(space, NoPredict(), seed=0).next_batch(t, set(), [], 9)
    default = space.default()
    assert batch[0].decisions == default
    assert len({c.key for c in batch}) == 9
    # half the rest: the default with one or two knobs changed (a mutation re-picks knobs it invalidates)
    assert all(1 <= _knobs_changed(c.decisions, default) <= 4 for c in batch[1:5])
    # the other half: farther apart than plain random samples, on average over seeds (no timing involved)
    spread = np.mean([_spread(space, EvolutionarySearch(space, NoPredict(), seed=s).next_batch(t, set(), [], 9)[5:])
                      for s in range(5)])
    plain = np.mean([_spread(space, RandomSearch(space, NoPredict(), seed=s).next_batch(t, set(), [], 4))
                     for s in range(5)])
    assert spread > plain
    no_default = EvolutionarySearch(space, NoPredict(), seed=0, default_first=False).next_batch(t, set(), [], 6)
    assert all(_knobs_changed(c.decisions, default) > 2 for c in no_default)  # no default, no neighbours
    measured = {canonical(space.default())}  # resumed: the default was measured already
    again = EvolutionarySearch(space, NoPredict(), seed=0).next_batch(t, measured, [], 3)
    assert all(c.key not in measured for c in again)


def test_a_model_that_knows_something_ranks_from_the_first_batch(tasks, space):
    t = tasks[0]
    model = Bigger()
    batch = EvolutionarySearch(space, model, population=16, generations=1, epsilon=0.0).next_batch(t, set(), [], 4)
    assert model.calls > 0 and batch[0].decisions == space.default()
    assert not XGBModel().trained and not RandomModel().trained and Bigger().trained


def test_population_keeps_its_random_samples_after_many_batches(tasks):
    """The search used to stop drawing random samples once it had built 20 x population
    candidates, so after a few batches half its population was missing."""
    t = extract_tasks(mlp(n=16, k=64, m=96))[0]
    sp = DesignSpace(t.func, t.stages, t.caps)
    search = EvolutionarySearch(sp, RandomModel(), population=8, seed=0)
    rng = random.Random(1)
    while len(search._cache) <= 20 * search.population:
        search.candidate(sp.sample(rng))
    best = [sp.sample(rng) for _ in range(3)]
    pop = search.initial_population(best, search.candidate(sp.default()))
    assert len(pop) == search.population
    assert {canonical(d) for d in best} <= set(pop)


# -- transfer: an XGB model pretrained on other tasks -------------------------------------------

def _trained_xgb(tasks, path):
    m = XGBModel(rounds=5)
    rng = random.Random(0)
    for t in tasks:
        sp = DesignSpace(t.func, t.stages, t.caps)
        cands = [Candidate.of(sp, sp.sample(rng)) for _ in range(6)]
        m.update(t, cands, [1e-3 * (1 + c.decisions["row_tile"]) for c in cands])
    m.save(path)
    return m


def test_pretrained_xgb_model_loads_ranks_at_once_and_keeps_learning(tasks, tmp_path):
    other = extract_tasks(mlp(n=16, k=64, m=32, seed=1))  # other shapes: other tasks
    assert not {t.key for t in other} & {t.key for t in tasks}
    saved = _trained_xgb(other, tmp_path / "pre.json")
    model = load_cost_model(f"xgb:{tmp_path / 'pre.json'}", seed=3)
    assert isinstance(model, XGBModel) and model.trained and model.seed == 3
    t = tasks[0]
    sp = DesignSpace(t.func, t.stages, t.caps)
    cands = [Candidate.of(sp, sp.sample(random.Random(2))) for _ in range(5)]
    np.testing.assert_allclose(model.predict(t, cands), saved.predict(t, cands), rtol=1e-5)
    base_trees = len(model.base.get_dump())
    model.update(t, cands, [1e-3, 2e-3, None, 3e-3, 4e-3])
    assert len(model.booster.get_dump()) == base_trees + model.rounds  # boosting continues from it
    assert len(model.base.get_dump()) == base_trees  # and the pretrained model is left as it was
    model.save(tmp_path / "after.json")
    assert XGBModel(pretrained=tmp_path / "after.json").trained


def test_pretrained_model_errors_say_what_was_expected(tasks, tmp_path):
    with pytest.raises(TuningError, match="no saved cost model at .*expected an XGBoost JSON"):
        load_cost_model(f"xgb:{tmp_path / 'missing.json'}")
    with pytest.raises(TuningError, match="needs the path"):
        load_cost_model("xgb:")
    (tmp_path / "junk.json").write_text("{not a model")
    with pytest.raises(TuningError, match="not an XGBoost JSON model"):
        load_cost_model(f"xgb:{tmp_path / 'junk.json'}")
    _trained_xgb(tasks, tmp_path / "m.json")
    data = json.loads((tmp_path / "m.json").read_text())
    attrs = data["learner"]["attributes"]
    attrs["kiln_feature_version"] = "ansor-v0"
    (tmp_path / "old.json").write_text(json.dumps(data))
    with pytest.raises(TuningError, match="trained on features 'ansor-v0'.*retrain"):
        XGBModel(pretrained=tmp_path / "old.json")
    import xgboost as xgb
    b = xgb.train({"verbosity": 0}, xgb.DMatrix(np.ones((4, 3)), label=np.arange(4.0)), num_boost_round=1)
    b.set_attr(kiln_feature_version=FEATURE_VERSION)  # the right version, the wrong width
    b.save_model(str(tmp_path / "narrow.json"))
    with pytest.raises(TuningError, match="takes 3 features per store; expected"):
        XGBModel(pretrained=tmp_path / "narrow.json")


def test_cli_tune_reports_a_missing_pretrained_model(tmp_path):
    import onnx
    from click.testing import CliRunner

    from kiln.cli import cli

    path = tmp_path / "mlp.onnx"
    onnx.save(mlp(), path)
    res = CliRunner().invoke(cli, ["tune", str(path), "--trials", "1", "--db", str(tmp_path / "db"),
                                   "--cost-model", f"xgb:{tmp_path / 'nope.json'}", "--quiet"])
    assert res.exit_code == 2 and "no saved cost model" in res.output


# -- the benchmark harness ---------------------------------------------------------------------

def test_search_curves_summary_uses_re_timed_bests():
    from benchmarks.cost_models.search_curves import summarize

    curves = {"t": {"xgb": [[3.0, 1.0, 1.0], [2.0, 2.0, 1.02]], "random-search": [[4.0, 4.0, 4.0], [4.0, 1.0, 1.0]]}}
    raw = {"t": {"xgb": [[3.0, 0.5, 0.5], [2.0, 2.0, 1.0]], "random-search": [[4.0, 4.0, 4.0], [4.0, 1.0, 1.0]]}}
    summary, lines = summarize(curves, raw, trials=3)
    s = summary["t"]
    assert s["best"] == 1.0 and s["raw_best"] == 0.5  # the lucky raw sample does not set the bar
    assert s["per_seed"]["xgb"] == [2, 3] and s["median_trials"]["xgb"] == 2.5
    assert s["per_seed"]["random-search"] == [None, 2] and s["median_trials"]["random-search"] == 4  # never: 2 x 3
    assert any("| t | xgb | 2, 3 | 2.5 | 0.62 |" in line for line in lines)


def test_search_curves_pretrains_on_other_tasks_only(tmp_path):
    from benchmarks.cost_models import search_curves

    search_curves.main(["--workload", "gemm", "--size", "32", "--trials", "3", "--batch-size", "3",
                        "--seeds", "1", "--repeats", "1", "--retime-rounds", "2", "--pretrain", "3",
                        "--methods", "xgb-pretrained,xgb-no-default,random-search", "--out", str(tmp_path)])
    data = json.loads((tmp_path / "curves.json").read_text())
    (task,) = data["curves"]
    assert set(data["curves"][task]) == set(data["raw_curves"][task]) == {"xgb-pretrained", "xgb-no-default",
                                                                           "random-search"}
    assert data["retimed"][task] and all(v["error"] is None for v in data["retimed"][task].values())
    assert XGBModel(pretrained=tmp_path / "pretrained.json").trained
    measured = extract_tasks(search_curves.gemm_model(32))
    args = type("A", (), {"workload": "gemm", "size": 32})
    assert not {t.key for t in search_curves.pretraining_tasks(args, measured)} & {t.key for t in measured}
    with pytest.raises(SystemExit, match="needs --pretrain"):
        search_curves.main(["--workload", "gemm", "--size", "32", "--methods", "xgb-pretrained",
                            "--out", str(tmp_path)])

"""Autotuning: tasks, design space, features, cost models, measurement, database, tuning.

Everything here checks correctness and robustness, never speed: the machines are shared
and timings are noise. Trial counts and shapes are tiny so the file stays fast in CI.
"""
from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from onnx import helper

import kiln
from kiln.autotune.cost_model import CostModel, RandomModel, XGBModel, load_cost_model, normalized_throughput
from kiln.autotune.database import Database
from kiln.autotune.features import FEATURE_NAMES, FEATURE_VERSION, N_FEATURES, extract
from kiln.autotune.measure import MeasureOptions, Measurer, default_func
from kiln.autotune.search import EvolutionarySearch, RandomSearch
from kiln.autotune.space import Candidate, DesignSpace, apply_trace, canonical
from kiln.autotune.tasks import extract_tasks, task_key
from kiln.autotune.tuner import tune
from kiln.errors import KilnError, TuningError, TuningWarning
from kiln.ir.expr import Const, Load
from kiln.ir.expr import Var
from kiln.ir.loop import For, Store, format_func, map_stmt, seq
from tests.util import make_model, ort_run

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))


def mlp(n=8, k=32, m=48, seed=0):
    """x[n,k] @ W1[k,m] + b, relu, @ W2[m,m], relu: two GEMM-like tasks."""
    rng = np.random.default_rng(seed)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Add", ["h", "b1"], ["hb"]),
             helper.make_node("Relu", ["hb"], ["r"]), helper.make_node("MatMul", ["r", "w2"], ["h2"]),
             helper.make_node("Relu", ["h2"], ["y"])]
    inits = [("w1", rng.standard_normal((k, m)).astype(np.float32)), ("b1", rng.standard_normal(m).astype(np.float32)),
             ("w2", rng.standard_normal((m, m)).astype(np.float32))]
    return make_model(nodes, [("x", np.float32, (n, k))], [("y", np.float32, (n, m))], inits)


@pytest.fixture(scope="module")
def tasks():
    return extract_tasks(mlp())


# -- tasks ----------------------------------------------------------------------------------

def test_tasks_are_deduplicated_and_weighted():
    from models import resnet_style

    ts = extract_tasks(resnet_style(image=16))
    assert len({t.key for t in ts}) == len(ts)
    assert any(t.weight > 1 for t in ts)  # repeated BasicBlock convolutions are one task
    kernels = [k for t in ts for k in t.kernels]
    assert len(kernels) == len(set(kernels)) == sum(t.weight for t in ts)
    assert all(t.flops > 0 for t in ts)
    assert ts == sorted(ts, key=lambda t: -t.flops * t.weight)


def test_task_key_is_structural(tasks):
    t = tasks[0]
    renamed = replace(t.func, name="kernel_17")
    assert task_key(renamed, "host") == t.key  # the kernel's position is not part of the task
    assert task_key(t.func, "arm64") != t.key
    again = extract_tasks(mlp())
    assert [x.key for x in again] == [x.key for x in tasks]
    assert extract_tasks(mlp(m=40))[0].key not in {x.key for x in tasks}


def test_model_without_tunable_kernels_is_refused():
    m = make_model([helper.make_node("Relu", ["x"], ["y"])], [("x", np.float32, (4, 4))],
                   [("y", np.float32, (4, 4))])
    with pytest.raises(TuningError, match="no tunable kernels"):
        extract_tasks(m)


# -- design space -------------------------------------------------------------------------

def test_default_decisions_reproduce_the_untuned_schedule(tasks):
    for t in tasks:
        sp = DesignSpace(t.func, t.stages, t.caps)
        c = Candidate.of(sp, sp.default())
        assert format_func(c.func) == format_func(default_func(t))


def test_samples_and_mutations_stay_in_the_space_and_replay(tasks):
    rng = random.Random(1)
    for t in tasks:
        sp = DesignSpace(t.func, t.stages, t.caps)
        assert sp.size() > 100
        for _ in range(10):
            d = sp.sample(rng)
            assert sp.validate(d) == d
            m = sp.mutate(d, rng)
            assert sp.validate(m) == m and m != d
            c = Candidate.of(sp, m)
            assert format_func(apply_trace(t.func, json.loads(json.dumps(c.trace)))) == format_func(c.func)


def test_bad_decisions_are_refused(tasks):
    sp = DesignSpace(tasks[0].func, tasks[0].stages)
    d = sp.default()
    with pytest.raises(TuningError, match="outside the design space"):
        sp.apply(dict(d, row_tile=17))  # past MAX_ROW_TILE (any count up to it is in the space)
    with pytest.raises(TuningError, match="outside the design space"):
        sp.apply({k: v for k, v in d.items() if k != "vectorize"})


# -- features -------------------------------------------------------------------------------

def test_features_have_names_version_and_follow_the_schedule(tasks):
    t = tasks[0]
    sp = DesignSpace(t.func, t.stages)
    assert len(FEATURE_NAMES) == N_FEATURES == len(set(FEATURE_NAMES))
    assert FEATURE_VERSION.startswith("kiln-ansor-")
    d = sp.default()
    vec = extract(Candidate.of(sp, dict(d, vectorize=True, parallel=0)).func)
    scalar = extract(Candidate.of(sp, dict(d, vectorize=False, parallel=0)).func)
    par = extract(Candidate.of(sp, dict(d, vectorize=False, parallel=2)).func)
    assert vec.shape[1] == N_FEATURES and vec.dtype == np.float32 and np.isfinite(vec).all()
    col = FEATURE_NAMES.index
    assert vec[:, col("vec_num")].max() > 0 and scalar[:, col("vec_num")].max() == 0
    assert par[:, col("parallel_num")].max() > 0 and scalar[:, col("parallel_num")].max() == 0
    assert (vec[:, col("float_mad")] > 0).any()
    np.testing.assert_array_equal(vec, extract(Candidate.of(sp, dict(d, vectorize=True, parallel=0)).func))


# -- cost models ---------------------------------------------------------------------------

def _synthetic(tasks, n=40, seed=0):
    """Candidates with a made-up latency that depends on their decisions: learnable."""
    t = tasks[0]
    sp = DesignSpace(t.func, t.stages)
    rng = random.Random(seed)
    cands = list({canonical(d): Candidate.of(sp, d) for d in (sp.sample(rng) for _ in range(n))}.values())
    lat = [1.0 / (c.decisions["row_tile"] * (2 if c.decisions["vectorize"] else 1)) for c in cands]
    return t, cands, lat


@pytest.mark.parametrize("objective", ["packsum", "rank"])
def test_xgb_model_learns_a_ranking_and_saves_json(tasks, tmp_path, objective):
    t, cands, lat = _synthetic(tasks)
    m = XGBModel(objective=objective, rounds=30)
    m.update(t, cands[:30], lat[:30])
    pred = m.predict(t, cands)
    from scipy.stats import kendalltau

    tau = kendalltau(pred, [-x for x in lat]).statistic
    assert tau > 0.5, tau
    path = tmp_path / "model.json"
    m.save(path)
    json.loads(path.read_text())  # XGBoost JSON, not pickle
    m2 = XGBModel.from_file(path)
    np.testing.assert_allclose(m2.predict(t, cands), pred, rtol=1e-5)
    with pytest.raises(TuningError, match=r"\.json"):
        m.save(tmp_path / "model.pkl")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(TuningError):
        XGBModel.from_file(tmp_path / "bad.json")


def test_normalized_throughput_labels():
    np.testing.assert_allclose(normalized_throughput([2.0, 1.0, None, 4.0]), [0.5, 1.0, 0.0, 0.25])


class TinyModel(CostModel):
    """Prefers bigger register tiles; used by the pkg.mod:Class test."""

    def predict(self, task, candidates):
        return np.array([c.decisions["row_tile"] * c.decisions["col_tile"] for c in candidates], float)

    def update(self, task, candidates, results):
        self.seen = len(candidates)


def test_cost_models_load_by_name_and_by_class_path():
    assert isinstance(load_cost_model("xgb"), XGBModel)
    assert isinstance(load_cost_model("random"), RandomModel)
    assert isinstance(load_cost_model("tests.test_autotune:TinyModel"), TinyModel)
    for bad, msg in [("nope", "unknown cost model"), ("tests.test_autotune:Missing", "cannot load"),
                     ("json:JSONDecoder", "not a cost model")]:
        with pytest.raises(TuningError, match=msg):
            load_cost_model(bad)


def test_evolutionary_search_follows_the_model(tasks):
    t = tasks[0]
    sp = DesignSpace(t.func, t.stages)
    batch = EvolutionarySearch(sp, TinyModel(), population=32, generations=2, epsilon=0.0).next_batch(
        t, set(), [], 4)
    rand = RandomSearch(sp, TinyModel(), seed=3).next_batch(t, set(), [], 4)
    score = lambda cs: np.mean([c.decisions["row_tile"] * c.decisions["col_tile"] for c in cs])  # noqa: E731
    assert len(batch) == len({c.key for c in batch}) == 4
    assert score(batch) > score(rand)
    measured = {c.key for c in batch}
    again = EvolutionarySearch(sp, TinyModel(), population=32, generations=2).next_batch(t, measured, [], 4)
    assert not measured & {c.key for c in again}  # never measures a candidate twice


# -- measurement robustness ----------------------------------------------------------------

def _broken(func, how):
    """The untuned kernel, damaged in one way."""
    if how == "wrong":
        return func.with_body(map_stmt(func.body, lambda s: Store(s.buffer, s.indices, s.value + Const(1.0, s.value.dtype))
                                       if isinstance(s, Store) and s.buffer.startswith("out") else None))
    if how in ("oob", "segfault"):
        off = 1 if how == "oob" else 1 << 36
        return func.with_body(map_stmt(func.body, lambda s: Store(s.buffer, s.indices[:-1] + (s.indices[-1] + off,), s.value)
                                       if isinstance(s, Store) and s.buffer.startswith("out") else None))
    if how == "hang":  # an accumulation gcc must really repeat: float addition does not reassociate
        out = next(b for b in func.params if b.name.startswith("out"))
        idx = tuple(Const(0, Var("i").dtype) for _ in out.shape)
        spin = For(Var("spin"), 1 << 50, Store(out.name, idx, Load(out.name, idx, out.dtype) + Const(1.0, out.dtype)))
        return func.with_body(seq(func.body, spin))
    raise ValueError(how)


def test_crashing_hanging_and_wrong_candidates_are_contained(tasks):
    t = tasks[-1]
    good = default_func(t)
    funcs = [good, _broken(good, "wrong"), _broken(good, "oob"), _broken(good, "segfault"), _broken(good, "hang")]
    with Measurer(MeasureOptions(run_timeout=2.0, repeats=1, min_repeat_ms=0.1)) as m:
        results = m.measure(t, funcs)
    kinds = [r.error for r in results]
    assert kinds == [None, "wrong", "oob", "crash", "timeout"], [(r.error, r.detail) for r in results]
    assert results[0].latency > 0 and not any(r.latency for r in results[1:])
    assert "differs from the untuned kernel" in results[1].detail
    assert "out of bounds" in results[2].detail
    assert "signal" in results[3].detail


# -- database -------------------------------------------------------------------------------

def _record(key="k", lat=1e-3, **kw):
    return dict({"key": key, "target": "host", "decisions": {"a": 1}, "trace": [], "latency": lat,
                 "error": None if lat else "crash"}, **kw)


def test_database_skips_corrupt_lines_and_appends_on_a_fresh_line(tmp_path):
    db = Database(tmp_path / "db")
    db.commit([_record(lat=2e-3), _record(lat=1e-3), _record(lat=None)])
    with open(db.records_path, "a") as f:
        f.write('{"key": "k", "target": "host", "decis')  # a torn line, as kill -9 leaves it
    with pytest.warns(TuningWarning, match="corrupt line"):
        db2 = Database(tmp_path / "db")
    assert len(db2) == 3 and db2.best("k", "host")["latency"] == 1e-3
    db2.commit([_record(lat=5e-4)])
    with pytest.warns(TuningWarning):
        db3 = Database(tmp_path / "db")
    assert len(db3) == 4 and db3.best("k", "host")["latency"] == 5e-4
    with pytest.raises(TuningError, match="malformed"):
        db3.commit([_record(lat=-1.0)])
    with pytest.raises(TuningError, match="does not exist"):
        Database(tmp_path / "missing", create=False)


# -- tuning end to end ---------------------------------------------------------------------

def test_tune_then_compile_applies_the_best_records(tmp_path):
    model = mlp()
    db = tmp_path / "db"
    result = kiln.tune(model, trials=6, db=str(db), cost_model="xgb", batch_size=3, population=16,
                       generations=1, curve=tmp_path / "curve.png",
                       measure=MeasureOptions(repeats=1, min_repeat_ms=0.2))
    assert result.trials == 6 and len(result.tasks) == 2
    assert (tmp_path / "curve.png").read_bytes()[:4] == b"\x89PNG"
    database = Database(db)
    assert len(database) == 6 and len(database.workloads) == 2
    compiled = kiln.compile(model, db=str(db))
    applied = 0
    for k in compiled.result.kernels:
        best = database.best(task_key(k.unscheduled, "host"), "host")
        if best is not None:
            assert k.trace == best["trace"]
            applied += 1
    assert applied == len(result.tasks)  # every task has a record: its best, or the untuned kernel's
    for k in compiled.result.kernels:  # the search never makes a kernel slower than untuned
        key = task_key(k.unscheduled, "host")
        untuned = database.untuned(key, "host")
        if untuned is not None:
            assert untuned["decisions"] == {} and untuned not in database.records(key, "host")
        verdict = database.verdict(key, "host")  # re-timed beside the default: never slower than it
        if verdict is not None:
            assert database.best(key, "host") is verdict
            assert verdict["latency"] <= verdict["retimed"][0]["latency"]
    x = {"x": np.random.default_rng(0).standard_normal((8, 32)).astype(np.float32)}
    np.testing.assert_allclose(compiled.run(x)["y"], ort_run(model, x)["y"], rtol=1e-4, atol=1e-4)
    with pytest.raises(TuningError, match="does not exist"):
        kiln.compile(model, db=str(tmp_path / "nowhere"))


def test_tune_rejects_bad_settings(tmp_path):
    for kwargs, msg in [({"trials": -1}, "trials"), ({"batch_size": 0}, "batch_size"),
                        ({"search": "annealing"}, "unknown search"), ({"cost_model": "nope"}, "unknown cost model"),
                        ({"verify_top": -1}, "verify_top"), ({"verify_rounds": 0}, "verify_rounds")]:
        with pytest.raises(KilnError, match=msg):
            tune(mlp(), db=str(tmp_path / "db"), **{"trials": 1, **kwargs})


def test_cli_tune_and_compile_with_db(tmp_path):
    from click.testing import CliRunner

    from kiln.cli import cli
    import onnx

    path = tmp_path / "mlp.onnx"
    onnx.save(mlp(), path)
    runner = CliRunner()
    res = runner.invoke(cli, ["tune", str(path), "--trials", "3", "--db", str(tmp_path / "db"), "--batch-size", "3",
                              "--cost-model", "random", "--quiet"])
    assert res.exit_code == 0, res.output
    assert "3 trials" in res.output and (tmp_path / "db" / "tuning_curve.png").exists()
    res = runner.invoke(cli, ["compile", str(path), "--db", str(tmp_path / "db"), "-o", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    res = runner.invoke(cli, ["tune", str(path), "--trials", "1", "--db", str(tmp_path / "db"),
                              "--cost-model", "pkg_that_does_not_exist:Model", "--quiet"])
    assert res.exit_code == 2 and "cannot load cost model" in res.output


def test_resume_after_kill_9(tmp_path):
    db = tmp_path / "db"
    path = tmp_path / "mlp.onnx"
    import onnx

    onnx.save(mlp(), path)
    cmd = [sys.executable, "-m", "kiln.cli", "tune", str(path), "--trials", "40", "--db", str(db),
           "--batch-size", "2", "--cost-model", "random", "--quiet"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    records = db / "records.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        # two search measurements (the untuned references are written first)
        if records.exists() and sum('"untuned"' not in line for line in records.read_text().splitlines()) >= 2:
            break
        time.sleep(0.05)
    proc.kill()  # SIGKILL: no cleanup, no flush
    proc.wait()
    assert records.exists(), proc.stderr.read().decode()
    import warnings

    with warnings.catch_warnings():  # a torn last line, if the kill landed mid-write, is skipped
        warnings.simplefilter("ignore", TuningWarning)
        before = len(Database(db))
    assert 2 <= before < 40
    result = tune(str(path), trials=before + 2, db=str(db), cost_model="random", batch_size=2,
                  measure=MeasureOptions(repeats=1, min_repeat_ms=0.1))
    assert result.trials == before + 2
    assert len(Database(db)) == before + 2  # earlier records kept, only the remainder measured
    assert not (db / "build").exists()  # the killed run's scratch builds are gone


# -- research kit ----------------------------------------------------------------------------

def test_offline_metrics():
    from kiln.autotune.dataset import kendall_tau, pairwise_accuracy, top_k_score

    lat = [1.0, 2.0, None, 4.0]
    assert pairwise_accuracy([3, 2, 9, 1], lat) == 1.0
    assert pairwise_accuracy([1, 2, 9, 3], lat) == 0.0
    assert kendall_tau([3, 2, 0, 1], lat) == pytest.approx(1.0)
    assert top_k_score([1, 2, 0, 3], lat, 1) == 0.25 and top_k_score([1, 2, 0, 3], lat, 3) == 1.0


def test_dataset_export_splits_and_evaluation(tmp_path):
    from kiln.autotune.dataset import Dataset, evaluate

    db = tmp_path / "db"
    tune(mlp(), trials=10, db=str(db), cost_model="random", batch_size=5,
         measure=MeasureOptions(repeats=1, min_repeat_ms=0.1))
    ds = Dataset.from_databases({"mlp": mlp()}, db)
    assert len(ds) == 10 and len(ds.tasks) == 2 and {t.model for t in ds.tasks} == {"mlp"}
    ds.export(tmp_path / "data.npz")
    back = Dataset.load(tmp_path / "data.npz")
    assert len(back) == 10
    for a, b in zip(ds.candidates, back.candidates):
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x.features, y.features)
            assert x.decisions == y.decisions and x.trace == y.trace
    assert back.latencies == ds.latencies
    train, test = ds.split("within-task", seed=0)
    assert len(train) + len(test) == 10 and len(test) >= 2
    assert ds.split("within-task", seed=0)[1].latencies == test.latencies  # fixed by the seed
    tr, te = ds.split("by-model", holdout="mlp")
    assert len(te) == 10 and len(tr) == 0
    tr, te = ds.split("by-task", test_fraction=0.5)
    assert len(tr) + len(te) == 10
    scores = evaluate(XGBModel(rounds=10), train, test)
    for name in ("pairwise_accuracy", "top1", "top5", "a-peak@1", "a-peak@5"):
        v = scores[name]
        assert np.isnan(v) or 0.0 <= v <= 1.0, (name, v)
    assert 0.0 < scores["a-peak@5"] <= 1.0
    with pytest.raises(TuningError, match="unknown split"):
        ds.split("by-moon")


def test_custom_model_example_tunes(tmp_path):
    model = load_cost_model("benchmarks.cost_models.custom_model:RidgeModel")
    assert len(Path(ROOT / "benchmarks/cost_models/custom_model.py").read_text().split("class RidgeModel")[1]
               .strip().splitlines()) <= 14
    result = tune(mlp(), trials=4, db=str(tmp_path / "db"), cost_model=model, batch_size=2, population=8,
                  generations=1, measure=MeasureOptions(repeats=1, min_repeat_ms=0.1))
    assert result.trials == 4 and model.w is not None


def test_search_curve_harness_smoke(tmp_path):
    from benchmarks.cost_models import search_curves

    search_curves.main(["--workload", "gemm", "--size", "32", "--trials", "4", "--batch-size", "2",
                        "--seeds", "1", "--repeats", "1", "--out", str(tmp_path)])
    data = json.loads((tmp_path / "curves.json").read_text())
    (task,) = data["curves"]
    assert set(data["curves"][task]) == {"xgb", "random-model", "random-search"}
    assert all(len(run) == 4 for runs in data["curves"][task].values() for run in runs)
    assert (tmp_path / "curves.png").exists() and "random-search" in (tmp_path / "summary.md").read_text()


def test_space_contains_the_default_rules_for_packed_matmuls_and_blocked_convs():
    """Panel order, several channel blocks per tile and an integer max pool's padding computed
    in its row loop are knobs of the space, and its default decisions are the untuned schedule."""
    from onnx import helper

    from tests.test_layout import _mobilenet_block
    from tests.util import make_model

    packed = mlp(n=8, k=32, m=64)  # N = 64: B packed in panels
    pool = make_model([helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2], pads=[1] * 4)],
                      [("x", np.uint8, [1, 8, 32, 32])], [("y", np.uint8, [1, 8, 16, 16])])
    models = [packed, _mobilenet_block(hw=16, cin=32, mid=32, cout=64), pool]
    seen = set()
    for t in [t for m in models for t in extract_tasks(m)]:
        sp = DesignSpace(t.func, t.stages, t.caps)
        d = sp.default()
        assert format_func(Candidate.of(sp, d).func) == format_func(default_func(t)), t.name
        seen.update(["panel_outer"] if d["panel_outer"] is True else [])
        seen.update(["col_blocks"] if d["col_blocks"] > 1 else [])
        seen.update("pad_at" for st in t.stages if "pad_at" in st.hints)
        rng = random.Random(0)
        for _ in range(5):  # sampled points with the new knobs build valid schedules
            Candidate.of(sp, sp.sample(rng))
    assert seen == {"panel_outer", "col_blocks", "pad_at"}


def test_records_written_before_new_knobs_replay_as_they_were(tasks):
    sp = DesignSpace(tasks[0].func, tasks[0].stages, tasks[0].caps)
    old = {k: v for k, v in sp.default().items() if k not in ("panel_outer", "col_blocks")}
    assert sp.validate(old)["panel_outer"] is False and sp.validate(old)["col_blocks"] == 1

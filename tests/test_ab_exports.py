"""``benchmarks/ab_exports.py``: two exported host models built and timed in one C process.
The harness really builds and runs both (tier 2); timings are not checked, only that they
exist, that the outputs comparison tells equal models from different ones, and that
exports it cannot compare are refused with what was expected."""
from __future__ import annotations

import json

import numpy as np
import pytest
from onnx import helper

import kiln
from benchmarks import ab_exports
from tests.util import make_model


def _matmul(w: np.ndarray):
    return make_model([helper.make_node("MatMul", ["x", "w"], ["y"])], [("x", np.float32, [4, 16])],
                      [("y", np.float32, [4, 8])], [("w", w)])


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    w = np.random.default_rng(0).standard_normal((16, 8)).astype(np.float32)
    dirs = {}
    for name, weights in (("a", w), ("a2", w), ("b", w * 2)):
        d = tmp_path_factory.mktemp(name)
        kiln.compile(_matmul(weights), target="host").export(d)
        dirs[name] = d
    return dirs


def test_same_model_gives_same_outputs_and_timings(exports):
    (r,) = ab_exports.compare(exports["a"], exports["a2"], runs=5, rounds=1)
    assert r["same"] == 1
    assert 0 <= r["a_min"] <= r["a_median"] and 0 <= r["b_min"] <= r["b_median"] and r["a_median"] > 0
    assert r["diff_p25"] <= r["diff_median"] <= r["diff_p75"]


def test_different_weights_are_reported_as_different_outputs(exports):
    (r,) = ab_exports.compare(exports["a"], exports["b"], runs=5, rounds=1)
    assert r["same"] == 0


def test_a_model_with_integer_inputs_runs(tmp_path):
    """A Gather over an int64 input builds and runs in the harness (which fills integer
    inputs with 0 and 1 element by element: indices inside any table)."""
    table = np.arange(32, dtype=np.float32).reshape(4, 8)
    model = make_model([helper.make_node("Gather", ["table", "idx"], ["y"])], [("idx", np.int64, [6])],
                       [("y", np.float32, [6, 8])], [("table", table)])
    for name in ("a", "b"):
        kiln.compile(model, target="host").export(tmp_path / name)
    (r,) = ab_exports.compare(tmp_path / "a", tmp_path / "b", runs=5, rounds=1)
    assert r["same"] == 1


def test_main_prints_one_line_per_round(exports, capsys):
    assert ab_exports.main([str(exports["a"]), str(exports["a2"]), "--runs", "3", "--rounds", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:2] == ["round", "A"] and [line.split()[0] for line in out[1:3]] == ["1", "2"]
    assert out[1].endswith("same")


def test_refuses_what_it_cannot_compare(exports, tmp_path, capsys):
    with pytest.raises(ab_exports.ABError, match="no manifest.json"):
        ab_exports.compare(tmp_path, exports["a"], runs=3, rounds=1)
    other = tmp_path / "other"
    kiln.compile(make_model([helper.make_node("Relu", ["x"], ["y"])], [("x", np.float32, [4, 16])],
                            [("y", np.float32, [4, 16])]), target="host").export(other)
    with pytest.raises(ab_exports.ABError, match="different inputs or outputs"):
        ab_exports.compare(exports["a"], other, runs=3, rounds=1)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["target"] = "arm64"
    (other / "manifest.json").write_text(json.dumps(manifest))
    assert ab_exports.main([str(other), str(exports["a"])]) == 2
    assert "expected 'host'" in capsys.readouterr().err

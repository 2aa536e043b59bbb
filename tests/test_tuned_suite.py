"""The tuned-suite harness (benchmarks/tuned_suite.py): its ratios and verdict from the
harness's rows, and a smoke run that tunes, times and writes its report."""
from __future__ import annotations

import pytest

from benchmarks import tuned_suite as T
from kiln import bench as B


def _row(workload, peer, ms, err=0.0):
    return B.Row(workload=workload, peer=peer, median_ms=ms, max_rel_err=err)


def test_ratios_and_verdict_from_rows():
    rows = [_row("a", "kiln", 2.0), _row("a", "kiln-untuned", 3.0), _row("a", "ort", 3.0),
            _row("a", "kiln-direct", 6.0),
            _row("b", "kiln", 1.0), _row("b", "kiln-untuned", 1.0), _row("b", "ort", 1.2)]
    r = T.ratios(rows)
    assert r["a"] == pytest.approx({"ort/tuned": 1.5, "ort/untuned": 1.0, "untuned/tuned": 1.5, "ort/direct": 0.5})
    assert r["b"]["ort/tuned"] == pytest.approx(1.2)
    lines = T.summary(r)
    assert lines[0] == f"geometric mean ONNX Runtime / tuned Kiln: {(1.5 * 1.2) ** 0.5:.2f}"
    assert lines[-1].endswith(": met")                               # 1.34 >= 1.25
    assert T.summary({"x": {"ort/tuned": 1.1}})[-1].endswith(": not met")


def test_a_failed_peer_has_no_ratio():
    rows = [_row("a", "kiln", 2.0), _row("a", "ort", 3.0)]
    rows[0].error = "failed while timing: boom"
    assert T.ratios(rows) == {}
    assert T.summary({}) == []


def test_smoke_run_tunes_times_and_writes(tmp_path):
    out = tmp_path / "tuned.md"
    assert T.main(["--quick", "--models", "resnet18", "--trials", "4", "--repeats", "2", "--db", str(tmp_path / "db"),
                   "--out", str(out), "--write"]) == 0
    text = out.read_text()
    assert "| resnet18 | 4 |" in text and "ORT / tuned" in text and "issue 5 target" in text
    assert "| resnet18 | kiln-direct |" in text and "ORT / untuned direct" in text
    assert any((tmp_path / "db").iterdir())  # the records the tuned peer applied


def test_unknown_model_is_a_clear_error(capsys):
    assert T.main(["--models", "nosuchmodel"]) == 2
    assert "nosuchmodel" in capsys.readouterr().err

"""benchmarks/tvm_metaschedule.py: tuned Kiln against TVM MetaSchedule at the same trial budget.

The end-to-end test really tunes a 128^3 GEMM with both tools (2 trials each), compiles both
with their databases, checks them against ONNX Runtime and times them; the timings on a busy
test machine mean nothing, so it checks the report's structure and the output checks only.
It runs the script in its own process, as a user does: TVM_NUM_THREADS / OMP_NUM_THREADS must
be set before TVM and Kiln load, and MetaSchedule's import of its tensor intrinsics is several
times slower in a process that already holds pytest's, torch's and onnxruntime's modules.
"""
from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import toolchains_required

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "tvm_metaschedule.py"

sys.path.insert(0, str(ROOT / "benchmarks"))
import tvm_metaschedule as T  # noqa: E402  (imports neither TVM nor Kiln at module level)


def require_metaschedule() -> None:
    """apache-tvm is in the `test` extra: CI (KILN_REQUIRE_TOOLCHAINS=1) fails without it;
    a developer's machine without it skips."""
    missing = [m for m in ("tvm", "psutil") if importlib.util.find_spec(m) is None]
    if not missing:
        return
    message = (f"{', '.join(missing)} not installed: pip install 'apache-tvm==0.27.0.post1' "
               "'apache-tvm-ffi==0.1.14.post1' psutil (in the `test` extra)")
    if toolchains_required():
        pytest.fail(message + "; KILN_REQUIRE_TOOLCHAINS=1 makes it an error", pytrace=False)
    pytest.skip(message)


def test_quick_gemm_end_to_end(tmp_path):
    require_metaschedule()
    out_md, out_json = tmp_path / "report.md", tmp_path / "results.json"
    env = {**os.environ, "KILN_CACHE_DIR": str(tmp_path / "cache"), "TVM_NUM_THREADS": "2", "OMP_NUM_THREADS": "2"}
    argv = ["--quick", "--workloads", "gemm", "--trials", "2", "--batch-size", "2", "--repeats", "2",
            "--min-sample-ms", "2", "--work-dir", str(tmp_path / "work"), "--write", "--out", str(out_md),
            "--json", str(out_json)]
    proc = subprocess.run([sys.executable, str(SCRIPT), *argv], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    results = json.loads(out_json.read_text())["results"]
    assert len(results) == 1
    r = results[0]
    assert r["workload"] == "gemm" and r["trials"] == 2 and "128^3" in r["description"]
    # both tuned outputs matched ONNX Runtime, and the harness really compared them
    assert r["tvm_matched"] and r["kiln_matched"], r["notes"]
    assert 0 <= r["tvm_err"] <= T.RTOL and 0 <= r["kiln_err"] <= T.RTOL
    assert r["notes"] == ""  # among others: every MetaSchedule record was applied at compile
    for key in ("tvm_ms", "kiln_ms", "untuned_ms", "tvm_tune_s", "kiln_tune_s"):
        assert r[key] is not None and r[key] > 0, key
    assert math.isclose(r["ratio"], r["tvm_ms"] / r["kiln_ms"])
    assert (r["tvm_tasks"], r["tvm_tuned"], r["kiln_tasks"], r["kiln_tuned"]) == (1, 1, 1, 1)
    # each tool really measured its 2 trials into its own database
    records = (tmp_path / "work" / "gemm-metaschedule" / "database_tuning_record.json").read_text().splitlines()
    assert len(records) == 2
    assert (tmp_path / "work" / "gemm-kiln").is_dir()

    text = out_md.read_text()
    table = [line for line in text.splitlines() if line.startswith("|")]
    assert table[0].startswith("| workload | TVM tuned ms | Kiln tuned ms | TVM/Kiln |")
    cells = [c.strip() for c in table[2].strip("|").split("|")]
    assert cells[0] == "gemm"
    assert float(cells[1]) > 0 and float(cells[2]) > 0 and float(cells[3]) > 0
    assert cells[7] == "1 of 1 / 1 of 1"
    assert "load average (1 min) before / after:" in text and "apache-tvm 0.27.0.post1" in text
    assert "2 measured trials per workload" in text
    assert proc.stdout.strip().splitlines()[-1] == table[2]  # the same table on stdout


# -- without TVM ---------------------------------------------------------------------------

@pytest.mark.parametrize("argv, message", [
    (["--workloads", "gemm,vgg"], "unknown vgg"),
    (["--workloads", ","], "(none given)"),
    (["--trials", "0"], "--trials must be at least 1"),
    (["--workers", "0"], "--workers must be at least 1"),
])
def test_bad_arguments(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        T.parse_args(argv)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_quick_defaults():
    args = T.parse_args(["--quick"])
    assert (args.names, args.trials, args.repeats, args.min_repeat_ms) == (list(T.WORKLOADS), 4, 3, 10)
    args = T.parse_args(["--workloads", "resnet18"])
    assert (args.names, args.trials, args.repeats, args.min_repeat_ms) == (["resnet18"], 64, 10, 100)


def test_workload_models_match_their_description():
    """The full-size models are what the issue names (built, not run: that is the lead's job)."""
    from kiln.bench import ort_session

    gemm, conv, resnet = T.make_workloads(["gemm", "conv", "resnet18"], quick=False)
    assert gemm.flops == 2 * 1024 ** 3 and gemm.feeds()["x"].shape == (1024, 1024)
    assert conv.flops == 2 * 56 * 56 * 64 * 64 * 9 and conv.feeds()["x"].shape == (1, 64, 56, 56)
    assert [n.op_type for n in conv.model().graph.node] == ["Conv"]
    assert resnet.feeds()["input"].shape == (1, 3, 224, 224)
    qconv = T.make_workloads(["conv"], quick=True)[0]
    (y,) = ort_session(qconv.model()).run(None, qconv.feeds())
    assert y.shape == (1, 16, 14, 14) and np.isfinite(y).all()


def test_table_shows_failures_and_missing_values():
    rows = [T.Result("gemm", "MatMul", 4, tvm_ms=2.0, kiln_ms=1.0, untuned_ms=3.0, ratio=2.0, tvm_err=1e-7,
                     kiln_err=0.0, tvm_tune_s=90, kiln_tune_s=30, tvm_tasks=1, tvm_tuned=1, kiln_tasks=1, kiln_tuned=1),
            T.Result("conv", "Conv", 4, kiln_ms=1.5, notes="MetaSchedule tuning failed: ValueError: x | y")]
    lines = T.markdown_table(rows).splitlines()
    assert lines[2] == "| gemm | 2.000 | 1.000 | 2.00 | 3.000 | 1.5 | 0.5 | 1 of 1 / 1 of 1 | 1.0e-07 / 0.0e+00 |  |"
    assert lines[3] == ("| conv | — | 1.500 | — | — | — | — | — / — | — / — | "
                        "MetaSchedule tuning failed: ValueError: x \\| y |")


def test_refuses_a_work_dir_with_old_databases(tmp_path, capsys):
    """Both tuners resume from what their database holds: a reused one breaks the equal budget."""
    old = tmp_path / "gemm-kiln"
    old.mkdir()
    (old / "records.jsonl").write_text("{}\n")
    assert T.main(["--quick", "--workloads", "gemm", "--work-dir", str(tmp_path)]) == 2
    assert "already holds tuning databases (gemm-kiln)" in capsys.readouterr().err


def test_missing_metaschedule_is_a_clear_error(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "psutil", None)  # `import psutil` now raises ImportError
    assert T.main(["--quick", "--workloads", "gemm"]) == 2
    err = capsys.readouterr().err
    assert "TVM MetaSchedule is not importable" in err and "apache-tvm==0.27.0.post1" in err


def test_a_wrong_answer_gets_no_ratio():
    from kiln.bench import Row

    res, notes = T.Result("gemm", "MatMul", 4), []
    T.add_timings(res, [Row("gemm", "tvm-ms", median_ms=1.0, max_rel_err=0.5),
                        Row("gemm", "kiln", median_ms=2.0, max_rel_err=1e-6),
                        Row("gemm", "kiln-untuned", error="CompileError: boom")], notes)
    assert (res.tvm_ms, res.kiln_ms, res.untuned_ms, res.ratio) == (1.0, 2.0, None, None)
    assert (res.tvm_matched, res.kiln_matched) == (False, True)
    assert notes == ["tvm-ms does not match ONNX Runtime (max rel err 0.5, no reference)",
                     "kiln-untuned: CompileError: boom"]
    res, notes = T.Result("gemm", "MatMul", 4), []
    T.add_timings(res, [Row("gemm", "tvm-ms", median_ms=3.0, max_rel_err=0.0),
                        Row("gemm", "kiln", median_ms=2.0, max_rel_err=1e-4)], notes)
    assert res.ratio == 1.5 and notes == []

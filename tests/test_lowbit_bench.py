"""benchmarks/lowbit_bench.py on tiny sizes: every workload builds, every peer runs and is
checked against ONNX Runtime, the targets are ratios of the right rows, the report is
written. (How fast anything is, is the benchmark's business, not the test's.)"""
from __future__ import annotations

import pytest

from benchmarks import lowbit_bench as L
from kiln import bench as B
from tests.conftest import require_toolchain


@pytest.fixture(scope="module")
def gcc():
    require_toolchain("gcc")


def test_quick_run_writes_every_target(gcc, tmp_path, capsys):
    out = tmp_path / "lowbit.md"
    assert L.main(["--quick", "--repeats", "2", "--budget-s", "1", "--write", "--out", str(out)]) == 0
    md = out.read_text()
    for case in L.cases(quick=True):
        assert f"| {case.workload.name} | kiln" in md
        assert case.what in md
    assert md.count("| met |") + md.count("| **not met** |") == len(L.cases(quick=True))  # a verdict per target
    printed = capsys.readouterr().out
    assert "| acceptance | ratio | target |" in printed


def test_peers_compile_the_model_they_are_given(gcc):
    """The int8 and fp32 Kiln peers time different models on the same inputs; the int8
    one matches ONNX Runtime on the quantized model, the fp32 one only approximately."""
    case = next(c for c in L.cases(quick=True) if c.workload.name.startswith("gemm_int8"))
    rows = {r.peer: r for r in B.bench_workload(case.workload, case.peers,
                                                  B.Options(repeats=1, warmup=1, min_sample_s=0.0, pause_s=0.0))}
    assert rows["kiln int8"].ok and rows["kiln fp32"].ok and rows["ort int8"].ok
    assert rows["kiln int8"].max_rel_err <= 0.02          # within a quantization step or so
    assert rows["kiln fp32"].max_rel_err > 0              # a different (float) computation
    assert L.target_ratio(list(rows.values()), case.target) == pytest.approx(
        rows["kiln fp32"].median_ms / rows["kiln int8"].median_ms)


def test_unknown_workload_is_an_error(capsys):
    assert L.main(["--quick", "--only", "nope"]) == 2
    assert "nope" in capsys.readouterr().err

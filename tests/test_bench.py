"""The benchmark harness (kiln/bench/), the workload suite and ``kiln bench``, on tiny sizes.

These check that the harness measures honestly and never stops on a failing peer, not how
fast anything is. TVM is not a test dependency: its test hides the package.
"""
from __future__ import annotations

import sys
import time

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from benchmarks import suite as S
from benchmarks import workloads as W
from kiln import bench as B
from kiln.bench.harness import _prepare
from kiln.cli import cli
from tests.conftest import require_toolchain
from tests.test_cli import tiny_model

FAST = B.Options(repeats=2, warmup=1, min_sample_s=0.001, budget_s=5.0, pause_s=0.0)


@pytest.fixture(scope="module")
def gcc():
    require_toolchain("gcc")


def _by_peer(rows):
    return {r.peer: r for r in rows}


@pytest.mark.parametrize("workload", [W.gemm(16, 24, 8), W.conv(8, 4, 6, 3)], ids=["gemm", "conv"])
def test_harness_times_every_peer_and_checks_outputs(gcc, workload):
    rows = B.bench_workload(workload, B.make_peers(["kiln", "ort", "torch"]), FAST)
    got = _by_peer(rows)
    assert list(got) == ["kiln", "ort", "torch"]
    for r in rows:
        assert r.ok, r.error
        assert r.runs == 2 and r.p10_ms <= r.median_ms <= r.p90_ms
        assert r.max_rel_err < 1e-4       # every peer computes the same function
        assert r.gflops > 0               # both workloads have a FLOP count
    assert got["kiln"].ratio == 1.0
    assert got["ort"].ratio == pytest.approx(got["ort"].median_ms / got["kiln"].median_ms)


class _Broken:
    name = "broken"

    def version(self):
        return "broken 0"

    def prepare(self, workload):
        raise RuntimeError("cannot build | this workload")


class _FailsLater:
    """Runs once (warm-up and output check), then fails while being timed."""

    name = "flaky"

    def version(self):
        return "flaky 0"

    def prepare(self, workload):
        calls = []

        def run():
            calls.append(1)
            if len(calls) > 1:
                raise ValueError("lost the device")
            return {"y": np.zeros((4, 4), np.float32)}
        return run


def test_failing_peers_are_recorded_not_raised():
    rows = B.bench_workload(W.gemm(4, 4, 4), [B.OrtPeer(), _Broken(), _FailsLater()], FAST)
    got = _by_peer(rows)
    assert got["ort"].ok
    assert got["broken"].error == "RuntimeError: cannot build | this workload"
    assert got["broken"].median_ms is None and got["broken"].ratio is None
    assert "failed while timing: ValueError: lost the device" in got["flaky"].error
    table = B.markdown_table(rows)
    assert "cannot build \\| this workload" in table  # a pipe would break the markdown row


class _SlowStart:
    """Its first calls take 2 ms, the ones after about nothing: a runtime still placing its
    threads while it warms up."""

    name = "slow_start"

    def version(self):
        return "slow_start 0"

    def prepare(self, workload):
        calls = []

        def run():
            calls.append(1)
            if len(calls) <= 3:
                time.sleep(0.002)
            return {"y": np.zeros((4, 4), np.float32)}
        return run


def test_a_sample_is_sized_by_calls_back_to_back_not_by_one_slow_warm_up():
    opts = B.Options(repeats=1, warmup=2, min_sample_s=0.02, budget_s=5.0, pause_s=0.0)
    t = _prepare(_SlowStart(), W.gemm(4, 4, 4), "no reference", opts, lambda s: None)
    assert t.run is not None and t.row.error is None
    # sized by the 2 ms warm-up call a sample would be 10 calls; back to back they take
    # microseconds, so a sample is the most calls one may have
    assert t.inner == 1000


def test_missing_tvm_reports_not_installed(monkeypatch):
    monkeypatch.setitem(sys.modules, "tvm", None)  # `import tvm` now raises ImportError
    rows = B.bench_workload(W.softmax((2, 3)), B.make_peers(["ort", "tvm"]), FAST)
    got = _by_peer(rows)
    assert got["ort"].ok
    assert got["tvm"].error.startswith("not installed")
    assert "| softmax_2x3 | tvm | — |" in B.markdown_table(rows)


def test_numpy_peer_only_for_gemm_and_torch_needs_a_definition():
    peers = B.make_peers(["ort", "numpy", "torch"])
    gemm = _by_peer(B.bench_workload(W.gemm(8, 8, 8), peers, FAST))
    assert gemm["numpy"].ok and gemm["numpy"].max_rel_err < 1e-5
    model = onnx.load_from_string(W.softmax((2, 3)).model().SerializeToString())
    rows = _by_peer(B.bench_workload(B.onnx_workload(model), peers, FAST))
    assert "numpy" not in rows                        # not applicable: no row at all
    assert rows["torch"].error.startswith("no torch definition")


def test_torch_definitions_of_the_models_match_onnx_runtime():
    """The torch modules load the ONNX builders' weights in builder order: a mix-up shows."""
    for w in W.select(W.suite(quick=True), "models,attention"):
        torch_row = _by_peer(B.bench_workload(w, B.make_peers(["torch"]), B.Options(repeats=1, warmup=1,
                                                                                  pause_s=0)))["torch"]
        assert torch_row.ok, (w.name, torch_row.error)
        assert torch_row.max_rel_err < 1e-4, (w.name, torch_row.max_rel_err)


def test_workload_selection():
    quick = W.suite(quick=True)
    names = [w.name for w in W.select(quick, "gemm,resnet18")]
    assert names == ["gemm_64", "gemm_128", "ffn_in_16x64x256", "ffn_out_16x256x64", "resnet18"]
    assert all(w.kind == "kernel" for w in W.select(quick, "kernels"))
    assert len(W.select(quick, "all")) == len(quick)
    with pytest.raises(ValueError, match="unknown workload"):
        W.select(quick, "gemm,nope")
    full = {w.name for w in W.suite()}
    assert {"gemm_1024", "ffn_in_128x768x3072", "conv3x3_56x56x64_64", "dw3x3_112x112x32",
            "layernorm_128x768", "softmax_12x128x128", "attention_s128_h768", "gpt"} <= full


def test_the_model_zoo_comes_only_when_named():
    full = W.suite()
    assert not any(w.group == "zoo" for w in W.select(full, "all"))
    zoo = W.select(full, "zoo")
    assert [w.name for w in zoo] == list(W.ZOO)
    squeezenet = W.select(full, "squeezenet")[0]
    feeds = squeezenet.feeds()  # the shipped file loads; its one input gets seeded data
    assert [a.shape for a in feeds.values()] == [(1, 3, 224, 224)]


def test_markdown_table_and_summaries():
    rows = [B.Row("m", "kiln", 2.0, 1.5, 2.5, runs=5, gflops=10.0, max_rel_err=1e-7, ratio=1.0, prepare_s=1.2),
            B.Row("m", "ort", 1.0, 0.9, 1.1, runs=5, max_rel_err=0.0, ratio=0.5, prepare_s=0.1),
            B.Row("m", "tvm", error="not installed (No module named 'tvm')")]
    lines = B.markdown_table(rows).splitlines()
    assert lines[0] == ("| workload | peer | median ms | p10–p90 ms | GFLOP/s | max rel err | peer/kiln | runs | "
                        "prepare s | note |")
    assert lines[1].startswith("|---|---|---:|")
    assert lines[2] == "| m | kiln | 2.000 | 1.500–2.500 | 10.0 | 1.0e-07 | 1.00 | 5 | 1.2 |  |"
    assert lines[3] == "| m | ort | 1.000 | 0.900–1.100 | — | 0.0e+00 | 0.50 | 5 | 0.1 |  |"
    assert lines[4] == "| m | tvm | — | — | — | — | — | — | — | not installed (No module named 'tvm') |"
    assert all(line.count("|") == 11 for line in lines)
    assert B.ratio_summary(rows, "ort", ["m"]) == "ort/kiln on m: 0.50 (Kiln slower)"
    assert B.ratio_summary(rows, "tvm", ["m"]) == "tvm/kiln: no workload where both ran"
    assert B.geomean([2.0, 8.0]) == pytest.approx(4.0)
    assert B.fmt_ratio(0.0042) == "0.0042"
    assert B.max_rel_err([np.array([1.0, np.nan])], [np.array([1.0, 2.0])]) == float("inf")


def test_suite_writes_markdown_and_chart(gcc, tmp_path, monkeypatch, capsys):
    # matplotlib is a test dependency (pyproject's `test` extra): the chart is checked in CI too
    monkeypatch.setattr(S, "OUT_MD", tmp_path / "suite.md")
    monkeypatch.setattr(S, "OUT_PNG", tmp_path / "suite.png")
    argv = ["--quick", "--workloads", "gemm_64,softmax", "--peers", "kiln,ort,numpy", "--repeats", "2",
            "--warmup", "1", "--min-sample-ms", "1", "--pause-ms", "0", "--no-isolate", "--write"]
    assert S.main(argv) == 0
    out = capsys.readouterr().out
    assert "| gemm_64 | numpy |" in out and "| softmax_2x16x16 | kiln |" in out
    assert "gemm_64: Kiln " in out and "GFLOP/s, numpy (OpenBLAS)" in out
    md = (tmp_path / "suite.md").read_text()
    for needle in ("- Date: ", "- Machine: ", "onnxruntime ", "numpy ", "--quick --workloads",
                   "## Results", "| softmax_2x16x16 | ort |", "![peer time relative to Kiln](suite.png)"):
        assert needle in md
    assert (tmp_path / "suite.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_kiln_bench_cli_prints_a_table(gcc, tmp_path):
    path = tmp_path / "tiny.onnx"
    onnx.save(W.conv(6, 2, 3, 3).model(), str(path))
    result = CliRunner().invoke(cli, ["bench", str(path), "--against", "ort,torch", "--repeats", "2"])
    assert result.exit_code == 0, result.output
    assert "| tiny | kiln |" in result.output and "| tiny | ort |" in result.output
    assert "| tiny | torch | — |" in result.output and "no torch definition" in result.output
    assert "ort/kiln on tiny: " in result.output
    # GFLOP/s of the model's convolution, and its share of the peak measured on this machine
    kiln_row = next(line for line in result.output.splitlines() if line.startswith("| tiny | kiln |"))
    assert kiln_row.split("|")[5].strip() != "—"
    assert "% of this machine's fp32 peak" in result.output


def test_kiln_bench_cli_rejects_bad_arguments(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(W.softmax((2, 3)).model(), str(path))
    bad_peer = CliRunner().invoke(cli, ["bench", str(path), "--against", "ort,onnx"])
    assert bad_peer.exit_code == 2 and "unknown peer(s) onnx" in bad_peer.output
    bad_target = CliRunner().invoke(cli, ["bench", str(path), "--target", "cuda"])
    assert bad_target.exit_code == 2 and "host target only" in bad_target.output
    bad_shape = CliRunner().invoke(cli, ["bench", str(path), "--input-shape", "q=1,2"])
    assert bad_shape.exit_code == 2 and "not a model input" in bad_shape.output
    dynamic = tmp_path / "dyn.onnx"
    onnx.save(tiny_model("batch"), str(dynamic))
    unbound = CliRunner().invoke(cli, ["bench", str(dynamic)])
    assert unbound.exit_code == 2 and "--input-shape x=D1,D2" in unbound.output

"""The cuda target: launch plans, generated CUDA compiled by nvcc (both archs, warnings as
errors), snapshots, the exported CMake project and bad inputs; on a GPU (``gpu`` marker)
every test model against ONNX Runtime, DLPack in and out, CUDA-event timing and
compute-sanitizer's memcheck."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import kiln
from examples import models
from kiln.errors import TargetError, ToolchainError
from kiln.passes.gpu_schedule_cuda import plan_kernel
from kiln.targets.cuda import CudaTarget, nvcc_build
from tests.conftest import require_toolchain
from tests.test_codegen import check_snapshot, gemm_bias_relu
from tests.test_light_models import LIGHT_DIR
from tests.test_models import CASES
from tests.util import assert_close, ort_run

LIGHT_SUBSET = ["squeezenet", "shufflenet"]   # every light model compiles; these two keep CI short


def matmul_model(dtype=TensorProto.FLOAT16, m=128, k=64, n=96, seed=0):
    np_dtype = helper.tensor_dtype_to_np_dtype(dtype)
    w = numpy_helper.from_array(np.random.default_rng(seed).standard_normal((k, n)).astype(np_dtype), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"]), helper.make_node("Relu", ["y"], ["z"])], "mm",
        [helper.make_tensor_value_info("x", dtype, [m, k])], [helper.make_tensor_value_info("z", dtype, [m, n])],
        [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _plans(compiled):
    return [launch for k in compiled.result.kernels
            for launch in plan_kernel(k.name, k.unscheduled, k.stages)]


# -- plans (no compiler) -------------------------------------------------------------------

def test_bert_plans_gemm_rows_and_flat():
    m = kiln.compile(CASES["bert_encoder_masked"](), target="cuda")
    kinds = [launch.kind for launch in _plans(m)]
    assert kinds.count("gemm") >= 6           # projections, FFN, attention products
    assert kinds.count("rows") >= 2           # softmax and layer norms, one launch each
    rows = [launch for launch in _plans(m) if launch.kind == "rows"]
    assert any(len(launch.nests) == 3 for launch in rows)  # max, sum, normalize fused in one launch
    assert "__shfl_xor_sync" in m.source() and "__syncthreads" in m.source()


def test_fp16_matmul_is_tensorized_fp32_is_not():
    half = _plans(kiln.compile(matmul_model(TensorProto.FLOAT16), target="cuda"))
    single = _plans(kiln.compile(matmul_model(TensorProto.FLOAT), target="cuda"))
    assert [p.gemm.tile.tensorize for p in half if p.kind == "gemm"] == [True]
    assert [p.gemm.tile.tensorize for p in single if p.kind == "gemm"] == [False]


def test_convolution_reading_padded_input_gets_separate_launches():
    """A nest reading another nest's output at other rows must not share its launch."""
    m = kiln.compile(CASES["small_cnn"](), target="cuda")
    for k in m.result.kernels:
        launches = plan_kernel(k.name, k.unscheduled, k.stages)
        if len(k.stages) > 1 and any(p.kind == "gemm" for p in launches):
            assert len(launches) == len(k.stages)


def test_capabilities_skip_nchwc():
    assert CudaTarget().capabilities().nchwc is False
    m = kiln.compile(CASES["small_cnn"](), target="cuda")
    assert all(n.op != "conv2d_nchwc" for n in m.graph.nodes)


def test_target_options():
    assert CudaTarget().archs == ("sm_80", "sm_90")
    assert kiln.compile(gemm_bias_relu(), target="cuda:sm_90").target == "cuda:sm_90"
    with pytest.raises(TargetError, match="sm_80, sm_90"):
        kiln.compile(gemm_bias_relu(), target="cuda:sm_75")


def test_snapshot_cuda_gemm_bias_relu():
    m = kiln.compile(gemm_bias_relu(), target="cuda")
    assert m.result.source.main == "model.cu"
    check_snapshot("gemm_bias_relu.cu", m.source())
    check_snapshot("gemm_bias_relu_cuda.h", m.header())


def test_snapshot_cuda_softmax_fp16_gemm():
    check_snapshot("matmul_relu_fp16.cu", kiln.compile(matmul_model(), target="cuda").source())


# -- nvcc (CI: no GPU needed) ----------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(CASES))
def test_test_models_compile_for_sm80_and_sm90(name):
    require_toolchain("nvcc")
    m = kiln.compile(CASES[name](), target="cuda")
    obj = nvcc_build(m.files, kind="object")   # one nvcc call: both archs, -Werror all-warnings
    assert obj.stat().st_size > 0


@pytest.mark.parametrize("name", LIGHT_SUBSET)
def test_light_models_compile(name):
    require_toolchain("nvcc")
    m = kiln.compile(onnx.load(os.path.join(LIGHT_DIR, f"light_{name}.onnx")), target="cuda")
    assert nvcc_build(m.files, kind="object").stat().st_size > 0


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_tensor_core_gemm_ptx_and_cubin(arch):
    require_toolchain("nvcc")
    m = kiln.compile(matmul_model(), target="cuda")
    ptx = nvcc_build(m.files, (arch,), kind="ptx").read_text()
    assert f".target {arch}" in ptx
    assert "wmma.mma.sync" in ptx or "mma.sync" in ptx   # really on tensor cores
    assert nvcc_build(m.files, (arch,), kind="cubin").read_bytes()[:4] == b"\x7fELF"


def test_nvcc_rejection_shows_numbered_source(tmp_cache):
    require_toolchain("nvcc")
    bad = "#include <stdint.h>\n__global__ void k(float* x) { x[0] = undeclared; }\n"
    with pytest.raises(ToolchainError, match=r"undeclared[\s\S]*2 \| __global__"):
        nvcc_build({"model.cu": bad}, kind="object")


def test_nvcc_build_cache_hits(tmp_cache):
    require_toolchain("nvcc")
    files = kiln.compile(gemm_bias_relu(), target="cuda").files
    first = nvcc_build(files, kind="object")
    mtime = first.stat().st_mtime_ns
    assert nvcc_build(files, kind="object") == first and first.stat().st_mtime_ns == mtime


def test_missing_nvcc_is_a_toolchain_error(monkeypatch):
    from kiln.targets import cuda

    monkeypatch.setattr(cuda, "NVCC", "kiln-no-such-nvcc")
    with pytest.raises(ToolchainError, match="KILN_NVCC"):
        nvcc_build({"model.cu": ""})


def test_bad_build_kind_and_multi_arch_ptx():
    with pytest.raises(ToolchainError, match="unknown nvcc build kind"):
        nvcc_build({"model.cu": ""}, kind="exe")
    with pytest.raises(ToolchainError, match="one architecture"):
        nvcc_build({"model.cu": ""}, ("sm_80", "sm_90"), kind="ptx")


def test_run_without_cupy_is_a_clean_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)   # import cupy raises ImportError
    m = kiln.compile(gemm_bias_relu(), target="cuda")
    with pytest.raises(ToolchainError, match="CuPy"):
        m.run({"x": np.zeros((12, 8), np.float32)})


def test_export_is_a_cmake_project_that_builds(tmp_path):
    require_toolchain("nvcc")
    cmake = require_toolchain("cmake")
    m = kiln.compile(gemm_bias_relu(), target="cuda:sm_80")
    out = m.export(tmp_path / "proj")
    for name in ("model.cu", "model.h", "weights.bin", "manifest.json", "CMakeLists.txt", "demo.cu", "README.md"):
        assert (out / name).exists(), name
    build = tmp_path / "build"
    env = dict(os.environ, CUDACXX=shutil.which("nvcc"))
    cfg = subprocess.run([cmake, "-S", str(out), "-B", str(build)], capture_output=True, text=True, env=env)
    assert cfg.returncode == 0, cfg.stdout + cfg.stderr
    b = subprocess.run([cmake, "--build", str(build), "-j", "2"], capture_output=True, text=True, env=env)
    assert b.returncode == 0, b.stdout + b.stderr
    assert (build / "libkiln_model.so").exists() and (build / "kiln_model_demo").exists()


# -- on the GPU ------------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("name", sorted(CASES))
def test_gpu_model_matches_ort(name):
    model = CASES[name]()
    feeds = models.example_inputs(model, seed=1)
    got = kiln.compile(model, target="cuda").run(feeds)
    assert_close(got, ort_run(model, feeds), rtol=1e-3, atol=1e-4)


@pytest.mark.gpu
@pytest.mark.parametrize("name", LIGHT_SUBSET)
def test_gpu_light_model_matches_ort(name):
    from tests.test_light_models import _inputs

    model = onnx.load(os.path.join(LIGHT_DIR, f"light_{name}.onnx"))
    feeds = _inputs(model)
    want = ort_run(model, feeds)
    got = kiln.compile(model, target="cuda").run(feeds)
    for k in want:
        scale = float(np.abs(want[k]).max()) or 1.0
        assert_close({k: got[k]}, {k: want[k]}, rtol=1e-3, atol=1e-4 * scale)


@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(128, 64, 96), (100, 72, 50), (256, 512, 384)])
def test_gpu_tensor_core_gemm_matches_numpy(shape):
    m_, k_, n_ = shape
    model = matmul_model(TensorProto.FLOAT16, m_, k_, n_)
    w = numpy_helper.to_array(model.graph.initializer[0]).astype(np.float32)
    x = np.random.default_rng(1).standard_normal((m_, k_)).astype(np.float16)
    got = kiln.compile(model, target="cuda").run({"x": x})["z"].astype(np.float32)
    want = np.maximum(x.astype(np.float32) @ w, 0)
    np.testing.assert_allclose(got, want, rtol=1e-2, atol=1e-2 * np.sqrt(k_))


@pytest.mark.gpu
def test_gpu_dlpack_in_and_out_and_event_timing():
    import cupy as cp

    m = kiln.compile(gemm_bias_relu(), target="cuda")
    x = np.random.default_rng(0).standard_normal((12, 8)).astype(np.float32)
    runner = m.build()
    out = runner.run_device({"x": cp.asarray(x)})["y"]
    assert isinstance(out, cp.ndarray)
    np.testing.assert_allclose(cp.asnumpy(out), m.run({"x": x})["y"])
    np.testing.assert_allclose(cp.asnumpy(out), kiln.compile(gemm_bias_relu()).run({"x": x})["y"], rtol=1e-5,
                               atol=1e-5)
    assert 0 < runner.time({"x": x}, repeats=5) < 1000


@pytest.mark.gpu
def test_gpu_bad_inputs_are_clean_errors():
    from kiln.errors import InputError

    m = kiln.compile(gemm_bias_relu(), target="cuda")
    with pytest.raises(InputError, match="shape"):
        m.run({"x": np.zeros((3, 8), np.float32)})
    with pytest.raises(InputError, match="dtype"):
        m.run({"x": np.zeros((12, 8), np.float64)})


@pytest.mark.gpu
@pytest.mark.parametrize("name", sorted(CASES))
def test_gpu_compute_sanitizer_memcheck_clean(name, tmp_path):
    sanitizer = shutil.which("compute-sanitizer") or "/usr/local/cuda/bin/compute-sanitizer"
    if not os.path.exists(sanitizer):
        pytest.fail("compute-sanitizer not found (it ships with the CUDA toolkit)")
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(f"""
        import sys; sys.path.insert(0, {os.getcwd()!r})
        import kiln
        from examples import models
        from tests.test_models import CASES
        model = CASES[{name!r}]()
        kiln.compile(model, target="cuda").run(models.example_inputs(model, seed=1))
    """))
    proc = subprocess.run([sanitizer, "--tool", "memcheck", "--error-exitcode", "3", sys.executable, str(script)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0 and "ERROR SUMMARY: 0 errors" in proc.stdout, proc.stdout[-4000:] + proc.stderr[-2000:]


def test_cli_compile_target_cuda_writes_the_project(tmp_path):
    model = tmp_path / "gbr.onnx"
    onnx.save(gemm_bias_relu(), model)
    out = tmp_path / "proj"
    proc = subprocess.run([sys.executable, "-m", "kiln.cli", "compile", str(model), "--target", "cuda", "-o", str(out)],
                          capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert proc.returncode == 0, proc.stderr
    assert "__global__" in (out / "model.cu").read_text()
    assert "CUDA" in (out / "CMakeLists.txt").read_text()

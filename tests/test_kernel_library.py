"""kiln.kernel: one operator / a subgraph / a model as a library with a C ABI, called from
Python through DLPack, from a C program (plain and ASan builds), from PyTorch (eager,
torch.compile, opcheck) and through TVM-FFI -- each against a numpy or torch reference."""
from __future__ import annotations

import ctypes
import json
import subprocess

import numpy as np
import pytest
from onnx import helper

import kiln
from kiln.errors import InputError, KilnError
from tests.conftest import require_toolchain
from tests.util import make_model

RNG = np.random.default_rng(11)
W1 = RNG.standard_normal((16, 32)).astype(np.float32)
B1 = RNG.standard_normal(32).astype(np.float32)
W2 = RNG.standard_normal((32, 8)).astype(np.float32)


def mlp_model():
    """x[4,16] -> MatMul -> Add -> Relu -> MatMul -> Softmax -> y[4,8] (nodes 0..4)."""
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h0"]), helper.make_node("Add", ["h0", "b1"], ["h1"]),
             helper.make_node("Relu", ["h1"], ["h2"]), helper.make_node("MatMul", ["h2", "W2"], ["h3"]),
             helper.make_node("Softmax", ["h3"], ["y"], axis=-1)]
    return make_model(nodes, [("x", np.float32, [4, 16])], [("y", np.float32, [4, 8])],
                      [("W1", W1), ("b1", B1), ("W2", W2)], name="mlp")


def mlp_reference(x):
    h = np.maximum(x @ W1 + B1, 0) @ W2
    e = np.exp(h - h.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def gemm_reference(a, b, c):
    return 0.5 * a @ b + c


@pytest.fixture(scope="module")
def gemm():
    require_toolchain("gcc")
    return kiln.kernel("Gemm", inputs={"A": ((8, 16), "float32"), "B": ((16, 4), "float32"),
                                       "C": ((4,), "float32")}, attrs={"alpha": 0.5}, name="t_gemm")


@pytest.fixture(scope="module")
def mlp():
    require_toolchain("gcc")
    return kiln.kernel(mlp_model(), name="t_mlp")


def gemm_inputs():
    return [RNG.standard_normal(s).astype(np.float32) for s in ((8, 16), (16, 4), (4,))]


# -- what kiln.kernel compiles ---------------------------------------------------------------

def test_operator_kernel_numpy_and_torch(gemm):
    import torch

    a, b, c = gemm_inputs()
    np.testing.assert_allclose(gemm(a, b, c), gemm_reference(a, b, c), rtol=1e-5, atol=1e-5)
    y = gemm(*(torch.from_numpy(t) for t in (a, b, c)))
    assert isinstance(y, torch.Tensor) and y.shape == (8, 4)
    np.testing.assert_allclose(y.numpy(), gemm_reference(a, b, c), rtol=1e-5, atol=1e-5)


def test_dlpack_is_zero_copy(gemm):
    import torch

    a, b, c = (torch.from_numpy(t) for t in gemm_inputs())
    call = gemm.callable()
    assert call.view(a, gemm.inputs[0], "input").ctypes.data == a.data_ptr()  # the input is not copied
    out = torch.full((8, 4), -1.0)
    ptr = out.data_ptr()
    result = gemm(a, b, c, out=out)  # written in place
    assert result is out and out.data_ptr() == ptr
    np.testing.assert_allclose(out.numpy(), gemm_reference(a.numpy(), b.numpy(), c.numpy()), rtol=1e-5, atol=1e-5)


def test_model_kernel_with_weights_and_workspace(mlp):
    x = RNG.standard_normal((4, 16)).astype(np.float32)
    assert mlp.workspace_size > 0 and len(mlp.weights) == (16 * 32 + 32 + 32 * 8) * 4
    np.testing.assert_allclose(mlp(x), mlp_reference(x), rtol=1e-5, atol=1e-6)


def test_node_range_and_named_cut():
    mid = kiln.kernel(mlp_model(), nodes=(1, 4), name="t_mid")
    assert [t["name"] for t in mid.inputs] == ["h0"] and [t["name"] for t in mid.outputs] == ["h3"]
    h0 = RNG.standard_normal((4, 32)).astype(np.float32)
    np.testing.assert_allclose(mid(h0), np.maximum(h0 + B1, 0) @ W2, rtol=1e-5, atol=1e-5)
    tail = kiln.kernel(mlp_model(), inputs=["h2"], outputs=["y"], name="t_tail")
    h = np.abs(RNG.standard_normal((4, 32)).astype(np.float32))
    e = np.exp(h @ W2 - (h @ W2).max(-1, keepdims=True))
    np.testing.assert_allclose(tail(h), e / e.sum(-1, keepdims=True), rtol=1e-5, atol=1e-6)


def test_manifest_holds_the_interface_and_tuning_record(mlp, tmp_path):
    lib_path = mlp.build(tmp_path)
    files = {p.name for p in tmp_path.iterdir()}
    assert {"libt_mlp.so", "t_mlp.h", "t_mlp.c", "model.c", "model.h", "manifest.json"} <= files
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["target"] == "host" and manifest["layout"].startswith("row-major")
    assert manifest["inputs"] == [{"name": "x", "cname": "x", "shape": [4, 16], "dtype": "float32", "ctype": "float"}]
    assert manifest["outputs"][0]["shape"] == [4, 8] and manifest["workspace_size"] == mlp.workspace_size
    kernels = manifest["tuning"]["kernels"]
    assert len(kernels) == mlp.compiled.kernel_count and all(k["trace"] for k in kernels)
    assert kernels[0]["trace"][0]["prim"] in {"split", "reorder", "fuse", "parallel", "vectorize", "unroll",
                                              "decompose_reduction", "compute_inline"}
    lib = ctypes.CDLL(str(lib_path))  # the library describes itself too
    lib.t_mlp_manifest.restype = ctypes.c_char_p
    assert json.loads(lib.t_mlp_manifest().decode()) == manifest
    lib.t_mlp_workspace_size.restype = ctypes.c_size_t
    assert lib.t_mlp_workspace_size() == mlp.workspace_size
    assert not hasattr(lib, "kiln_model_run")  # hidden: several kernel libraries can share a process


def test_db_is_passed_to_compile(monkeypatch):
    import kiln.api

    seen = {}
    real = kiln.api.compile

    def spy(model, target="host", **kw):
        seen["db"] = kw.pop("db")
        return real(model, target, **kw)

    monkeypatch.setattr(kiln.api, "compile", spy)
    lib = kiln.kernel("Relu", inputs={"X": ((4,), "float32")}, db="tuning/", name="t_relu_db")
    assert seen["db"] == "tuning/" and lib.manifest()["tuning"]["db"] == "tuning/"


@pytest.mark.parametrize("kwargs, match", [
    (dict(model="Gemm", inputs={"A": ((8, 16), "float32"), "B": ((3, 4), "float32")}), "Gemm does not accept"),
    (dict(model="Gemm", inputs={"A": "oops"}), "expected \\(shape, dtype\\)"),
    (dict(model="Gemm"), "needs inputs="),
    (dict(model="NoSuchOp"), "neither a file nor an ONNX operator"),
    (dict(model="Relu", inputs={"X": ((4,), "float32")}, name="9bad"), "must be a C identifier"),
])
def test_bad_kernel_requests(kwargs, match):
    model = kwargs.pop("model")
    with pytest.raises(KilnError, match=match):
        kiln.kernel(model, **kwargs)


def test_bad_node_range():
    with pytest.raises(KilnError, match=r"outside the model's 5 nodes; expected 0 <= start < stop <= 5"):
        kiln.kernel(mlp_model(), nodes=(3, 9))
    with pytest.raises(KilnError, match=r"not in the model"):
        kiln.kernel(mlp_model(), inputs=["nope"], outputs=["y"])


# -- bad tensors: each error names what was expected and what was received ----------------

class FakeDeviceTensor:
    """What a CuPy array shows through the DLPack protocol: a CUDA device."""

    def __dlpack_device__(self):
        return (2, 0)

    def __dlpack__(self, **kw):  # never reached: the device is checked first
        raise AssertionError("the kernel tried to read a CUDA tensor")


def test_bad_tensors_through_dlpack(gemm):
    import torch

    a, b, c = gemm_inputs()
    raw = np.zeros(a.nbytes + 4, np.uint8)
    misaligned = raw[1:1 + a.nbytes].view(np.float32).reshape(8, 16)
    cases = [
        ((a[:, :8], b, c), r"input 'A' has shape \(8, 8\); expected \(8, 16\)"),
        ((a.astype(np.float64), b, c), r"input 'A' has dtype float64; expected float32"),
        ((torch.from_numpy(a).double(), b, c), r"input 'A' has dtype float64; expected float32"),
        ((FakeDeviceTensor(), b, c), r"input 'A' is on device cuda:0; expected cpu:0"),
        ((torch.empty(8, 16, device="meta"), b, c), r"device cannot be exchanged.*expected a cpu tensor"),
        ((np.asfortranarray(a), b, c), r"input 'A' is not contiguous \(strides \(1, 8\) elements\); "
                                       r"expected row-major contiguous strides \(16, 1\)"),
        ((torch.from_numpy(a.T.copy()).t(), b, c), r"input 'A' is not contiguous"),
        ((misaligned, b, c), r"input 'A' data address 0x[0-9a-f]+ is misaligned; expected a multiple of 4"),
        ((a, b), r"takes 3 input tensor\(s\) \['A', 'B', 'C'\]; got 2"),
        (([1.0], b, c), r"input 'A' is on device|expected a DLPack tensor"),
    ]
    for args, match in cases:
        with pytest.raises(InputError, match=match):
            gemm(*args)
    with pytest.raises(InputError, match=r"output 'output' is read-only"):
        out = np.empty((8, 4), np.float32)
        out.flags.writeable = False
        gemm(a, b, c, out=out)
    with pytest.raises(InputError, match=r"output 'output' has shape \(4, 8\); expected \(8, 4\)"):
        gemm(a, b, c, out=np.empty((4, 8), np.float32))


# -- a C program linked against the library (plain and AddressSanitizer builds) -------------

C_PROGRAM = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "t_mlp.h"

/* usage: prog in.bin out.bin [short]; "short" gives the kernel an output one float too small */
int main(int argc, char** argv) {
  int shrt = argc > 3 && !strcmp(argv[3], "short");
  float* x = malloc(sizeof(float) * T_MLP_X_SIZE);
  float* y = malloc(sizeof(float) * (T_MLP_Y_SIZE - shrt));
  float* y2 = malloc(sizeof(float) * T_MLP_Y_SIZE);
  FILE* f = fopen(argv[1], "rb");
  if (!f || fread(x, sizeof(float), T_MLP_X_SIZE, f) != T_MLP_X_SIZE) return 10;
  fclose(f);
  int rc = t_mlp(x, y);
  if (rc) { fprintf(stderr, "t_mlp: %s\n", t_mlp_strerror(rc)); return 11; }
  if (shrt) return 0;
  size_t ws_bytes = (T_MLP_WORKSPACE_SIZE + 63) / 64 * 64;
  char* ws = aligned_alloc(64, ws_bytes + 64);
  rc = t_mlp_with_workspace(x, y2, ws, T_MLP_WORKSPACE_SIZE);
  if (rc || memcmp(y, y2, sizeof(float) * T_MLP_Y_SIZE)) return 12;
  if (t_mlp_with_workspace(x, y2, ws, T_MLP_WORKSPACE_SIZE - 1) != T_MLP_ERR_WORKSPACE_SIZE) return 13;
  if (t_mlp_with_workspace(x, y2, ws + 1, T_MLP_WORKSPACE_SIZE) != T_MLP_ERR_WORKSPACE_ALIGNMENT) return 14;
  if (t_mlp_with_workspace(NULL, y2, ws, T_MLP_WORKSPACE_SIZE) != T_MLP_ERR_NULL_POINTER) return 15;
  if (t_mlp_with_workspace((const float*)((char*)x + 2), y2, ws, T_MLP_WORKSPACE_SIZE) != T_MLP_ERR_MISALIGNED) return 16;
  if (t_mlp_workspace_size() != T_MLP_WORKSPACE_SIZE) return 17;
  f = fopen(argv[2], "wb");
  fwrite(y, sizeof(float), T_MLP_Y_SIZE, f);
  fclose(f);
  free(x); free(y); free(y2); free(ws);
  return 0;
}
"""


def _build_program(mlp, directory, sanitize: bool):
    gcc = require_toolchain("gcc")
    flags = ["-fsanitize=address", "-fno-omit-frame-pointer", "-g"] if sanitize else []
    lib = mlp.build(directory, extra_flags=flags)
    (directory / "main.c").write_text(C_PROGRAM)
    exe = directory / "main"
    subprocess.run([gcc, "-std=c11", "-O1", *flags, "-o", str(exe), str(directory / "main.c"), f"-I{directory}",
                    f"-L{directory}", "-lt_mlp", f"-Wl,-rpath,{lib.parent}"], check=True, capture_output=True)
    return exe


def _run(exe, *args):
    env = {"ASAN_OPTIONS": "detect_leaks=0:abort_on_error=0", "PATH": "/usr/bin:/bin"}
    return subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True, env=env, timeout=120)


@pytest.mark.parametrize("sanitize", [False, True], ids=["plain", "asan"])
def test_c_program_matches_reference(mlp, tmp_path, sanitize):
    exe = _build_program(mlp, tmp_path, sanitize)
    x = RNG.standard_normal((4, 16)).astype(np.float32)
    x.tofile(tmp_path / "in.bin")
    proc = _run(exe, tmp_path / "in.bin", tmp_path / "out.bin")
    assert proc.returncode == 0, proc.stderr
    assert "AddressSanitizer" not in proc.stderr
    y = np.fromfile(tmp_path / "out.bin", np.float32).reshape(4, 8)
    np.testing.assert_allclose(y, mlp_reference(x), rtol=1e-5, atol=1e-6)


def test_asan_build_catches_an_output_buffer_too_small(mlp, tmp_path):
    """The ASan test above can fail: one float short, the kernel's last store is reported."""
    exe = _build_program(mlp, tmp_path, sanitize=True)
    RNG.standard_normal((4, 16)).astype(np.float32).tofile(tmp_path / "in.bin")
    proc = _run(exe, tmp_path / "in.bin", tmp_path / "out.bin", "short")
    assert proc.returncode != 0 and "heap-buffer-overflow" in proc.stderr


# -- PyTorch ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def gelu_block():
    """A fused matmul + bias + gelu from a torch.nn.Module, registered as kiln::t_linear_gelu."""
    require_toolchain("gcc")
    import torch

    torch.manual_seed(0)

    class LinearGelu(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(32, 16)

        def forward(self, x):
            return torch.nn.functional.gelu(self.linear(x))

    module = LinearGelu().eval()
    lib = kiln.kernel(module, example_inputs=(torch.randn(8, 32),), name="t_linear_gelu")
    return module, lib, lib.torch_op()


def test_torch_op_eager_and_compiled(gelu_block):
    import torch

    module, lib, op = gelu_block
    assert lib.compiled.kernel_count == 1  # matmul, bias and gelu fused into one kernel
    x = torch.randn(8, 32)
    with torch.no_grad():
        ref = module(x)
    torch.testing.assert_close(op(x), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.ops.kiln.t_linear_gelu(x), ref, rtol=1e-5, atol=1e-5)
    compiled = torch.compile(lambda t: op(t * 2.0) + 1.0, fullgraph=True)
    torch.testing.assert_close(compiled(x), module(x * 2.0).detach() + 1.0, rtol=1e-5, atol=1e-5)


def test_torch_opcheck(gelu_block):
    import torch

    _, _, op = gelu_block
    result = torch.library.opcheck(op, (torch.randn(8, 32),))
    assert set(result.values()) == {"SUCCESS"}, result


def test_torch_op_bad_inputs(gelu_block):
    import torch

    _, lib, op = gelu_block
    with pytest.raises(InputError, match=r"input 'x' has shape \(4, 32\); expected \(8, 32\)"):
        op(torch.randn(4, 32))
    with pytest.raises(InputError, match=r"input 'x' is not contiguous"):
        op(torch.randn(32, 8).t())
    # under torch.compile the fake implementation reports it; dynamo wraps the InputError
    with pytest.raises(Exception, match=r"InputError.*input 'x' has dtype float64; expected float32"):
        torch.compile(op)(torch.randn(8, 32, dtype=torch.float64))
    with pytest.raises(KilnError, match="already registered"):
        kiln.kernel("Relu", inputs={"X": ((4,), "float32")}, name="t_linear_gelu").torch_op()


# -- TVM-FFI ----------------------------------------------------------------------------------

def test_tvm_ffi_numpy_and_torch(gemm):
    import torch

    mod = gemm.tvm_ffi_module()
    a, b, c = gemm_inputs()
    y = np.empty((8, 4), np.float32)
    mod.t_gemm(a, b, c, y)
    np.testing.assert_allclose(y, gemm_reference(a, b, c), rtol=1e-5, atol=1e-5)
    ty = torch.empty(8, 4)
    mod.t_gemm(*(torch.from_numpy(t) for t in (a, b, c)), ty)
    np.testing.assert_allclose(ty.numpy(), gemm_reference(a, b, c), rtol=1e-5, atol=1e-5)


def test_tvm_ffi_with_workspace(mlp):
    import torch

    mod = mlp.tvm_ffi_module()
    x = torch.randn(4, 16)
    y = torch.empty(4, 8)
    getattr(mod, "t_mlp")(x, y)
    np.testing.assert_allclose(y.numpy(), mlp_reference(x.numpy()), rtol=1e-5, atol=1e-6)


def test_tvm_ffi_bad_tensors(gemm):
    import torch

    f = gemm.tvm_ffi_module().t_gemm
    a, b, c = gemm_inputs()
    y = np.empty((8, 4), np.float32)
    raw = np.zeros(a.nbytes + 8, np.uint8)
    misaligned = raw[2:2 + a.nbytes].view(np.float32).reshape(8, 16)  # an address 2 bytes off
    cases = [
        ((a[:, :8].copy(), b, c, y), ValueError, r"input 'A' has shape \(8, 8\); expected \(8, 16\)"),
        ((a.astype(np.float64), b, c, y), TypeError, r"input 'A' has DLPack dtype \(code 2, bits 64, lanes 1\); "
                                                     r"expected float32 \(code 2, bits 32, lanes 1\)"),
        ((torch.from_numpy(a.T.copy()).t(), b, c, y), ValueError, r"input 'A' is not contiguous: strides \(1, 8\)"),
        ((a, b, c), TypeError, r"takes 4 tensors \(3 inputs, then 1 outputs: A, B, C, output\); got 3"),
        ((1, b, c, y), TypeError, r"input 0 'A' has FFI type index 1; expected a tensor"),
        ((a, b, c, np.empty((8, 5), np.float32)), ValueError, r"output 'output' has shape \(8, 5\); expected \(8, 4\)"),
        ((misaligned, b, c, y), ValueError, r"input 'A' data address 0x[0-9a-f]+ is misaligned; expected a non-null "
                                            r"multiple of 4 bytes"),
    ]
    for args, exc, match in cases:
        with pytest.raises(exc, match=match):
            f(*args)


# -- command line -----------------------------------------------------------------------------

def test_cli_compile_kernel(tmp_path):
    import onnx
    from click.testing import CliRunner

    from kiln.cli import cli

    require_toolchain("gcc")
    onnx.save(mlp_model(), tmp_path / "mlp.onnx")
    out = tmp_path / "k"
    result = CliRunner().invoke(cli, ["compile", str(tmp_path / "mlp.onnx"), "--kernel", "t_cli_mid",
                                      "--nodes", "1:4", "--tvm-ffi", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert {"libt_cli_mid.so", "libt_cli_mid_tvm_ffi.so", "t_cli_mid.h", "manifest.json"} <= \
        {p.name for p in out.iterdir()}
    assert "-lt_cli_mid" in result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert [t["name"] for t in manifest["inputs"]] == ["h0"] and "nodes [1, 4)" in manifest["origin"]
    import tvm_ffi

    h0 = RNG.standard_normal((4, 32)).astype(np.float32)
    y = np.empty((4, 8), np.float32)
    tvm_ffi.load_module(str(out / "libt_cli_mid_tvm_ffi.so")).t_cli_mid(h0, y)
    np.testing.assert_allclose(y, np.maximum(h0 + B1, 0) @ W2, rtol=1e-5, atol=1e-5)


def test_cli_kernel_errors(tmp_path):
    import onnx
    from click.testing import CliRunner

    from kiln.cli import cli

    onnx.save(mlp_model(), tmp_path / "mlp.onnx")
    runner = CliRunner()
    result = runner.invoke(cli, ["compile", str(tmp_path / "mlp.onnx"), "--nodes", "1:4"])
    assert result.exit_code == 2 and "add --kernel NAME" in result.output
    result = runner.invoke(cli, ["compile", str(tmp_path / "mlp.onnx"), "--kernel", "k", "--nodes", "x"])
    assert result.exit_code == 2 and "expected START:STOP" in result.output
    result = runner.invoke(cli, ["compile", str(tmp_path / "mlp.onnx"), "--kernel", "k", "--nodes", "2:9"])
    assert result.exit_code == 2 and "kiln: error: nodes=(2, 9) is outside the model's 5 nodes" in result.output
    assert "--kernel NAME" in runner.invoke(cli, ["compile", "--help"]).output


# -- snapshots of the generated wrappers --------------------------------------------------------

def test_snapshot_wrappers(monkeypatch):
    from kiln.kernel.tvm_ffi import wrapper_source
    from kiln.passes.capabilities import Capabilities
    from kiln.targets import host
    from tests.test_codegen import check_snapshot

    monkeypatch.setattr(host, "capabilities", lambda: Capabilities(32, 16, 2))  # schedules as on AVX2
    lib = kiln.kernel("Add", inputs={"input.1": ((2, 3), "float32"), "bias": np.arange(3, dtype=np.float32)},
                      name="snap_add")
    files = lib.files
    check_snapshot("kernel_snap_add.h", files["snap_add.h"])
    check_snapshot("kernel_snap_add.c", files["snap_add.c"])
    check_snapshot("kernel_snap_add_tvm_ffi.c", wrapper_source(lib))
    assert "const float* input_1, float* output" in files["snap_add.h"]  # C names for ONNX names

"""arm64 builds: the CMake export (cross toolchain file, weights as const arrays), the same
source under host sanitizers through the scalar NEON fallback header, ``fmla`` in the hot
loops of GEMM/conv/depthwise conv (objdump), and the static cost model."""
from __future__ import annotations

import re
import subprocess
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from onnx import helper

import kiln
from examples import models
from kiln.ir.loop import VECTORIZED, For, map_stmt
from kiln.targets.arm import FileRunner, qemu_launcher
from kiln.targets.arm_cost import ArmCore, ArmStaticCostModel, estimate
from tests.conftest import require_toolchain
from tests.test_arm import fp16_model
from tests.util import assert_close, make_model, ort_run

HOST_FLAGS = ["-O0", "-g", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer", "-std=gnu11",
              "-fno-math-errno", "-fwrapv", "-Wall", "-Wextra", "-Werror"]
# One build per sanitizer, at -O0: gcc 12 took ~30 s on a small model.c with both at -O1 (the
# -O3 -Wall -Wextra -Werror check is the arm64 build itself).
SANITIZERS = ("address", "undefined")


def sanitized_runs(compiled, tmp_path):
    """The NEON source built for the host (scalar fallback header) once per sanitizer, as runners."""
    cc = require_toolchain("gcc")
    d = write_files(compiled, tmp_path / "src")
    for sanitizer in SANITIZERS:
        exe = tmp_path / f"model_main_{sanitizer}"
        cmd = [cc, *HOST_FLAGS, f"-fsanitize={sanitizer}", "-o", str(exe), str(d / "model.c"),
               str(d / "arm_main.c"), "-lm"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr  # also: warning-free through the fallback header
        yield sanitizer, FileRunner(exe, compiled.graph.inputs, compiled.graph.outputs,
                                    compiled.result.plan.weights, launcher=[],
                                    env={"ASAN_OPTIONS": "detect_leaks=0", "UBSAN_OPTIONS": "print_stacktrace=1"})


def write_files(compiled, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in compiled.files.items():
        (directory / name).write_text(text)
    return directory


# -- the same source on the host, under UBSan and ASan -------------------------------------------

SANITIZED = {
    "small_cnn": (lambda: models.small_cnn(), "arm64"),
    "mobilenetv2_style": (lambda: models.mobilenetv2_style(image=32), "arm64"),
    "bert_encoder": (lambda: models.bert_encoder(layers=1, hidden=32, heads=2, seq=8, ffn=64), "arm64"),
}


@pytest.mark.parametrize("name", sorted(SANITIZED))
def test_neon_source_passes_sanitizers_on_the_host(name, tmp_path):
    build, target = SANITIZED[name]
    model = build()
    compiled = kiln.compile(model, target=target)
    assert "vfmaq_f32" in compiled.source()
    feeds = models.example_inputs(model, seed=3)
    want = ort_run(model, feeds)
    for sanitizer, run in sanitized_runs(compiled, tmp_path):
        assert_close(run(feeds), want, rtol=1e-3, atol=1e-4)


def test_fp16_neon_source_passes_sanitizers_on_the_host(tmp_path):
    model, feeds = fp16_model()
    compiled = kiln.compile(model, target="arm64:+fp16")
    assert "vld1q_f16" in compiled.source()
    want = ort_run(model, feeds)
    for sanitizer, run in sanitized_runs(compiled, tmp_path):
        got = run(feeds)
        for k in want:
            np.testing.assert_allclose(got[k].astype(np.float32), want[k].astype(np.float32), rtol=1e-3,
                                       atol=float(np.abs(want[k]).max()) * 2.0 ** -10, err_msg=sanitizer)


# -- NEON in the hot loops: fmla counted in the disassembly --------------------------------------

def _one_op(kind):
    rng = np.random.default_rng(0)
    f = np.float32
    if kind == "gemm":
        w = rng.standard_normal((64, 48)).astype(f)
        return make_model([helper.make_node("MatMul", ["x", "w"], ["y"])], [("x", f, [32, 64])],
                          [("y", f, [32, 48])], [("w", w)])
    if kind == "conv":
        w = rng.standard_normal((16, 16, 3, 3)).astype(f)
        return make_model([helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])],
                          [("x", f, [1, 16, 12, 12])], [("y", f, [1, 16, 12, 12])], [("w", w)])
    w = rng.standard_normal((16, 1, 3, 3)).astype(f)
    return make_model([helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1], group=16)],
                      [("x", f, [1, 16, 12, 12])], [("y", f, [1, 16, 12, 12])], [("w", w)])


@pytest.mark.parametrize("kind,least", [("gemm", 16), ("conv", 16), ("depthwise", 8)])
def test_hot_loops_use_fmla(kind, least, tmp_path):
    cc = require_toolchain("aarch64-linux-gnu-gcc")
    objdump = require_toolchain("aarch64-linux-gnu-objdump", "binutils-aarch64-linux-gnu")
    compiled = kiln.compile(_one_op(kind), target="arm64")
    assert compiled.kernel_count >= 1
    d = write_files(compiled, tmp_path / "src")
    from kiln.targets.arm import CFLAGS

    subprocess.run([cc, *CFLAGS, "-march=armv8-a", "-c", "-o", str(d / "model.o"), str(d / "model.c")], check=True)
    asm = subprocess.run([objdump, "-d", "--no-show-raw-insn", str(d / "model.o")], capture_output=True,
                         text=True, check=True).stdout
    vector_fmla = re.findall(r"\bfmla\s+v\d+\.4s", asm)
    # the register tile: one fmla per accumulator vector per reduction step, fully unrolled
    assert len(vector_fmla) >= least, f"{kind}: {len(vector_fmla)} vector fmla\n{asm[:3000]}"
    # (8 x 8 GEMM tile: 16 accumulator vectors; measured 16 / 24 / 18 with gcc 12)
    assert len(re.findall(r"\bfmadd\s+s\d+", asm)) < len(vector_fmla)  # not scalar multiply-adds


# -- export: a CMake project built with the cross compiler ----------------------------------------

def test_cli_export_builds_with_cmake_and_runs_under_qemu(tmp_path, tmp_cache):
    require_toolchain("aarch64-linux-gnu-gcc")
    require_toolchain("cmake")
    require_toolchain("qemu-aarch64")
    from kiln.cli import cli

    model = models.small_cnn()
    path = tmp_path / "cnn.onnx"
    import onnx

    onnx.save(model, str(path))
    out = tmp_path / "proj"
    result = CliRunner().invoke(cli, ["compile", str(path), "--target", "arm64", "-o", str(out)])
    assert result.exit_code == 0, result.output
    for f in ("CMakeLists.txt", "cmake/aarch64-linux-gnu.cmake", "model.c", "model.h", "weights.c", "weights.h",
              "kiln_neon_fallback.h", "arm_main.c", "README.md", "manifest.json"):
        assert (out / f).exists(), f
    assert "_Alignas(64) const unsigned char kiln_model_weights[" in (out / "weights.c").read_text()
    build = out / "build"
    configure = ["cmake", "-S", str(out), "-B", str(build), "-DCMAKE_TOOLCHAIN_FILE=cmake/aarch64-linux-gnu.cmake",
                 "-DKILN_STATIC_DRIVER=ON", "-DCMAKE_C_FLAGS=-Wall -Wextra -Werror"]
    proc = subprocess.run(configure, capture_output=True, text=True, cwd=out)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = subprocess.run(["cmake", "--build", str(build)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    exe = build / "kiln_model_main"
    lib = build / "libkiln_model.a"
    assert exe.exists() and lib.exists()
    # libc and libm only: the library's undefined symbols are all C library functions
    nm = subprocess.run(["aarch64-linux-gnu-nm", "-u", str(lib)], capture_output=True, text=True, check=True).stdout
    undefined = {line.split()[-1] for line in nm.splitlines() if line.strip() and ":" not in line}
    assert undefined <= {"memcpy", "memset", "expf", "logf", "tanhf", "erff", "sqrtf", "fmaxf", "fminf",
                         "powf", "nearbyintf", "floorf", "ceilf"}, undefined
    compiled = kiln.compile(model, target="arm64")
    run = FileRunner(exe, compiled.graph.inputs, compiled.graph.outputs, None, launcher=qemu_launcher())
    feeds = models.example_inputs(model, seed=4)
    assert_close(run(feeds), ort_run(model, feeds), rtol=1e-3, atol=1e-4)


def test_export_without_weights_still_compiles(tmp_path):
    from kiln.targets.arm_export import weights_c

    source, header = weights_c("m", b"")
    assert "m_weights[1] = {\n0,\n};" in source and "extern const unsigned char m_weights[1];" in header
    source, _ = weights_c("m", bytes(range(30)))
    assert "m_weights[30]" in source and source.count("\n") >= 6


# -- the static cost model ------------------------------------------------------------------------

def _serial(func):
    def go(s):
        if isinstance(s, For) and s.kind == VECTORIZED:
            return replace(s, kind="serial", body=map_stmt(s.body, go))
        return None
    return func.with_body(map_stmt(func.body, go))


def test_static_cost_prefers_neon_and_counts_traffic():
    compiled = kiln.compile(_one_op("gemm"), target="arm64")
    func = compiled.result.kernels[0].func
    vec, scalar = estimate(func), estimate(_serial(func))
    assert vec.vector_fraction == 1.0 and scalar.vector_fraction == 0.0
    assert vec.cycles * 2 < scalar.cycles
    # 32x64 and 64x48 inputs, 32x48 output, fp32: all fit in the cache, read or written once
    assert vec.dram_bytes == 4 * (32 * 64 + 64 * 48 + 32 * 48)
    assert vec.instructions["fma"] == pytest.approx(32 * 48 * 64 / 4, rel=0.05)  # one fmla per 4 MACs
    model = ArmStaticCostModel()
    scores = model.predict(None, [_serial(func), func])
    assert scores[1] > scores[0]


def test_static_cost_model_saves_and_loads(tmp_path):
    from kiln.errors import KilnError

    m = ArmStaticCostModel(ArmCore(fma=4.0), fp16=True)
    m.save(tmp_path / "arm.json")
    back = ArmStaticCostModel.load(tmp_path / "arm.json")
    assert back.core.fma == 4.0 and back.fp16
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(KilnError, match="not a saved arm-static cost model"):
        ArmStaticCostModel.load(tmp_path / "bad.json")


def test_static_cost_grows_with_work():
    small = kiln.compile(models.small_cnn(image=16), target="arm64")
    big = kiln.compile(models.small_cnn(image=32), target="arm64")
    total = lambda c: sum(estimate(k.func).cycles for k in c.result.kernels)  # noqa: E731
    assert total(big) > 3 * total(small)


def test_make_test_installs_the_arm_toolchains():
    """CI runs `make test` on a fresh Debian: the Makefile must install what these tests run."""
    from tests.conftest import TOOLCHAIN_PACKAGES

    makefile = (Path(__file__).parent.parent / "Makefile").read_text()
    line = " ".join(x for x in makefile.splitlines() if x.startswith("TOOLCHAINS "))
    for tool in ("aarch64-linux-gnu-gcc", "aarch64-linux-gnu-objdump", "qemu-aarch64", "cmake"):
        assert f"{tool}:{TOOLCHAIN_PACKAGES[tool]}" in line, tool


def test_cli_run_on_arm64(tmp_path, tmp_cache):
    """`kiln run MODEL --target arm64` compiles, runs under qemu and writes the outputs."""
    require_toolchain("aarch64-linux-gnu-gcc")
    require_toolchain("qemu-aarch64")
    import onnx

    from kiln.cli import cli

    model = models.small_cnn()
    onnx.save(model, str(tmp_path / "cnn.onnx"))
    feeds = models.example_inputs(model, seed=6)
    np.savez(tmp_path / "in.npz", **feeds)
    result = CliRunner().invoke(cli, ["run", str(tmp_path / "cnn.onnx"), "--target", "arm64", "--inputs",
                                      str(tmp_path / "in.npz"), "--outputs", str(tmp_path / "out.npz")])
    assert result.exit_code == 0, result.output
    got = dict(np.load(tmp_path / "out.npz"))
    assert_close(got, ort_run(model, feeds), rtol=1e-3, atol=1e-4)


def test_sanitized_host_build_catches_an_overrun(tmp_path):
    """The harness can fail: a tail loop made to read one element too far is reported."""
    from kiln.errors import ToolchainError

    model = make_model([helper.make_node("Relu", ["x"], ["y"])], [("x", np.float32, [10])],
                       [("y", np.float32, [10])])
    compiled = kiln.compile(model, target="arm64")
    assert "for (; i0 < 10; ++i0)" in compiled.source()  # two vectors, then lanes 8 and 9
    compiled.result.source.files["model.c"] = compiled.source().replace("for (; i0 < 10; ++i0)",
                                                                        "for (; i0 <= 10; ++i0)")
    run = dict(sanitized_runs(compiled, tmp_path))["address"]
    with pytest.raises(ToolchainError, match="heap-buffer-overflow"):
        run({"x": np.ones(10, np.float32)})

"""The ``kiln`` command line, through click's CliRunner.

Three groups of tests:
- parsing and help, which need no compiler;
- the commands' own logic against a stand-in ``kiln.api`` (``fake_api``): what they pass to
  the API, what they print and write, and how a KilnError is reported;
- end to end with the real ``kiln.api`` and gcc, on a tiny model (skipped while
  kiln/api.py does not exist).
"""
from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import helper

import kiln
from kiln.cli import cli, main
from kiln.errors import KilnError, ModelLoadError
from tests.conftest import require_toolchain
from tests.util import make_model

W = np.array([1.0, -2.0, 0.5, 3.0], dtype=np.float32)
B = np.array([0.1, 0.2, -0.3, 0.0], dtype=np.float32)


def tiny_model(batch: int | str = 2) -> onnx.ModelProto:
    """y = relu(x * W + b), x [batch, 4]; ``batch`` may be a symbolic name."""
    nodes = [helper.make_node("Mul", ["x", "w"], ["xw"]),
             helper.make_node("Add", ["xw", "b"], ["xwb"]),
             helper.make_node("Relu", ["xwb"], ["y"])]
    return make_model(nodes, [("x", np.float32, [batch, 4])], [("y", np.float32, [batch, 4])],
                      initializers=[("w", W), ("b", B)], name="tiny")


def reference(x: np.ndarray) -> np.ndarray:
    return np.maximum(x * W + B, 0)


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def model_path(tmp_path) -> Path:
    path = tmp_path / "tiny.onnx"
    onnx.save(tiny_model(), str(path))
    return path


@pytest.fixture
def inputs_npz(tmp_path) -> Path:
    path = tmp_path / "in.npz"
    np.savez(path, x=np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 4))
    return path


def assert_kiln_error(result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    assert "kiln: error: " in result.output, result.output
    assert "Traceback" not in result.output, result.output
    for f in fragments:
        assert f in result.output, result.output


# -- help, version and option parsing (no compiler needed) ---------------------------------

def test_help_lists_the_commands(runner):
    result = runner.invoke(cli, ["--help"])
    assert result.exit_code == 0, result.output
    for command in ("compile", "run", "inspect", "bench", "tune"):
        assert f"  {command} " in result.output


@pytest.mark.parametrize("command", ["compile", "run", "inspect", "bench", "tune"])
def test_command_help(runner, command):
    result = runner.invoke(cli, [command, "--help"])
    assert result.exit_code == 0, result.output
    assert "MODEL" in result.output
    assert "--input-shape" in result.output


def test_version(runner):
    result = runner.invoke(cli, ["--version"])
    assert result.exit_code == 0
    assert result.output.startswith("kiln ")


@pytest.mark.parametrize("bad, fragment", [
    ("input", "expected NAME=D1,D2,..."),
    ("=1,3", "expected NAME=D1,D2,..."),
    ("input=", "expected NAME=D1,D2,..."),
    ("input=1,3x,224", "must be integers or dim names"),
    ("input=1,-3", "non-negative"),
])
@pytest.mark.parametrize("command", ["compile", "inspect"])
def test_bad_input_shape_syntax(runner, command, bad, fragment, model_path):
    result = runner.invoke(cli, [command, str(model_path), "--input-shape", bad])
    assert result.exit_code == 2, result.output
    assert "--input-shape" in result.output
    assert fragment in result.output
    assert "Traceback" not in result.output


def test_conflicting_input_shapes(runner, model_path):
    result = runner.invoke(cli, ["inspect", str(model_path), "--input-shape", "x=1,4",
                                 "--input-shape", "x=2,4"])
    assert result.exit_code == 2
    assert "given twice" in result.output


def test_unknown_emit_kind(runner, model_path):
    result = runner.invoke(cli, ["compile", str(model_path), "--emit", "c,docx"])
    assert result.exit_code == 2
    assert "docx" in result.output and "valid kinds" in result.output


def test_run_missing_inputs_file(runner, model_path, tmp_path):
    result = runner.invoke(cli, ["run", str(model_path), "--inputs", str(tmp_path / "nope.npz")])
    assert_kiln_error(result, "nope.npz", "does not exist")


def test_run_inputs_not_npz(runner, model_path, tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"this is not a zip file")
    result = runner.invoke(cli, ["run", str(model_path), "--inputs", str(bad)])
    assert_kiln_error(result, "bad.npz", ".npz")


def test_main_entry_point(monkeypatch, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    assert "compile" in capsys.readouterr().out


# -- command logic against a stand-in API ---------------------------------------------------

class FakeCompiled:
    input_names = ["x"]
    output_names = ["y"]

    def __init__(self, files=("model.c", "model.h", "kernels.c", "weights.bin", "Makefile", "README.md")):
        self.files = files

    def run(self, inputs):
        return {"y": reference(inputs["x"])}

    def export(self, directory):
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        for name in self.files:
            (d / name).write_bytes(b"// generated\n")
        return d

    def source(self):
        return "// generated\n"


@pytest.fixture
def fake_api(monkeypatch):
    api = types.ModuleType("kiln.api")
    api.calls = []
    api.compiled = FakeCompiled()

    def compile(model, target="host", *, input_shapes=None, dim_bounds=None, db=None):
        api.calls.append(("compile", str(model), target, input_shapes, db))
        if "broken" in str(model):
            raise ModelLoadError(f"model file {str(model)!r} is broken")
        return api.compiled

    def load(directory):
        api.calls.append(("load", str(directory)))
        return api.compiled

    def inspect(model, *, input_shapes=None, dim_bounds=None, print_ir_after=None, target="host"):
        api.calls.append(("inspect", str(model), input_shapes, print_ir_after))
        if print_ir_after not in (None, "fuse"):
            raise KilnError(f"unknown stage {print_ir_after!r}; valid stages: fuse")
        return "graph tiny(...)"

    api.compile, api.load, api.inspect = compile, load, inspect
    monkeypatch.setitem(sys.modules, "kiln.api", api)
    monkeypatch.setattr(kiln, "api", api, raising=False)
    return api


def test_compile_passes_options_and_exports(runner, fake_api, model_path, tmp_path):
    out = tmp_path / "out"
    result = runner.invoke(cli, ["compile", str(model_path), "--target", "host", "-o", str(out),
                                 "--input-shape", "x=3,4", "--db", "tuning/"])
    assert result.exit_code == 0, result.output
    assert fake_api.calls == [("compile", str(model_path), "host", {"x": (3, 4)}, "tuning/")]
    assert sorted(p.name for p in out.iterdir()) == sorted(fake_api.compiled.files)
    assert "model.c" in result.output and str(out) in result.output


def test_compile_default_output_dir(runner, fake_api, model_path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(cli, ["compile", str(model_path)])
    assert result.exit_code == 0, result.output
    assert fake_api.calls[0][2] == "host"
    assert (tmp_path / "build" / "tiny" / "model.c").is_file()


def test_compile_emit_selects_files(runner, fake_api, model_path, tmp_path):
    out = tmp_path / "out"
    result = runner.invoke(cli, ["compile", str(model_path), "-o", str(out), "--emit", "c, h"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["kernels.c", "model.c", "model.h"]


def test_compile_emit_nothing_selected(runner, fake_api, model_path, tmp_path):
    result = runner.invoke(cli, ["compile", str(model_path), "-o", str(tmp_path / "o"), "--emit", "wgsl"])
    assert_kiln_error(result, "--emit wgsl selected no files")


def test_kiln_error_is_reported_without_traceback(runner, fake_api, tmp_path):
    result = runner.invoke(cli, ["compile", str(tmp_path / "broken.onnx")])
    assert_kiln_error(result, "is broken")
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_run_writes_outputs(runner, fake_api, model_path, inputs_npz, tmp_path):
    out = tmp_path / "out.npz"
    result = runner.invoke(cli, ["run", str(model_path), "--target", "host", "--inputs", str(inputs_npz),
                                 "--outputs", str(out)])
    assert result.exit_code == 0, result.output
    assert "y: float32[2, 4]" in result.output
    x = np.load(inputs_npz)["x"]
    np.testing.assert_array_equal(np.load(out)["y"], reference(x))
    # a model with static shapes gets no shape overrides from the inputs
    assert fake_api.calls == [("compile", str(model_path), "host", None, None)]


def test_run_symbolic_dims_take_shapes_from_inputs(runner, fake_api, tmp_path):
    path = tmp_path / "sym.onnx"
    onnx.save(tiny_model(batch="N"), str(path))
    npz = tmp_path / "in.npz"
    np.savez(npz, x=np.ones((5, 4), np.float32))
    result = runner.invoke(cli, ["run", str(path), "--inputs", str(npz)])
    assert result.exit_code == 0, result.output
    assert fake_api.calls == [("compile", str(path), "host", {"x": (5, 4)}, None)]


def test_run_directory_loads(runner, fake_api, inputs_npz, tmp_path):
    result = runner.invoke(cli, ["run", str(tmp_path), "--inputs", str(inputs_npz)])
    assert result.exit_code == 0, result.output
    assert fake_api.calls == [("load", str(tmp_path))]


def test_run_directory_other_target(runner, fake_api, inputs_npz, tmp_path):
    result = runner.invoke(cli, ["run", str(tmp_path), "--target", "cuda", "--inputs", str(inputs_npz)])
    assert_kiln_error(result, "host target only")


def test_inspect_passes_options(runner, fake_api, model_path):
    result = runner.invoke(cli, ["inspect", str(model_path), "--print-ir-after", "fuse",
                                 "--input-shape", "x=2,4"])
    assert result.exit_code == 0, result.output
    assert "graph tiny" in result.output
    assert fake_api.calls == [("inspect", str(model_path), {"x": (2, 4)}, "fuse")]


def test_inspect_unknown_stage(runner, fake_api, model_path):
    result = runner.invoke(cli, ["inspect", str(model_path), "--print-ir-after", "nonsense"])
    assert_kiln_error(result, "nonsense")


# -- end to end with the real compiler --------------------------------------------------------

def test_inspect_prints_graph_text(runner, model_path):
    result = runner.invoke(cli, ["inspect", str(model_path)])
    assert result.exit_code == 0, result.output
    assert "graph" in result.output
    assert "%x" in result.output and "%y" in result.output


def test_inspect_bad_model_file(runner, tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00\x01 definitely not protobuf \xff" * 10)
    result = runner.invoke(cli, ["inspect", str(bad)])
    assert_kiln_error(result, "bad.onnx")


def test_inspect_missing_model_file(runner, tmp_path):
    result = runner.invoke(cli, ["inspect", str(tmp_path / "missing.onnx")])
    assert_kiln_error(result, "missing.onnx")


def test_inspect_unknown_stage_lists_stages(runner, model_path):
    result = runner.invoke(cli, ["inspect", str(model_path), "--print-ir-after", "no_such_stage"])
    assert_kiln_error(result)


def test_compile_run_and_reload(runner, model_path, inputs_npz, tmp_path, tmp_cache):
    require_toolchain("gcc")
    out_dir = tmp_path / "build"
    result = runner.invoke(cli, ["compile", str(model_path), "--target", "host", "-o", str(out_dir)])
    assert result.exit_code == 0, result.output
    assert (out_dir / "model.c").is_file() and (out_dir / "model.h").is_file()

    x = np.load(inputs_npz)["x"]
    for source in (model_path, out_dir):  # compile from the model, then reload the directory
        out = tmp_path / f"out_{Path(source).name}.npz"
        result = runner.invoke(cli, ["run", str(source), "--target", "host", "--inputs", str(inputs_npz),
                                     "--outputs", str(out)])
        assert result.exit_code == 0, result.output
        assert "y: float32[2, 4]" in result.output
        np.testing.assert_allclose(np.load(out)["y"], reference(x), rtol=1e-6, atol=1e-6)


def test_compile_emit_headers_only(runner, model_path, tmp_path, tmp_cache):
    require_toolchain("gcc")
    out_dir = tmp_path / "headers"
    result = runner.invoke(cli, ["compile", str(model_path), "-o", str(out_dir), "--emit", "h"])
    assert result.exit_code == 0, result.output
    files = [p for p in out_dir.rglob("*") if p.is_file()]
    assert files and all(p.suffix == ".h" for p in files)


def test_run_with_input_shape_override(runner, tmp_path, tmp_cache):
    require_toolchain("gcc")
    path = tmp_path / "sym.onnx"
    onnx.save(tiny_model(batch="N"), str(path))
    x = np.arange(12, dtype=np.float32).reshape(3, 4) - 6
    npz, out = tmp_path / "in.npz", tmp_path / "out.npz"
    np.savez(npz, x=x)
    result = runner.invoke(cli, ["run", str(path), "--inputs", str(npz), "--outputs", str(out),
                                 "--input-shape", "x=3,4"])
    assert result.exit_code == 0, result.output
    np.testing.assert_allclose(np.load(out)["y"], reference(x), rtol=1e-6, atol=1e-6)


def test_run_missing_input_is_a_kiln_error(runner, model_path, tmp_path, tmp_cache):
    require_toolchain("gcc")
    npz = tmp_path / "wrong.npz"
    np.savez(npz, not_x=np.ones((2, 4), np.float32))
    result = runner.invoke(cli, ["run", str(model_path), "--inputs", str(npz)])
    assert_kiln_error(result)

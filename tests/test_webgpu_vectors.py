"""Vector loads on the WebGPU target: which tiled operands read 16 bytes at once
(``kiln/passes/gpu_tiling.py``), the per-dispatch tensor views that make it legal
(``kiln/codegen/wgsl_views.py``), and results on lavapipe against ONNX Runtime."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

import kiln
from kiln.codegen import wgsl_model
from kiln.codegen.wgsl_views import MAX_VIEWS, VIEW_BINDING
from kiln.ir.loop import VectorLoad, walk_stmts
from tests.conftest import require_webgpu
from tests.test_webgpu import _matmul_model, _tiled
from tests.util import assert_close, make_model, ort_run


@pytest.fixture(scope="module")
def wgpu_device():
    return require_webgpu()


def _vector_operands(compiled) -> list[list[str]]:
    return [d.trace[0]["args"]["vector_loads"] for d in _tiled(compiled)]


def _gemm_model(m, k, n, trans_b: bool, seed=0):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((n, k) if trans_b else (k, n)).astype(np.float32)
    nodes = [helper.make_node("Gemm", ["x", "w"], ["y"], transB=int(trans_b))]
    return make_model(nodes, [("x", np.float32, [m, k])], [("y", np.float32, [m, n])], initializers=[("w", w)])


def _conv_model(cin, cout, size, kernel, pad, seed=0, stride=1):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((cout, cin, kernel, kernel)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], pads=[pad] * 4, strides=[stride] * 2)]
    out = (size + 2 * pad - kernel) // stride + 1
    return make_model(nodes, [("x", np.float32, [1, cin, size, size])], [("y", np.float32, [1, cout, out, out])],
                      initializers=[("w", w)])


# -- tier 1: which operands are vectors, and their bindings ------------------------------------

@pytest.mark.parametrize("m,k,n,expected", [
    (64, 32, 64, ["x", "y"]),   # both contiguous, every extent a multiple of 4
    (64, 30, 64, ["y"]),        # k = 30: a vector of k would straddle the end of a row
    (64, 32, 66, ["x"]),        # 66 columns: a row of the weights does not start 16-byte aligned
    (33, 19, 47, []),
])
def test_matmul_operands_become_vectors_only_where_aligned(m, k, n, expected):
    assert _vector_operands(kiln.compile(_matmul_model(m, k, n), target="webgpu")) == [expected]


def test_an_operand_strided_along_the_columns_is_not_a_vector():
    """A 1x1 convolution's input runs along the output columns: contiguous at stride 1, every
    other element at stride 2 (only its weights are vectors then)."""
    assert _vector_operands(kiln.compile(_conv_model(16, 36, 24, 1, 0), target="webgpu")) == [["x", "y"]]
    assert _vector_operands(kiln.compile(_conv_model(16, 36, 48, 1, 0, stride=2), target="webgpu")) == [["x"]]


def test_transposed_constant_weights_are_vectors():
    """Gemm's transB on a constant is folded into the weights at compile time: contiguous again."""
    assert _vector_operands(kiln.compile(_gemm_model(64, 32, 64, trans_b=True), target="webgpu")) == [["x", "y"]]


def test_convolution_weights_are_vectors_along_the_flattened_reduction():
    """A conv's reduction is three loops (channel, kernel row, kernel column); its weights
    are contiguous along them together, so the weight tile reads vectors of 4 (k = 8 * 9)."""
    assert _vector_operands(kiln.compile(_conv_model(8, 32, 20, 3, 1), target="webgpu")) == [["x"]]
    # k = 27: not a multiple of 4
    assert _vector_operands(kiln.compile(_conv_model(3, 32, 20, 3, 1), target="webgpu")) == [[]]


def test_a_vector_dispatch_binds_each_tensor_on_its_own():
    compiled = kiln.compile(_matmul_model(64, 32, 64), target="webgpu")
    model = compiled.result.source.webgpu
    (kernel,) = [k for k in model.kernels if k.views]
    (views,) = kernel.views.values()
    assert [v.binding for v in views] == list(range(VIEW_BINDING, VIEW_BINDING + len(views)))
    arena = sorted((v.offset, v.offset + v.words) for v in views if v.buffer == "arena")
    assert all(a[1] <= b[0] for a, b in zip(arena, arena[1:]))  # never overlapping
    assert all(v.offset % 64 == 0 for v in views)  # 256-byte offsets, as WebGPU requires
    vec4 = [v for v in views if v.vector]
    assert len(vec4) == 2 and not any(v.write for v in vec4)
    source = compiled.files[kernel.file]
    assert source.count("array<vec4<u32>>") == 2 and "let kiln_q = kiln_view" in source
    table = model.table()["kernels"]
    assert any("views" in d for k in table for d in k["dispatches"])


def test_weights_off_the_binding_alignment_fall_back_to_scalar_loads(monkeypatch):
    """A weight tensor not on a 256-byte boundary of its chunk cannot be bound on its own:
    the dispatch keeps the shared bindings and prints its vector loads as scalar ones."""
    monkeypatch.setattr(wgsl_model, "CHUNK_WORDS", 1000)
    compiled = kiln.compile(_matmul_model(64, 32, 64), target="webgpu")
    model = compiled.result.source.webgpu
    assert _vector_operands(compiled) == [["x", "y"]]
    assert any(isinstance(s, VectorLoad) for d in _tiled(compiled) for s in walk_stmts(d.func.body))
    assert not any(k.views for k in model.kernels)
    assert "array<vec4<u32>>" not in "".join(compiled.files[k.file] for k in model.kernels)


def test_views_stay_within_the_storage_binding_limit():
    from kiln.codegen.wgsl_views import dispatch_views

    compiled = kiln.compile(_matmul_model(64, 32, 64), target="webgpu")
    (d,) = _tiled(compiled)
    apart = {p.name: ("arena", 8192 * i) for i, p in enumerate(d.func.params)}
    found = dispatch_views(d.func, apart, 1 << 25, (), VIEW_BINDING)
    assert found is not None and len(found[0]) == len(d.func.params) <= MAX_VIEWS
    # ranges that overlap (offsets 64 words apart, tensors of 2048 and more): refused
    close = {p.name: ("arena", 64 * i) for i, p in enumerate(d.func.params)}
    assert dispatch_views(d.func, close, 1 << 25, (), VIEW_BINDING) is None
    # one tensor stored into and read (aliases at one offset): one view, scalar words
    same = {p.name: ("arena", 0) for p in d.func.params}
    (view,), _ = dispatch_views(d.func, same, 1 << 25, (), VIEW_BINDING)
    assert view.write and not view.vector
    # an operand packed four to a word has no word-per-element view
    assert dispatch_views(d.func, apart, 1 << 25, {d.func.params[0].name}, VIEW_BINDING) is None


# -- tier 2: results on lavapipe -----------------------------------------------------------------

@pytest.mark.parametrize("m,k,n", [(64, 32, 64), (45, 36, 52), (70, 44, 30), (1, 256, 600), (64, 30, 66)])
def test_vector_loaded_matmul_matches_ort(m, k, n, wgpu_device):
    """Tails in rows, columns and k around vector loads (a vector is in bounds whole or not at all)."""
    model = _matmul_model(m, k, n, seed=k)
    x = np.random.default_rng(k).standard_normal((m, k)).astype(np.float32)
    assert_close(kiln.compile(model, target="webgpu").run({"x": x}), ort_run(model, {"x": x}), rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("trans_b", [False, True])
def test_gemm_matches_ort(trans_b, wgpu_device):
    model = _gemm_model(40, 64, 96, trans_b, seed=3)
    x = np.random.default_rng(3).standard_normal((40, 64)).astype(np.float32)
    assert_close(kiln.compile(model, target="webgpu").run({"x": x}), ort_run(model, {"x": x}), rtol=1e-3, atol=1e-4)


# -- tile shapes: 32 x 32 by default, 128 x 128 (8 x 8 per invocation) for large problems ----------

def test_large_problems_take_the_large_tile():
    from kiln.passes.gpu_tiling import LARGE, SMALL, choose_tile

    assert choose_tile(4096, 4096, 1) == LARGE and choose_tile(2048, 1024, 1) == LARGE
    assert choose_tile(1024, 1024, 1) == SMALL and choose_tile(128, 768, 1) == SMALL
    assert LARGE.micro_rows == LARGE.micro_cols == 8 and LARGE.threads == 256
    (d,) = _tiled(kiln.compile(_matmul_model(2048, 32, 1024), target="webgpu"))
    assert d.trace[0]["args"]["tile"] == [128, 128, 8] and d.workgroup_size == 256


def test_large_tile_matches_ort_where_it_is_chosen(wgpu_device):
    model = _matmul_model(2048, 32, 1024, seed=9)
    x = np.random.default_rng(9).standard_normal((2048, 32)).astype(np.float32)
    assert_close(kiln.compile(model, target="webgpu").run({"x": x}), ort_run(model, {"x": x}), rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("m,k,n", [(130, 36, 260), (64, 30, 66), (200, 19, 70)])
def test_large_tile_edges_match_ort(m, k, n, wgpu_device, monkeypatch):
    """The large tile forced onto problems smaller than one tile in some direction: tails in
    rows, columns and k, with and without vector loads."""
    from kiln.passes import gpu_tiling

    monkeypatch.setattr(gpu_tiling, "TILE_OVERRIDE", gpu_tiling.LARGE)
    model = _matmul_model(m, k, n, seed=m)
    x = np.random.default_rng(m).standard_normal((m, k)).astype(np.float32)
    compiled = kiln.compile(model, target="webgpu")
    assert [d.trace[0]["args"]["tile"] for d in _tiled(compiled)] == [[128, 128, 8]]
    assert_close(compiled.run({"x": x}), ort_run(model, {"x": x}), rtol=1e-3, atol=1e-4)


def test_large_tile_convolution_matches_ort(wgpu_device, monkeypatch):
    from kiln.passes import gpu_tiling

    monkeypatch.setattr(gpu_tiling, "TILE_OVERRIDE", gpu_tiling.LARGE)
    model = _conv_model(8, 36, 20, 3, 1, seed=2)
    x = np.random.default_rng(2).standard_normal((1, 8, 20, 20)).astype(np.float32)
    assert_close(kiln.compile(model, target="webgpu").run({"x": x}), ort_run(model, {"x": x}), rtol=1e-3, atol=1e-4)


def _mixed_model():
    """A static matmul (tiled, with vector loads) beside a dynamic-batch branch: the views'
    bind group must carry the dims uniform that every entry point reads."""
    rng = np.random.default_rng(6)
    w = rng.standard_normal((32, 64)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["a", "w"], ["y"]), helper.make_node("Relu", ["b"], ["z"])]
    return make_model(nodes, [("a", np.float32, [64, 32]), ("b", np.float32, ["batch", 8])],
                      [("y", np.float32, [64, 64]), ("z", np.float32, ["batch", 8])], initializers=[("w", w)])


def test_views_beside_dynamic_dims(wgpu_device):
    model = _mixed_model()
    compiled = kiln.compile(model, target="webgpu", dim_bounds={"batch": (1, 6)})
    assert _vector_operands(compiled) == [["x", "y"]]
    assert compiled.result.source.webgpu.symbols == ["batch"]
    rng = np.random.default_rng(7)
    for batch in (1, 5):
        feeds = {"a": rng.standard_normal((64, 32)).astype(np.float32),
                 "b": rng.standard_normal((batch, 8)).astype(np.float32)}
        assert_close(compiled.run(feeds), ort_run(model, feeds), rtol=1e-3, atol=1e-4)

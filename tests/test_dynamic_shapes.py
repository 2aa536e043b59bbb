"""Dynamic shapes: symbolic batch and sequence dims with declared bounds.

One compiled model runs every size within its bounds; nothing is recompiled, and no
dynamic dim is ever silently replaced by a guess.
"""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import kiln
from examples import models
from kiln.errors import InputError, KilnError, ShapeError
from kiln.ir.symbolic import symbol
from tests.util import assert_close, ort_run

HIDDEN, HEADS = 32, 4
BOUNDS = {"batch": (1, 8), "seq": (1, 128)}


def attention_block(hidden=HIDDEN, heads=HEADS, seed=0):
    """A post-norm self-attention block over x[batch, seq, hidden] with a padding mask[batch, seq].

    Reshapes use ONNX's 0 (copy this dim) so they stay valid for every batch and length."""
    rng = np.random.default_rng(seed)
    d = hidden // heads

    def w(name, *shape):
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.2).astype(np.float32), name)

    def c(name, value, dtype=np.float32):
        return numpy_helper.from_array(np.array(value, dtype), name)

    inits = [w("wq", hidden, hidden), w("wk", hidden, hidden), w("wv", hidden, hidden),
             w("wo", hidden, hidden), w("bq", hidden), c("split", [0, 0, heads, d], np.int64),
             c("merge", [0, 0, hidden], np.int64), c("g", np.ones(hidden)), c("b", np.zeros(hidden)),
             c("scale", 1 / np.sqrt(d)), c("neg", -1e4), c("one", 1.0), c("ax12", [1, 2], np.int64)]
    n = helper.make_node
    nodes = [
        n("MatMul", ["x", "wq"], ["q0"]), n("Add", ["q0", "bq"], ["q1"]),
        n("MatMul", ["x", "wk"], ["k0"]), n("MatMul", ["x", "wv"], ["v0"]),
        n("Reshape", ["q1", "split"], ["q2"]), n("Transpose", ["q2"], ["q"], perm=[0, 2, 1, 3]),
        n("Reshape", ["k0", "split"], ["k2"]), n("Transpose", ["k2"], ["kt"], perm=[0, 2, 3, 1]),
        n("Reshape", ["v0", "split"], ["v2"]), n("Transpose", ["v2"], ["v"], perm=[0, 2, 1, 3]),
        n("MatMul", ["q", "kt"], ["s0"]), n("Mul", ["s0", "scale"], ["s1"]),
        n("Sub", ["one", "mask"], ["m0"]), n("Mul", ["m0", "neg"], ["m1"]),
        n("Unsqueeze", ["m1", "ax12"], ["m2"]), n("Add", ["s1", "m2"], ["s2"]),
        n("Softmax", ["s2"], ["p"], axis=-1), n("MatMul", ["p", "v"], ["o0"]),
        n("Transpose", ["o0"], ["o1"], perm=[0, 2, 1, 3]), n("Reshape", ["o1", "merge"], ["o2"]),
        n("MatMul", ["o2", "wo"], ["o3"]), n("Add", ["o3", "x"], ["r"]),
        n("LayerNormalization", ["r", "g", "b"], ["y"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes, "attention", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", hidden]),
                             helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["batch", "seq"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", hidden])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _feeds(batch, seq, seed):
    rng = np.random.default_rng(seed)
    mask = (rng.random((batch, seq)) > 0.25).astype(np.float32)
    mask[:, 0] = 1  # every row attends to at least one token
    return {"x": rng.standard_normal((batch, seq, HIDDEN)).astype(np.float32), "mask": mask}


def test_attention_compiles_once_and_runs_every_batch_and_length(tmp_path, monkeypatch):
    monkeypatch.setenv("KILN_CACHE_DIR", str(tmp_path))
    model = attention_block()
    m = kiln.compile(model, dim_bounds=BOUNDS)
    runner = m.build()
    for batch in (1, 3, 8):
        for seq in (16, 77, 128):
            feeds = _feeds(batch, seq, seed=batch * 1000 + seq)
            got = m.run(feeds)
            assert got["y"].shape == (batch, seq, HIDDEN)
            assert_close(got, ort_run(model, feeds), rtol=1e-3, atol=1e-4)
    assert m.build() is runner
    assert len(list(tmp_path.glob("*.so"))) == 1  # one library served all nine shapes


def test_cnn_with_dynamic_batch():
    model = models.small_cnn()
    for vi in (model.graph.input[0], model.graph.output[0]):
        dim = vi.type.tensor_type.shape.dim[0]
        dim.Clear()
        dim.dim_param = "batch"
    m = kiln.compile(model, dim_bounds={"batch": (1, 8)})
    name = model.graph.input[0].name
    for batch in (1, 3, 8):
        x = np.random.default_rng(batch).standard_normal((batch, 1, 28, 28)).astype(np.float32)
        assert_close(m.run({name: x}), ort_run(model, {name: x}), rtol=1e-3, atol=1e-4)


def test_symbolic_dims_without_bounds_are_refused():
    with pytest.raises(KilnError, match=r"symbolic dims \['batch', 'seq'\].*dim_bounds"):
        kiln.compile(attention_block())


def test_input_shapes_can_fix_the_dims_instead():
    model = attention_block()
    m = kiln.compile(model, input_shapes={"x": (2, 10, HIDDEN), "mask": (2, 10)})
    feeds = _feeds(2, 10, seed=5)
    assert_close(m.run(feeds), ort_run(model, feeds), rtol=1e-3, atol=1e-4)
    with pytest.raises(InputError, match=r"shape \(3, 10, 32\); expected \(2, 10, 32\)"):
        m.run(_feeds(3, 10, seed=5))


def test_run_time_dims_are_checked():
    m = kiln.compile(attention_block(), dim_bounds=BOUNDS)
    with pytest.raises(InputError, match=r"\(batch\) is 9; expected 1..8"):
        m.run(_feeds(9, 16, seed=0))
    feeds = _feeds(2, 16, seed=0)
    feeds["mask"] = feeds["mask"][:, :12]
    with pytest.raises(InputError, match="dim 'seq' is 16 in one input and 12"):
        m.run(feeds)


def test_bad_bounds_are_refused():
    with pytest.raises(ShapeError, match="not symbolic dims"):
        kiln.compile(attention_block(), dim_bounds={**BOUNDS, "heads": (1, 2)})
    with pytest.raises(ShapeError, match="1 <= lowest <= highest"):
        kiln.compile(attention_block(), dim_bounds={"batch": (4, 2), "seq": (1, 8)})


def test_export_sizes_arena_for_upper_bounds_and_reloads(tmp_path):
    model = attention_block()
    m = kiln.compile(model, dim_bounds=BOUNDS)
    out = m.export(tmp_path / "attn")
    header = (out / "model.h").read_text()
    assert "KILN_MODEL_NUM_DIMS 2" in header and "dims[0] = batch, 1..8" in header
    small = kiln.compile(model, dim_bounds={"batch": (1, 2), "seq": (1, 16)})
    assert m.arena_size > small.arena_size  # planned at the upper bounds
    feeds = _feeds(3, 20, seed=9)
    assert_close(kiln.load(out).run(feeds), ort_run(model, feeds), rtol=1e-3, atol=1e-4)


def test_symbolic_reshape_infers_products():
    from kiln.frontend.onnx_ops.shape import resolve_reshape

    b, s = symbol("batch"), symbol("seq")
    assert resolve_reshape((b, s, 32), [0, 0, 4, 8], False) == (b, s, 4, 8)
    assert resolve_reshape((b, s, 4, 8), [-1, 32], False) == (b * s, 32)
    with pytest.raises(ShapeError, match="not a multiple"):
        resolve_reshape((b, 6), [-1, 4], False)


def test_cli_compiles_a_dynamic_model(tmp_path):
    from click.testing import CliRunner

    from kiln.cli import cli

    path = tmp_path / "attn.onnx"
    path.write_bytes(attention_block().SerializeToString())
    out = tmp_path / "proj"
    result = CliRunner().invoke(cli, ["compile", str(path), "-o", str(out), "--dim-bound", "batch=1..4",
                                      "--dim-bound", "seq=1..32"])
    assert result.exit_code == 0, result.output
    assert "dims[1] = seq, 1..32" in (out / "model.h").read_text()
    feeds = _feeds(4, 32, seed=3)
    assert_close(kiln.load(out).run(feeds), ort_run(attention_block(), feeds), rtol=1e-3, atol=1e-4)
    result = CliRunner().invoke(cli, ["compile", str(path), "--dim-bound", "batch=x"])
    assert result.exit_code == 2 and "NAME=LO..HI" in result.output

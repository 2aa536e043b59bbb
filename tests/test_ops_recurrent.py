"""RNN, GRU and LSTM (directions, layouts, initial states, biases, peepholes, activations,
linear_before_reset) against ONNX Runtime."""
from __future__ import annotations

import numpy as np
import pytest

from kiln.errors import UnsupportedOperatorError
from kiln.frontend.onnx import from_onnx
from tests.test_ops_shape import C, X, node_model
from tests.util import BACKENDS, assert_close, check_against_ort, kiln_run

RNG = np.random.default_rng(17)
backends = pytest.mark.parametrize("backend", BACKENDS)
GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}
SEQ, BATCH, INPUT, HIDDEN = 4, 2, 3, 5


def randn(*shape, scale=0.5):
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def recurrent_inputs(op, dirs, bias=True, initial=False, peep=False, layout=0, seq_lens=False,
                     const_weights=True):
    g = GATES[op]
    x = randn(BATCH, SEQ, INPUT) if layout else randn(SEQ, BATCH, INPUT)
    W = C if const_weights else X
    ins = [X("x", x), W("w", randn(dirs, g * HIDDEN, INPUT)), W("r", randn(dirs, g * HIDDEN, HIDDEN))]
    ins.append(W("b", randn(dirs, 2 * g * HIDDEN)) if bias else None)
    ins.append(C("sl", np.full(BATCH, SEQ, np.int32)) if seq_lens else None)
    state_shape = (BATCH, dirs, HIDDEN) if layout else (dirs, BATCH, HIDDEN)
    ins.append(X("h0", randn(*state_shape)) if initial else None)
    if op == "LSTM":
        ins.append(X("c0", randn(*state_shape)) if initial else None)
        ins.append(W("p", randn(dirs, 3 * HIDDEN)) if peep else None)
    while ins[-1] is None:
        ins.pop()
    return ins


def run(backend, op, ins, attrs, n_out, opset=14):
    model, feeds = node_model(op, ins, {"hidden_size": HIDDEN, **attrs}, n_out=n_out, opset=opset)
    check_against_ort(model, feeds, backend, rtol=1e-4, atol=1e-5)


N_OUT = {"RNN": 2, "GRU": 2, "LSTM": 3}


@backends
@pytest.mark.parametrize("op", ["RNN", "GRU", "LSTM"])
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
def test_recurrent_directions(backend, op, direction):
    dirs = 2 if direction == "bidirectional" else 1
    run(backend, op, recurrent_inputs(op, dirs, initial=True), {"direction": direction}, N_OUT[op])


@backends
@pytest.mark.parametrize("op", ["RNN", "GRU", "LSTM"])
def test_recurrent_defaults_no_bias(backend, op):
    run(backend, op, recurrent_inputs(op, 1, bias=False), {}, N_OUT[op], opset=7)


@backends
@pytest.mark.parametrize("op", ["RNN", "GRU", "LSTM"])
def test_recurrent_batchwise_layout(backend, op):
    # ONNX Runtime has no layout=1 kernels: the ONNX reference is the oracle
    from onnx.reference import ReferenceEvaluator

    ins = recurrent_inputs(op, 2, initial=True, layout=1)
    model, feeds = node_model(op, ins, {"hidden_size": HIDDEN, "layout": 1, "direction": "bidirectional"},
                              n_out=N_OUT[op], opset=14)
    want = dict(zip([o.name for o in model.graph.output], ReferenceEvaluator(model).run(None, feeds)))
    assert_close(kiln_run(model, feeds, backend), want, 1e-4, 1e-5)


@backends
@pytest.mark.parametrize("op", ["RNN", "GRU", "LSTM"])
def test_recurrent_only_last_state(backend, op):
    model, feeds = node_model(op, recurrent_inputs(op, 1), {"hidden_size": HIDDEN}, n_out=N_OUT[op], opset=14)
    model.graph.node[0].output[0] = ""  # Y not requested
    del model.graph.output[0]
    check_against_ort(model, feeds, backend, rtol=1e-4, atol=1e-5)


@backends
def test_gru_linear_before_reset(backend):
    run(backend, "GRU", recurrent_inputs("GRU", 2, initial=True),
        {"linear_before_reset": 1, "direction": "bidirectional"}, 2)


@backends
def test_lstm_peepholes_and_full_sequence_lens(backend):
    run(backend, "LSTM", recurrent_inputs("LSTM", 1, initial=True, peep=True, seq_lens=True), {}, 3)


@backends
def test_lstm_runtime_weights(backend):
    run(backend, "LSTM", recurrent_inputs("LSTM", 1, const_weights=False), {}, 3)


@backends
@pytest.mark.parametrize("op,acts,alpha,beta", [
    ("RNN", ["Relu"], None, None),
    ("RNN", ["LeakyRelu"], [0.2], None),
    ("GRU", ["HardSigmoid", "Softsign"], [0.3], [0.4]),
    ("LSTM", ["Sigmoid", "Elu", "ScaledTanh"], [0.7, 1.2], [0.9]),
    ("LSTM", ["HardSigmoid", "Affine", "Tanh"], [0.25, 0.5], [0.5, 0.1]),
])
def test_recurrent_activations(backend, op, acts, alpha, beta):
    attrs = {"activations": acts}
    if alpha:
        attrs["activation_alpha"] = alpha
    if beta:
        attrs["activation_beta"] = beta
    run(backend, op, recurrent_inputs(op, 1, initial=True), attrs, N_OUT[op])


@backends
@pytest.mark.parametrize("op", ["RNN", "GRU", "LSTM"])
def test_recurrent_clip(backend, op):
    run(backend, op, recurrent_inputs(op, 1), {"clip": 0.3}, N_OUT[op])


def test_partial_sequence_lens_is_unsupported():
    ins = recurrent_inputs("RNN", 1)
    ins = ins[:4] + [C("sl", np.array([SEQ, SEQ - 1], np.int32))]
    model, _ = node_model("RNN", ins, {"hidden_size": HIDDEN}, n_out=2, opset=14)
    with pytest.raises(UnsupportedOperatorError, match="sequence_lens"):
        from_onnx(model)


def test_steps_share_the_weights_and_write_their_states_in_place():
    """A GRU's steps slice R into its z-r and h columns: folded per step, those slices were
    50 copies of the weights (kiln/passes/algebraic.py: equal constants become one). The
    stacked output's parts are views of the steps' states, written into their slots
    (kiln/passes/concat_in_place.py): no concat kernel."""
    import onnx
    from onnx import helper

    import kiln

    seq, hidden = 12, 32
    ins = [X("x", randn(seq, 1, INPUT)), C("w", randn(1, 3 * hidden, INPUT)), C("r", randn(1, 3 * hidden, hidden)),
           C("b", randn(1, 6 * hidden))]
    model, feeds = node_model("GRU", ins, {"hidden_size": hidden, "linear_before_reset": 1}, n_out=1, opset=14)
    model.graph.node.append(helper.make_node("Tanh", ["y0"], ["t"]))
    model.graph.output[0].CopyFrom(helper.make_empty_tensor_value_info("t"))
    model = onnx.shape_inference.infer_shapes(model)
    m = kiln.compile(model, target="host")
    initializer_bytes = sum(a.nbytes for a in (ins[1][1], ins[2][1], ins[3][1]))
    assert len(m.result.plan.weights) < 2 * initializer_bytes
    assert "concat" not in [n.op for n in m.graph.nodes]
    assert "concat_in_place" in [n.op for n in m.graph.nodes]
    check_against_ort(model, feeds, "host", rtol=1e-4, atol=1e-5)

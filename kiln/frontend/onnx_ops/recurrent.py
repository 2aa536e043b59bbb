"""Converters for RNN, GRU and LSTM: the time loop unrolled into graph ops.

Sequence lengths are static and small in the models Kiln compiles, so each step becomes a
handful of ordinary ops (a matmul with the recurrence weights, adds, activations). The
input projection of every step is one matmul over the whole sequence up front. Weight
slicing and transposes act on constants and fold at compile time. Layouts, gate orders
(GRU: z, r, h; LSTM: i, o, f, c), default activations and the linear_before_reset variant
follow the ONNX spec; ``sequence_lens`` is accepted only when it is constant and equal to
the sequence length everywhere (padding would need per-batch masking).
"""
from __future__ import annotations

import numpy as np

from kiln.frontend.onnx_ops import converter
from kiln.frontend.onnx_ops.nn import static_shape
from kiln.frontend.onnx_ops.shape import take_range

# activation name -> (kiln op, takes alpha, takes beta, default alpha, default beta)
_ACTIVATIONS = {
    "relu": ("relu", False, False, None, None), "tanh": ("tanh", False, False, None, None),
    "sigmoid": ("sigmoid", False, False, None, None), "softsign": ("softsign", False, False, None, None),
    "softplus": ("softplus", False, False, None, None),
    "leakyrelu": ("leaky_relu", True, False, 0.01, None),
    "thresholdedrelu": ("thresholded_relu", True, False, 1.0, None),
    "elu": ("elu", True, False, 1.0, None),
    "hardsigmoid": ("hard_sigmoid", True, True, 0.2, 0.5),
    "affine": ("affine", True, True, 1.0, 0.0),
    "scaledtanh": ("scaled_tanh", True, True, 1.0, 1.0),
}
_DEFAULTS = {"RNN": ["Tanh"], "GRU": ["Sigmoid", "Tanh"], "LSTM": ["Sigmoid", "Tanh", "Tanh"]}
_GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}


class _Builder:
    """Small helpers that emit graph ops for one recurrent node."""

    def __init__(self, ctx, dtype):
        self.ctx, self.dtype = ctx, dtype

    def op(self, name, ins, attrs=None, out=None):
        return self.ctx.emit(name, ins, attrs or {}, out_names=[out] if out else None)[0]

    def const(self, value):
        return self.ctx.add_const(np.asarray(value, dtype=self.dtype), "rnn_c")

    def take(self, x, axis, start, stop):
        """``x[..., start:stop, ...]`` on ``axis``."""
        return take_range(self.ctx, x, axis, start, stop)

    def reshape(self, x, shape, out=None):
        return self.op("reshape", [x], {"shape": tuple(shape)}, out)

    def act(self, spec, x):
        name, alpha, beta = spec
        kiln_op = _ACTIVATIONS[name][0]
        if kiln_op == "affine":   # alpha * x + beta
            return self.op("add", [self.op("mul", [x, self.const(alpha)]), self.const(beta)])
        if kiln_op == "scaled_tanh":  # alpha * tanh(beta * x)
            return self.op("mul", [self.op("tanh", [self.op("mul", [x, self.const(beta)])]), self.const(alpha)])
        attrs = {"alpha": alpha} if alpha is not None else {}
        if beta is not None:
            attrs["beta"] = beta
        return self.op(kiln_op, [x], attrs)


def _activations(ctx, op_type: str, directions: int):
    """Per direction, the list of (name, alpha, beta) activation specs."""
    names = ctx.attr("activations") or _DEFAULTS[op_type] * directions
    per_dir = len(_DEFAULTS[op_type])
    if len(names) != per_dir * directions:
        ctx.fail(f"expected {per_dir * directions} activations; got {names}")
    alphas, betas = list(ctx.attr("activation_alpha") or []), list(ctx.attr("activation_beta") or [])
    specs = []
    for n in names:
        key = n.lower()
        if key not in _ACTIVATIONS:
            ctx.unsupported(f"activation {n!r}")
        _, has_a, has_b, da, db = _ACTIVATIONS[key]
        a = (alphas.pop(0) if alphas else da) if has_a else None
        b = (betas.pop(0) if betas else db) if has_b else None
        specs.append((key, a, b))
    return [specs[d * per_dir:(d + 1) * per_dir] for d in range(directions)]


def _check_seq_lens(ctx, seq: int, batch: int):
    if not ctx.has_input(4):
        return
    lens = ctx.require_const(4, "sequence_lens")
    if np.any(np.asarray(lens).reshape(-1) != seq):
        ctx.unsupported(f"sequence_lens {np.asarray(lens).tolist()} shorter than the sequence length {seq}")


def _initial(b: _Builder, ctx, i: int, d: int, batch: int, hidden: int, layout: int):
    """Initial state of direction ``d`` as (B, H): input ``i`` or zeros."""
    if not ctx.has_input(i):
        return b.const(np.zeros((batch, hidden)))
    x = ctx.input(i)
    if layout:
        x = b.op("transpose", [x], {"perm": (1, 0, 2)})
    return b.reshape(b.take(x, 0, d, d + 1), (batch, hidden))


def _direction_weights(b: _Builder, ctx, d: int, gates: int, hidden: int, lbr: bool):
    """(W^T (I, G*H), R^T (H, G*H), input bias (G*H,), recurrent h bias (H,) or None)."""
    w = b.op("transpose", [b.reshape(b.take(ctx.input(1), 0, d, d + 1), ctx.shape(ctx.input(1))[1:])],
             {"perm": (1, 0)})
    r = b.op("transpose", [b.reshape(b.take(ctx.input(2), 0, d, d + 1), ctx.shape(ctx.input(2))[1:])],
             {"perm": (1, 0)})
    gh = gates * hidden
    if not ctx.has_input(3):
        return w, r, None, None
    bias = b.reshape(b.take(ctx.input(3), 0, d, d + 1), (2 * gh,))
    wb, rb = b.take(bias, 0, 0, gh), b.take(bias, 0, gh, 2 * gh)
    if not lbr:
        return w, r, b.op("add", [wb, rb]), None
    # GRU linear_before_reset: the h gate's recurrent bias goes inside r * (...)
    rb_zr = b.op("concat", [b.take(rb, 0, 0, 2 * hidden), b.const(np.zeros(hidden))], {"axis": 0})
    return w, r, b.op("add", [wb, rb_zr]), b.take(rb, 0, 2 * hidden, gh)


def _clip(b: _Builder, x, clip):
    return x if clip is None else b.op("clip", [x], {"min": -clip, "max": clip})


def _rnn_step(b, x_t, h, r, acts, hidden, clip, **_):
    return b.act(acts[0], _clip(b, b.op("add", [x_t, b.op("matmul", [h, r])]), clip)), None


def _gru_step(b, x_t, h, r, acts, hidden, clip, lbr, rb_h, **_):
    f, g = acts
    r_zr, rh = r  # (``_step_weights``)
    zr = b.op("add", [b.take(x_t, 1, 0, 2 * hidden), b.op("matmul", [h, r_zr])])
    z = b.act(f, _clip(b, b.take(zr, 1, 0, hidden), clip))
    rr = b.act(f, _clip(b, b.take(zr, 1, hidden, 2 * hidden), clip))
    if lbr:
        hr = b.op("matmul", [h, rh])
        if rb_h is not None:
            hr = b.op("add", [hr, rb_h])
        pre = b.op("mul", [rr, hr])
    else:
        pre = b.op("matmul", [b.op("mul", [rr, h]), rh])
    hh = b.act(g, _clip(b, b.op("add", [b.take(x_t, 1, 2 * hidden, 3 * hidden), pre]), clip))
    one_minus_z = b.op("sub", [b.const(1.0), z])
    return b.op("add", [b.op("mul", [one_minus_z, hh]), b.op("mul", [z, h])]), None


def _lstm_step(b, x_t, h, r, acts, hidden, clip, c, peep, **_):
    f_act, g_act, h_act = acts
    a = b.op("add", [x_t, b.op("matmul", [h, r])])
    i_, o_, f_, c_ = (b.take(a, 1, k * hidden, (k + 1) * hidden) for k in range(4))
    if peep is not None:
        pi, po, pf = peep
        i_ = b.op("add", [i_, b.op("mul", [pi, c])])
        f_ = b.op("add", [f_, b.op("mul", [pf, c])])
    i = b.act(f_act, _clip(b, i_, clip))
    f = b.act(f_act, _clip(b, f_, clip))
    ct = b.act(g_act, _clip(b, c_, clip))
    c_new = b.op("add", [b.op("mul", [f, c]), b.op("mul", [i, ct])])
    if peep is not None:
        o_ = b.op("add", [o_, b.op("mul", [po, c_new])])
    o = b.act(f_act, _clip(b, o_, clip))
    return b.op("mul", [o, b.act(h_act, c_new)]), c_new


_STEPS = {"RNN": _rnn_step, "GRU": _gru_step, "LSTM": _lstm_step}


def _step_weights(b: _Builder, op_type: str, r, hidden: int):
    """What every step multiplies by: R^T, or for a GRU its z-and-r and its h columns,
    sliced once here rather than at each step (a computed R would be copied per step)."""
    if op_type != "GRU":
        return r
    return b.take(r, 1, 0, 2 * hidden), b.take(r, 1, 2 * hidden, 3 * hidden)


def _run_direction(b: _Builder, ctx, op_type, d, reverse, x2d, seq, batch, hidden, acts, layout):
    """Unroll one direction; returns the hidden states by time step and the final (h, c)."""
    gates = _GATES[op_type]
    lbr = op_type == "GRU" and bool(ctx.attr("linear_before_reset", 0))
    w, r, bias, rb_h = _direction_weights(b, ctx, d, gates, hidden, lbr)
    r = _step_weights(b, op_type, r, hidden)
    xp = b.op("matmul", [x2d, w])                   # (S*B, G*H): all input projections at once
    if bias is not None:
        xp = b.op("add", [xp, bias])
    xp = b.reshape(xp, (seq, batch, gates * hidden))
    h = _initial(b, ctx, 5, d, batch, hidden, layout)
    c = _initial(b, ctx, 6, d, batch, hidden, layout) if op_type == "LSTM" else None
    peep = None
    if op_type == "LSTM" and ctx.has_input(7):
        p = b.reshape(b.take(ctx.input(7), 0, d, d + 1), (3 * hidden,))
        peep = tuple(b.take(p, 0, k * hidden, (k + 1) * hidden) for k in range(3))
    clip = ctx.attr("clip")
    clip = None if clip is None else float(clip)
    states = [None] * seq
    for t in (reversed(range(seq)) if reverse else range(seq)):
        x_t = b.reshape(b.take(xp, 0, t, t + 1), (batch, gates * hidden))
        h, c_next = _STEPS[op_type](b, x_t, h, r, acts, hidden, clip, lbr=lbr, rb_h=rb_h, c=c, peep=peep)
        c = c_next if op_type == "LSTM" else None
        states[t] = h
    return states, h, c


def _stack(b: _Builder, parts, axis, shape_each, out=None, perm=None):
    """Concatenate ``parts`` (each reshaped to ``shape_each``) on ``axis``; optionally transposed."""
    ps = [b.reshape(p, shape_each) for p in parts]
    y = ps[0] if len(ps) == 1 else b.op("concat", ps, {"axis": axis})
    if perm:
        return b.op("transpose", [y], {"perm": perm}, out)
    return b.op("identity", [y], out=out) if out else y


def _recurrent(op_type: str):
    def convert(ctx, node):
        x = ctx.input(0)
        xs = static_shape(ctx, x, f"{op_type} input")
        layout = int(ctx.attr("layout", 0)) if ctx.opset >= 14 else 0
        b = _Builder(ctx, ctx.type(x).dtype.np)
        if layout:
            x = b.op("transpose", [x], {"perm": (1, 0, 2)})
            xs = (xs[1], xs[0], xs[2])
        seq, batch, size = xs
        direction = ctx.attr("direction", "forward")
        if direction not in ("forward", "reverse", "bidirectional"):
            ctx.fail(f"direction {direction!r} is not forward, reverse or bidirectional")
        if op_type == "LSTM" and int(ctx.attr("input_forget", 0)):
            ctx.unsupported("input_forget=1 (coupled input and forget gates)")
        dirs = 2 if direction == "bidirectional" else 1
        hidden = int(ctx.attr("hidden_size") or static_shape(ctx, ctx.input(2), "R")[-1])
        _check_seq_lens(ctx, seq, batch)
        acts = _activations(ctx, op_type, dirs)
        x2d = b.reshape(x, (seq * batch, size))
        results = [_run_direction(b, ctx, op_type, d, direction == "reverse" or d == 1, x2d, seq, batch,
                                  hidden, acts[d], layout) for d in range(dirs)]
        outs = list(ctx.outputs()) + [""] * 3
        names = []
        if outs[0]:
            per_t = [_stack(b, [res[0][t] for res in results], 1, (1, 1, batch, hidden)) for t in range(seq)]
            names.append(_stack(b, per_t, 0, (1, dirs, batch, hidden), outs[0], (2, 0, 1, 3) if layout else None))
        else:
            names.append("")
        for k, out in ((1, outs[1]), (2, outs[2])):
            if out:
                names.append(_stack(b, [res[k] for res in results], 0, (1, batch, hidden), out,
                                    (1, 0, 2) if layout else None))
            else:
                names.append("")
        return names[:len(ctx.outputs())]
    return convert


converter("RNN", since=7)(_recurrent("RNN"))
converter("GRU", since=7)(_recurrent("GRU"))
converter("LSTM", since=7)(_recurrent("LSTM"))

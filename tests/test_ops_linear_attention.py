"""LinearAttention (opset 27): the recurrence unrolled over tokens, against a numpy reference
of the four update rules (with grouped-query heads, per-head and per-key decay, a past state)."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from kiln.errors import UnsupportedOperatorError
from tests.util import BACKENDS, kiln_run, make_model

RNG = np.random.default_rng(27)


def reference(q, k, v, past, decay, beta, hq, hkv, rule, scale):
    """The recurrence token by token, as ONNX states it."""
    b, t, _ = q.shape
    dk, dv, g = q.shape[-1] // hq, v.shape[-1] // hkv, hq // hkv
    s = past.astype(np.float64).copy()
    out = np.zeros((b, t, hq * dv))
    for i in range(t):
        kt = k[:, i].reshape(b, hkv, dk).astype(np.float64)
        vt = v[:, i].reshape(b, hkv, dv).astype(np.float64)
        if rule in ("gated", "gated_delta"):
            d = decay[:, i].reshape(b, hkv, -1)  # per head (1) or per key dim (dk)
            s = np.exp(d)[..., None] * s
        if rule in ("delta", "gated_delta"):
            recalled = np.einsum("bhkv,bhk->bhv", s, kt)
            bt = beta[:, i].reshape(b, -1)[:, :, None, None]
            s = s + bt * kt[..., None] * (vt - recalled)[:, :, None, :]
        else:
            s = s + kt[..., None] * vt[:, :, None, :]
        qt = q[:, i].reshape(b, hkv, g, dk)
        out[:, i] = (scale * np.einsum("bhgk,bhkv->bhgv", qt, s)).reshape(b, hq * dv)
    return out.astype(np.float32), s.astype(np.float32)


def _model(shapes, hq, hkv, rule, with_past, decay_w, scale):
    b, t, dk, dv = shapes
    names = ["q", "k", "v", "past" if with_past else "", "decay" if decay_w else "",
             "beta" if rule in ("delta", "gated_delta") else ""]
    while not names[-1]:
        names.pop()
    inputs = [("q", np.float32, (b, t, hq * dk)), ("k", np.float32, (b, t, hkv * dk)), ("v", np.float32, (b, t, hkv * dv))]
    if with_past:
        inputs.append(("past", np.float32, (b, hkv, dk, dv)))
    if decay_w:
        inputs.append(("decay", np.float32, (b, t, decay_w)))
    if "beta" in names:
        inputs.append(("beta", np.float32, (b, t, hkv)))
    node = helper.make_node("LinearAttention", names, ["y", "state"], q_num_heads=hq, kv_num_heads=hkv,
                            update_rule=rule, **({"scale": scale} if scale else {}))
    return make_model([node], inputs, [("y", np.float32, (b, t, hq * dv)), ("state", np.float32, (b, hkv, dk, dv))],
                      opset=27)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("rule, hq, hkv, decay_per_key, with_past, scale", [
    ("linear", 2, 2, False, False, 0.0),
    ("gated", 4, 2, True, True, 0.5),          # grouped-query heads, per-key decay
    ("delta", 3, 1, False, True, 0.0),         # one key/value head for three query heads
    ("gated_delta", 4, 4, False, True, 0.0),   # per-head decay
])
def test_linear_attention_matches_the_recurrence(backend, rule, hq, hkv, decay_per_key, with_past, scale):
    b, t, dk, dv = 2, 5, 4, 3
    gated = rule in ("gated", "gated_delta")
    decay_w = (hkv * dk if decay_per_key else hkv) if gated else 0
    model = _model((b, t, dk, dv), hq, hkv, rule, with_past, decay_w, scale)
    k = RNG.standard_normal((b, t, hkv, dk))
    k /= np.linalg.norm(k, axis=-1, keepdims=True)  # unit keys, as the delta rules expect
    feeds = {"q": RNG.standard_normal((b, t, hq * dk)).astype(np.float32),
             "k": k.reshape(b, t, hkv * dk).astype(np.float32),
             "v": RNG.standard_normal((b, t, hkv * dv)).astype(np.float32)}
    past = RNG.standard_normal((b, hkv, dk, dv)).astype(np.float32) if with_past else np.zeros((b, hkv, dk, dv), np.float32)
    if with_past:
        feeds["past"] = past
    decay = -RNG.uniform(0.01, 0.5, (b, t, decay_w)).astype(np.float32) if gated else None
    if gated:
        feeds["decay"] = decay
    beta = RNG.uniform(0.1, 0.9, (b, t, hkv)).astype(np.float32) if "beta" in [i.name for i in model.graph.input] else None
    if beta is not None:
        feeds["beta"] = beta
    got = kiln_run(model, feeds, backend)
    y, state = reference(feeds["q"], feeds["k"], feeds["v"], past, decay, beta, hq, hkv, rule,
                         scale or 1 / np.sqrt(dk))
    np.testing.assert_allclose(got["y"], y, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got["state"], state, rtol=1e-4, atol=1e-5)


def test_long_prefills_are_refused_by_name():
    import kiln
    from kiln.frontend.onnx_ops.linear_attention import MAX_TOKENS

    model = _model((1, MAX_TOKENS + 1, 4, 4), 1, 1, "linear", False, 0, 0.0)
    with pytest.raises(UnsupportedOperatorError, match="LinearAttention over"):
        kiln.compile(model)

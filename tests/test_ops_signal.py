"""DFT: the twiddle matrix against numpy.fft, and the op against ONNX Runtime; STFT against numpy."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from kiln.frontend.onnx_ops.signal import dft_matrix
from tests.util import BACKENDS, check_against_ort, kiln_run

RNG = np.random.default_rng(21)


@pytest.mark.parametrize("n_in,length", [(8, 8), (10, 10), (7, 12), (12, 7), (9, 9)])
@pytest.mark.parametrize("channels,inverse,onesided", [  # onesided forward DFTs take real signals
    (1, False, False), (2, False, False), (1, False, True), (1, True, False), (2, True, False),
    (1, True, True), (2, True, True)])
def test_dft_matrix_matches_numpy_fft(n_in, length, channels, inverse, onesided):
    x = RNG.standard_normal((3, n_in, channels))
    z = x[..., 0] + (1j * x[..., 1] if channels == 2 else 0)
    if inverse and onesided:
        want = np.fft.irfft(z, n=length, axis=1)[..., None]
    else:
        full = (np.fft.ifft if inverse else np.fft.fft)(z, n=length, axis=1)
        full = full[:, : length // 2 + 1] if onesided else full
        want = np.stack([full.real, full.imag], -1)
    got = (x.reshape(3, -1) @ dft_matrix(n_in, channels, length, inverse, onesided)).reshape(want.shape)
    np.testing.assert_allclose(got, want, atol=1e-12)


def dft_model(shape, axis, **attrs):
    out = list(shape)
    length = shape[axis]
    out[axis] = length // 2 + 1 if attrs.get("onesided") else length
    out[-1] = 2
    node = helper.make_node("DFT", ["x"], ["y"], axis=axis, **attrs)
    graph = helper.make_graph([node], "dft", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, out)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape,axis,attrs", [((2, 16, 1), 1, {}), ((2, 16, 1), 1, {"onesided": 1}),
                                              ((3, 5, 12, 2), 2, {}), ((4, 6, 2), 1, {}),
                                              ((4, 6, 2), 1, {"inverse": 1}), ((2, 8, 3, 2), 1, {"inverse": 1})])
def test_dft_against_ort(backend, shape, axis, attrs):
    x = RNG.standard_normal(shape).astype(np.float32)
    check_against_ort(dft_model(shape, axis, **attrs), {"x": x}, backend, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shape,axis", [((1, 8, 2), 1), ((2, 10, 10, 2), 1), ((3, 5, 12, 2), 2)])
def test_inverse_complex_dft_matches_numpy_ifft(shape, axis):
    x = RNG.standard_normal(shape).astype(np.float32)
    (got,) = kiln_run(dft_model(shape, axis, inverse=1), {"x": x}, "host").values()
    full = np.fft.ifft(x[..., 0].astype(np.float64) + 1j * x[..., 1], axis=axis)
    np.testing.assert_allclose(got, np.stack([full.real, full.imag], -1), rtol=1e-5, atol=1e-6)


def test_inverse_dft_matches_onnx_case_where_it_is_exact():
    """ONNX's test_dft_inverse (excluded from the conformance count as disputed): its expected
    output carries a float32 FFT's noise (1.9e-7 where the exact value is ~1e-15), beyond its
    atol of 1e-7. Kiln's answer matches numpy's float64 ifft within the case's rtol/atol, and
    the expected output wherever that output is not the FFT's noise."""
    from kiln import onnx_backend
    from kiln.testing.onnx_node_cases import exclusion, load_cases

    case = next(c for c in load_cases({"DFT"}) if c.name == "test_dft_inverse")
    assert exclusion(case) == "disputed"
    inputs, (expected,) = case.data_sets[0]
    got = onnx_backend.prepare(case.model, "CPU").run(list(inputs))[0]
    x = inputs[0].astype(np.float64)
    exact = np.fft.ifft(x[..., 0] + 1j * x[..., 1], axis=1)
    exact = np.stack([exact.real, exact.imag], -1)
    np.testing.assert_allclose(got, exact, rtol=case.rtol, atol=case.atol)
    noise = np.abs(exact) < 1e-6
    np.testing.assert_allclose(got[~noise], expected[~noise], rtol=case.rtol, atol=case.atol)


# -- STFT: frames at constant positions, each windowed frame's DFT --------------------------------------

def _stft_model(shape, step, length=None, window=None, window_input=False, onesided=1):
    from tests.util import make_model

    names = ["signal", "step", "window" if (window is not None or window_input) else "", "length" if length else ""]
    while names and not names[-1]:
        names.pop()
    inits = [("step", np.array(step, np.int64))]
    if window is not None:
        inits.append(("window", window.astype(np.float32)))
    if length:
        inits.append(("length", np.array(length, np.int64)))
    frame = length or (len(window) if window is not None else shape[1])
    frames = (shape[1] - frame) // step + 1
    bins = frame // 2 + 1 if onesided else frame
    inputs = [("signal", np.float32, shape)] + ([("window", np.float32, (frame,))] if window_input else [])
    node = helper.make_node("STFT", names, ["y"], onesided=onesided)
    return make_model([node], inputs, [("y", np.float32, (shape[0], frames, bins, 2))], inits, opset=17)


def _stft_reference(signal, step, frame, window, onesided):
    x = signal[..., 0] + (1j * signal[..., 1] if signal.shape[-1] == 2 else 0)
    frames = (x.shape[1] - frame) // step + 1
    parts = np.stack([x[:, f * step: f * step + frame] * window for f in range(frames)], axis=1)
    spec = np.fft.rfft(parts, axis=-1) if onesided else np.fft.fft(parts, axis=-1)
    return np.stack([spec.real, spec.imag], axis=-1).astype(np.float32)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", ["hann", "frame_length", "runtime_window", "complex_two_sided"])
def test_stft_matches_numpy(backend, case):
    frame, step = 16, 5
    hann = np.hanning(frame + 1)[:-1]  # periodic Hann, as audio front ends use
    signal = RNG.standard_normal((2, 64, 2 if case == "complex_two_sided" else 1)).astype(np.float32)
    feeds = {"signal": signal}
    if case == "hann":
        model, window, onesided = _stft_model(signal.shape, step, window=hann), hann, True
    elif case == "frame_length":
        model, window, onesided = _stft_model(signal.shape, step, length=frame), np.ones(frame), True
    elif case == "runtime_window":
        model, window, onesided = _stft_model(signal.shape, step, window_input=True, length=frame), hann, True
        feeds["window"] = hann.astype(np.float32)
    else:
        model, window, onesided = _stft_model(signal.shape, step, window=hann, onesided=0), hann, False
    got = kiln_run(model, feeds, backend)["y"]
    np.testing.assert_allclose(got, _stft_reference(signal, step, frame, window, onesided), rtol=1e-4, atol=1e-4)


def test_stft_refuses_a_onesided_complex_signal():
    from kiln.errors import KilnError

    model = _stft_model((1, 32, 2), 4, window=np.ones(8), onesided=1)
    import kiln

    with pytest.raises(KilnError, match="onesided STFT takes a real signal"):
        kiln.compile(model)


# -- MelWeightMatrix, and a log-mel spectrogram: STFT -> |.|^2 -> mel weights -> log ------------------

@pytest.mark.parametrize("n_mels, dft, rate, lo, hi", [(8, 16, 8192, 0.0, 4096.0), (40, 400, 16000, 0.0, 8000.0),
                                                       (10, 64, 22050, 300.0, 8000.0)])
def test_mel_weight_matrix_filters(n_mels, dft, rate, lo, hi):
    from kiln.frontend.onnx_ops.signal import mel_weight_matrix

    m = mel_weight_matrix(n_mels, dft, rate, lo, hi)
    assert m.shape == (dft // 2 + 1, n_mels) and m.min() >= 0 and m.max() <= 1
    assert np.allclose(m.max(axis=0), 1.0)  # every triangle peaks at 1
    peaks = m.argmax(axis=0)
    assert np.all(np.diff(peaks) >= 0)  # the filters move up the spectrum


@pytest.mark.parametrize("backend", BACKENDS)
def test_log_mel_spectrogram_matches_numpy(backend):
    """Whisper-style features: |STFT|^2 (Hann window) @ MelWeightMatrix, then log."""
    from tests.util import make_model
    from kiln.frontend.onnx_ops.signal import mel_weight_matrix

    frame, step, n_mels, rate = 64, 16, 12, 16000
    hann = np.hanning(frame + 1)[:-1].astype(np.float32)
    bins = frame // 2 + 1
    nodes = [helper.make_node("STFT", ["signal", "step", "window"], ["spec"]),
             helper.make_node("ReduceSumSquare", ["spec", "last"], ["power"], keepdims=0),
             helper.make_node("MelWeightMatrix", ["n_mels", "dft", "rate", "lo", "hi"], ["mel"]),
             helper.make_node("MatMul", ["power", "mel"], ["mel_power"]),
             helper.make_node("Add", ["mel_power", "eps"], ["safe"]), helper.make_node("Log", ["safe"], ["y"])]
    inits = [("step", np.array(step, np.int64)), ("window", hann), ("last", np.array([-1], np.int64)),
             ("n_mels", np.array(n_mels, np.int64)), ("dft", np.array(frame, np.int64)),
             ("rate", np.array(rate, np.int64)), ("lo", np.array(0.0, np.float32)),
             ("hi", np.array(rate / 2, np.float32)), ("eps", np.array(1e-6, np.float32))]
    frames = (400 - frame) // step + 1
    model = make_model(nodes, [("signal", np.float32, (1, 400, 1))], [("y", np.float32, (1, frames, n_mels))],
                       inits, opset=18)
    signal = RNG.standard_normal((1, 400, 1)).astype(np.float32)
    got = kiln_run(model, {"signal": signal}, backend)["y"]
    spec = _stft_reference(signal, step, frame, hann, True)
    want = np.log((spec ** 2).sum(-1) @ mel_weight_matrix(n_mels, frame, rate, 0.0, rate / 2) + 1e-6)
    assert bins == spec.shape[2]
    np.testing.assert_allclose(got, want.astype(np.float32), rtol=1e-4, atol=1e-4)

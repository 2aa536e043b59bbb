"""Converters for signal ops: DFT, STFT and MelWeightMatrix.

A DFT of fixed length is a linear map over one axis, so it becomes one ``matmul`` with a
constant matrix (the twiddle factors, computed here in float64): the signal axis moves
next to the last (real/imaginary) axis, the two merge, and ``[..., N*c] @ M[N*c, K*c']``
gives ``[..., K, c']``. For the short transforms models use (audio frames, spectral
features) this is as fast as an FFT would be and needs no new kernel.
"""
from __future__ import annotations

import numpy as np

from kiln.frontend.onnx_ops import converter
from kiln.frontend.onnx_ops.shape import ints
from kiln.ir.ops import normalize_axis


def dft_matrix(n_in: int, channels: int, length: int, inverse: bool, onesided: bool) -> np.ndarray:
    """``M[n*channels + ci, k*c_out + co]``: the map from the input signal (real, or real and
    imaginary interleaved) to the output spectrum, as numpy.fft computes it with ``n=length``
    (the signal padded with zeros or truncated to ``length``)."""
    if inverse and onesided:
        return _irfft_matrix(n_in, channels, length)
    k_out = length // 2 + 1 if onesided else length
    n = np.arange(min(n_in, length))[:, None]
    k = np.arange(k_out)[None, :]
    angle = 2 * np.pi * n * k / length
    sign = 1.0 if inverse else -1.0
    cos, sin = np.cos(angle), sign * np.sin(angle)  # e^{sign*i*angle} = cos + i*sin
    scale = 1.0 / length if inverse else 1.0
    m = np.zeros((n_in, channels, k_out, 2))
    rows = slice(0, min(n_in, length))
    m[rows, 0, :, 0], m[rows, 0, :, 1] = cos * scale, sin * scale            # real input part
    if channels == 2:
        m[rows, 1, :, 0], m[rows, 1, :, 1] = -sin * scale, cos * scale       # i * (cos + i sin)
    return m.reshape(n_in * channels, k_out * 2)


def _irfft_matrix(n_in: int, channels: int, length: int) -> np.ndarray:
    """numpy.fft.irfft: the first ``length//2 + 1`` bins of a Hermitian spectrum -> a real
    signal of ``length`` samples; the imaginary parts of DC and Nyquist do not contribute."""
    bins = min(n_in, length // 2 + 1)
    k = np.arange(bins)[:, None]
    t = np.arange(length)[None, :]
    angle = 2 * np.pi * k * t / length
    weight = np.full((bins, 1), 2.0)
    weight[0] = 1.0
    if length % 2 == 0 and bins == length // 2 + 1:
        weight[-1] = 1.0
    m = np.zeros((n_in, channels, length, 1))
    m[:bins, 0, :, 0] = weight * np.cos(angle) / length
    if channels == 2:
        imag = -weight * np.sin(angle) / length
        imag[0] = 0.0
        if length % 2 == 0 and bins == length // 2 + 1:
            imag[-1] = 0.0
        m[:bins, 1, :, 0] = imag
    return m.reshape(n_in * channels, length)


@converter("DFT", since=17)
def _dft(ctx, node):
    x = ctx.input(0)
    shape = tuple(ctx.shape(x))
    rank = len(shape)
    if not all(isinstance(d, int) for d in shape):
        ctx.unsupported("DFT of a signal with symbolic dims")
    channels = shape[-1]
    if channels not in (1, 2):
        ctx.fail(f"the last dim of a DFT input holds the real (1) or real and imaginary (2) parts; got {shape}")
    if ctx.opset >= 20:
        axis = int(ints(ctx.require_const(2, "axis"))[0]) if ctx.has_input(2) else -2
    else:
        axis = int(ctx.attr("axis", 1))
    axis = normalize_axis(axis, rank, "DFT axis")
    if axis == rank - 1:
        ctx.fail(f"the DFT axis cannot be the last (real/imaginary) dim of {shape}")
    inverse, onesided = bool(ctx.attr("inverse", 0)), bool(ctx.attr("onesided", 0))
    if onesided and not inverse and channels == 2:
        ctx.fail("onesided DFT takes a real signal (last dim 1)")
    n_in = shape[axis]
    if ctx.has_input(1):
        length = int(ints(ctx.require_const(1, "dft_length"))[0])
    else:
        length = 2 * (n_in - 1) if inverse and onesided else n_in
    if length < 1:
        ctx.fail(f"dft_length must be positive; got {length}")

    # move the signal axis next to the last one, merge the two, multiply, and move it back
    perm = [d for d in range(rank - 1) if d != axis] + [axis, rank - 1]
    moved = x if perm == list(range(rank)) else ctx.emit("transpose", [x], {"perm": tuple(perm)})[0]
    outer = tuple(shape[d] for d in perm[:-2])
    flat = ctx.emit("reshape", [moved], {"shape": outer + (n_in * channels,)})[0]
    matrix = dft_matrix(n_in, channels, length, inverse, onesided).astype(ctx.type(x).dtype.np)
    k_out, c_out = (length, 1) if inverse and onesided else (length // 2 + 1 if onesided else length, 2)
    y = ctx.emit("matmul", [flat, ctx.add_const(matrix, "dft")])[0]
    back = [perm.index(d) for d in range(rank)]
    if back == list(range(rank)):
        return ctx.emit("reshape", [y], {"shape": outer + (k_out, c_out)}, out_names=ctx.outputs())
    y = ctx.emit("reshape", [y], {"shape": outer + (k_out, c_out)})[0]
    return ctx.emit("transpose", [y], {"perm": tuple(back)}, out_names=ctx.outputs())


@converter("STFT", since=17)
def _stft(ctx, node):
    """Frames of the signal gathered at constant positions ([B, frames, frame_length, c]),
    then each frame's windowed DFT as one matmul: a constant window is folded into the DFT
    matrix (row n scaled by window[n]); a run-time window multiplies the frames first."""
    x = ctx.input(0)
    shape = tuple(ctx.shape(x))
    if len(shape) != 3 or not all(isinstance(d, int) for d in shape) or shape[-1] not in (1, 2):
        ctx.fail(f"STFT takes a signal [batch, length, 1 or 2] of static shape; got {shape}")
    batch, n_signal, channels = shape
    step = int(ints(ctx.require_const(1, "frame_step"))[0])
    window = ctx.input(2) if ctx.has_input(2) else None
    if ctx.has_input(3):
        length = int(ints(ctx.require_const(3, "frame_length"))[0])
    else:
        length = ctx.shape(window)[0] if window is not None else n_signal
    if window is not None and tuple(ctx.shape(window)) != (length,):
        ctx.fail(f"the window has shape {tuple(ctx.shape(window))}; expected ({length},), the frame length")
    onesided = bool(ctx.attr("onesided", 1))
    if onesided and channels == 2:
        ctx.fail("onesided STFT takes a real signal (last dim 1)")
    if step < 1 or not 1 <= length <= n_signal:
        ctx.fail(f"frame_step must be positive and frame_length within the signal ({n_signal}); got "
                 f"{step} and {length}")
    frames = (n_signal - length) // step + 1
    positions = np.arange(frames)[:, None] * step + np.arange(length)[None, :]
    framed = ctx.emit("gather", [x, ctx.add_const(positions.astype(np.int64), "stft_pos")], {"axis": 1})[0]
    dtype = ctx.type(x).dtype.np
    matrix = dft_matrix(length, channels, length, False, onesided)
    win = ctx.const(window) if window is not None else np.ones(length)
    if win is not None:  # fold the window into the DFT's rows
        matrix = matrix * np.repeat(np.asarray(win, np.float64), channels)[:, None]
    else:  # a run-time window: weight the frames, [B, F, L, c] * [L, 1]
        w = ctx.emit("reshape", [window], {"shape": (length, 1)})[0]
        framed = ctx.emit("mul", [framed, w])[0]
    flat = ctx.emit("reshape", [framed], {"shape": (batch, frames, length * channels)})[0]
    y = ctx.emit("matmul", [flat, ctx.add_const(matrix.astype(dtype), "stft_dft")])[0]
    k_out = length // 2 + 1 if onesided else length
    return ctx.emit("reshape", [y], {"shape": (batch, frames, k_out, 2)}, out_names=ctx.outputs())


def mel_weight_matrix(n_mels: int, dft_length: int, sample_rate: float, lower_hz: float, upper_hz: float) -> np.ndarray:
    """[dft_length // 2 + 1, n_mels] triangular filters with peak 1, on the mel scale
    mel(f) = 2595 log10(1 + f / 700). The filter edges are spaced as ONNX's reference and
    ONNX Runtime space them (n_mels + 2 steps between the edge frequencies) and snapped to the
    spectrogram bin floor((dft_length + 1) f / sample_rate)."""
    ln10 = np.log(10.0)
    lo_mel, hi_mel = (2595.0 * np.log1p(f / 700.0) / ln10 for f in (lower_hz, upper_hz))
    mels = np.arange(n_mels + 2) * ((hi_mel - lo_mel) / (n_mels + 2)) + lo_mel
    hz = 700.0 * np.expm1(mels / 2595.0 * ln10)
    edges = ((dft_length + 1) * hz // sample_rate).astype(np.int64)
    left, centre, right = edges[:-2][None, :], edges[1:-1][None, :], edges[2:][None, :]
    j = np.arange(dft_length // 2 + 1)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        rise = (j - left) / (centre - left)
        fall = (right - j) / (right - centre)
    return np.where(j == centre, 1.0, np.where((left <= j) & (j < centre), rise,
                                               np.where((centre < j) & (j < right), fall, 0.0)))


@converter("MelWeightMatrix", since=17)
def _mel_weight_matrix(ctx, node):
    from kiln.frontend.onnx import onnx_dtype

    n_mels, dft_length = (int(ints(ctx.require_const(i, what))[0]) for i, what in ((0, "num_mel_bins"),
                                                                                  (1, "dft_length")))
    rate, lower, upper = (float(np.asarray(ctx.require_const(i, what)).reshape(-1)[0])
                          for i, what in ((2, "sample_rate"), (3, "lower_edge_hertz"), (4, "upper_edge_hertz")))
    if n_mels < 1 or dft_length < 1 or rate <= 0 or not 0 <= lower < upper:
        ctx.fail(f"MelWeightMatrix needs num_mel_bins, dft_length and sample_rate positive and "
                 f"0 <= lower_edge_hertz < upper_edge_hertz; got {n_mels}, {dft_length}, {rate}, {lower}, {upper}")
    matrix = mel_weight_matrix(n_mels, dft_length, rate, lower, upper)
    dtype = onnx_dtype(ctx.attr("output_datatype", 1)).np
    return [ctx.add_const(matrix.astype(dtype), "mel_weights")]

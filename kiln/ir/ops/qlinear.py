"""Integer kernels for quantized models: ``qconv``, ``qmatmul`` and ``qadd``.

These are the ops the ``quantize`` pass (``kiln/passes/quantize.py``) makes out of
DequantizeLinear -> Conv/MatMul/Gemm/Add -> QuantizeLinear patterns and out of
QLinearConv/QLinearMatMul. Each is one graph op with integer semantics that every target
lowers from the same compute definition:

    acc[o]  = sum_k  xu[k] * w[o, k]                     uint8 x int8 -> int32
    v       = (int64(acc + bias[o]) * mult[o] + 2^(shift[o]-1)) >> shift[o]
    y       = clamp(v + y_zp, lo, hi)                    int8 / uint8

- ``xu`` is the activation moved to uint8 by ``act_offset`` (128 for int8 activations,
  0 for uint8): u8 x s8 is the operand pair of x86 VNNI ``vpdpbusd`` and of AVX2
  ``vpmaddubsw``; gcc emits them for a dot product whose operands are both contiguous
  along the reduction, which is how both ops lay out their reduction (weights packed
  (O, ..., K) at compile time, activations in a uint8 staging buffer, channels last).
  A target with signed x signed dot products (NEON ``sdot``, ``smull``) stages int8 instead:
  ``act_offset`` 0 for int8 activations and -128 for uint8 ones (``x - 128`` as int8), which
  ``kiln/passes/signed_activations.py`` chooses for it; the staged domain is what
  :func:`staged_dtype` says, and the bias term below absorbs whichever offset is used.
- ``bias`` already holds the zero-point terms: ``bias_q - (x_zp + act_offset) * sum_k w``,
  so the inner loop has no zero-point arithmetic (weights are symmetric: zero point 0).
- **Rounding**: ``mult`` (int32, normalized to [2^30, 2^31)) and ``shift`` encode the real
  multiplier ``x_scale * w_scale[o] / y_scale`` as ``mult * 2^-shift``; adding
  ``2^(shift-1)`` before the arithmetic shift rounds half up (towards +infinity) (computed
  as ``((v >> (shift-1)) + 1) >> 1``, the same integer; see :func:`requant`).
  ONNX Runtime rounds half to even in float32, so the two agree except on exact ties
  and float32 rounding of the product: at most one quantization step apart.
- ``lo``/``hi`` clamp in the quantized domain: the output type's range intersected with a
  fused ReLU/Clip (quantizing is monotonic, so clamp-then-quantize equals
  quantize-then-clamp at the quantized bounds). Attribute ``min_shift`` (the smallest
  ``shift``, set by the ``quantize`` pass with the constants): when it is 31 or more (every
  real multiplier below 1) the shifted value fits int32 and the clamp runs in int32; from
  33 (below 1/4, what ORT's quantizer gives a convolution) the rounding itself runs in
  int32 on the product's high 32 bits -- the same integer (:func:`requant_high_word`).
"""
from __future__ import annotations

import numpy as np

from kiln.errors import ShapeError
from kiln.ir.compute import compute, rsum
from kiln.ir.dtype import DType
from kiln.ir.expr import Bin, Cast, Const, Select
from kiln.ir.graph import TensorType
from kiln.ir.ops import FusionKind, broadcast_index, broadcast_shapes, register
from kiln.ir.ops.nn import conj, offset, static_shape, window_attrs, window_out_size

I32, I64, U8, I8 = DType.int32, DType.int64, DType.uint8, DType.int8
# qconv with KH > 1 and attribute im2col (set for targets with a dot tile): each window copied
# into one run (see _windows_in_one_run); False turns it off everywhere
IM2COL = True
QTYPES = (DType.int8, DType.uint8)
# (activation dtype, act_offset) -> the dtype the reduction reads activations in
STAGED = {(U8, 0): U8, (I8, 128): U8, (I8, 0): I8, (U8, -128): I8}


def staged_dtype(act: DType, off: int) -> DType:
    """The element type of the activations the dot product reads (see the module docstring)."""
    dom = STAGED.get((act, int(off)))
    if dom is None:
        raise ShapeError(f"act_offset {off} does not move {act} activations into uint8 or int8 "
                         f"(expected 0 or 128 for int8, 0 or -128 for uint8)")
    return dom


def fixed_point(real: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mult, shift) int32 arrays with ``mult * 2^-shift == real`` to 31 significant bits.

    ``mult`` is in [2^30, 2^31); ``shift`` is at most 62 so the int64 product of an int32
    accumulator and ``mult`` cannot overflow. A zero multiplier gives (0, 1).
    """
    real = np.asarray(real, np.float64).reshape(-1)
    if np.any(real < 0) or not np.all(np.isfinite(real)):
        raise ShapeError(f"requantization multipliers must be finite and >= 0; got {real}")
    mant, exp = np.frexp(real)                       # real = mant * 2^exp, mant in [0.5, 1)
    mult = np.round(mant * (1 << 31)).astype(np.int64)
    shift = (31 - exp).astype(np.int64)
    carry = mult == (1 << 31)                        # rounding reached 2^31: renormalize
    mult[carry] >>= 1
    shift[carry] -= 1
    too_small = shift > 62
    mult[too_small] = np.round(real[too_small] * 2.0 ** 62).astype(np.int64)
    shift[too_small] = 62
    if np.any(shift < 1):
        raise ShapeError(f"requantization multiplier {real.max()} is too large (>= 2^30)")
    zero = real == 0
    mult[zero], shift[zero] = 0, 1
    return mult.astype(np.int32), shift.astype(np.int32)


def requant(acc, bias, mult, shift, attrs, out: DType):
    """The fixed-point epilogue (see the module docstring) of one int32 accumulator."""
    v = Cast(acc + bias, I64) * Cast(mult, I64)
    zp, lo, hi = int(attrs["y_zp"]), int(attrs["lo"]), int(attrs["hi"])
    min_shift = int(attrs.get("min_shift", 0))
    if min_shift >= HIGH_WORD_SHIFT:
        return requant_high_word(v, shift, zp, lo, hi, out)
    s, one = Cast(shift, I64), Const(1, I64)
    # (v + 2^(s-1)) >> s, spelled ((v >> (s-1)) + 1) >> 1: the same integer for every v and
    # s >= 1 (write v = q 2^(s-1) + r, 0 <= r < 2^(s-1): both are floor((q+1)/2)), without
    # shifting a constant by a per-channel amount -- which gcc 12 does not vectorize, and
    # so left every requantizing epilogue scalar.
    v = Bin("shr", Bin("shr", v, s - one, I64) + one, one, I64)
    if min_shift >= NARROW_SHIFT:
        # |int32 * mult| < 2^62, so shifted by 31 or more the value fits int32: clamp it there
        # (one vector op per step instead of two int64 halves), to the bounds less the zero
        # point so that adding it cannot overflow -- the same integer as clamping v + zp
        v32 = Cast(v, I32)
        v32 = Bin("min", Bin("max", v32, Const(lo - zp, I32), I32), Const(hi - zp, I32), I32)
        return Cast(v32 + Const(zp, I32), out)
    v = v + Const(zp, I64)
    return Cast(Bin("min", Bin("max", v, Const(lo, I64), I64), Const(hi, I64), I64), out)


def requant_high_word(v, shift, zp: int, lo: int, hi: int, out: DType):
    """The same integer as the rounding shift by ``shift`` >= 33, from the product's high
    32 bits: write v = h 2^32 + l (0 <= l < 2^32) and s' = s - 32; since 2^(s-1) is a
    multiple of 2^32, floor((v + 2^(s-1)) / 2^s) = floor((h + 2^(s'-1)) / 2^s'). Everything
    after the multiply is int32: |h| <= 2^30, and with s <= 62 (``fixed_point``) 2^(s'-1) <=
    2^29, so neither the rounding term nor the zero point (|zp| < 256) can overflow, and the
    clamp comes last -- a saturating narrow where the bounds are the output type's. x86
    takes the high halves of its 32x32->64 vector products with one shuffle
    (``kiln/codegen/x86_epilogue.py``); gcc for Cortex-M reads ``smull``'s high register and
    shifts in 32 bits."""
    one = Const(1, I32)
    h = Cast(Bin("shr", v, Const(32, I64), I64), I32)
    s = shift - Const(32, I32)
    v32 = Bin("shr", Bin("shr", h, s - one, I32) + one, one, I32)
    v32 = v32 + Const(zp, I32) if zp else v32  # (as the simplifier would leave it)
    return Cast(Bin("min", Bin("max", v32, Const(lo, I32), I32), Const(hi, I32), I32), out)


# Shifts of at least this many bits (every real multiplier below 1) leave an int32 result
NARROW_SHIFT = 31
# ... and from this many (every real multiplier below 1/4) the rounding needs only the
# product's high 32 bits (``requant_high_word``)
HIGH_WORD_SHIFT = 33


def _check_epilogue(ins, n: int, what: str):
    for t, name in zip(ins, ("bias", "mult", "shift")):
        if t.dtype is not I32 or tuple(t.shape) != (n,):
            raise ShapeError(f"{what} {name} must be int32 of shape ({n},); got {t}")


def _check_attrs(attrs, what: str) -> DType:
    out = DType(attrs["dtype"])
    if out not in QTYPES:
        raise ShapeError(f"{what} produces int8 or uint8; got {out}")
    lo, hi = np.iinfo(out.np).min, np.iinfo(out.np).max
    if not lo <= int(attrs["lo"]) <= int(attrs["hi"]) <= hi:
        raise ShapeError(f"{what} clamp [{attrs['lo']}, {attrs['hi']}] is outside the {out} range")
    if int(attrs.get("act_offset", 0)) not in (-128, 0, 128):
        raise ShapeError(f"{what} act_offset must be -128, 0 or 128; got {attrs['act_offset']}")
    return out


def to_domain(v, off: int, dom: DType):
    """An activation moved to the staged domain (int8 + 128 as uint8, uint8 - 128 as int8), or as is."""
    if not off:
        return v
    return Cast(Cast(v, I32) + Const(off, I32), dom)


def logical_weights(w_shape, attrs, what: str) -> tuple:
    """The weights' shape as the op defines them -- (OC, KH, KW*C/group) or (N, K) -- also
    when a target keeps them in VNNI panels (attribute ``vnni``: (O/16, K/4, 16, 4), see
    ``kiln/passes/vnni_pack.py``; ``vnni_weights`` holds the defined shape)."""
    if attrs.get("taps_major"):  # a depthwise convolution's (KH, KW, OC), see conv_weight_reader
        if len(w_shape) != 3:
            raise ShapeError(f"{what} weights taps-major must be (KH, KW, OC); got {tuple(w_shape)}")
        kh, kw, oc = w_shape
        return (oc, kh, kw)
    lanes = attrs.get("vnni")
    if not lanes:
        return tuple(w_shape)
    logical = tuple(int(d) for d in attrs["vnni_weights"])
    o = logical[0]
    if len(w_shape) != 4 or w_shape[0] * lanes != o or w_shape[2] != lanes or w_shape[3] != 4:
        raise ShapeError(f"{what} weights in VNNI panels must be ({o // lanes}, K/4, {lanes}, 4) for {o} "
                         f"outputs; got {tuple(w_shape)}")
    return logical


def weight_reader(w, attrs):
    """``(o, k) -> w[o, k]`` over the flat reduction index ``k``, whatever the weights'
    storage: (O, K) rows, or VNNI panels."""
    lanes = attrs.get("vnni")
    if lanes:
        return lambda o, k: w[o // lanes, k // 4, o % lanes, k % 4]
    return lambda o, k: w[o, k]


def conv_weight_reader(w, attrs):
    """``(oc, r, j) -> w[oc, r, j]`` of a convolution's (OC, KH, KW*C/group) weights, also
    when a depthwise convolution keeps them taps-major (attribute ``taps_major``: stored
    (KH, KW, OC), so the weights of neighbouring channels at one tap are neighbours, as the
    channels of a channels-last pixel are: ``kiln/passes/integer_layout.py``)."""
    if attrs.get("taps_major"):
        return lambda oc, r, j: w[r, j, oc]
    return lambda oc, r, j: w[oc, r, j]


# -- qconv -------------------------------------------------------------------------------------------

def _qconv_infer(ins, attrs):
    x, w = static_shape(ins[0], "qconv input"), static_shape(ins[1], "qconv weights")
    w = logical_weights(w, attrs, "qconv")
    out = _check_attrs(attrs, "qconv")
    if ins[0].dtype not in QTYPES or ins[1].dtype is not DType.int8:
        raise ShapeError(f"qconv takes int8/uint8 activations and int8 weights; got {ins[0].dtype}, {ins[1].dtype}")
    staged_dtype(ins[0].dtype, attrs.get("act_offset", 0))
    _check_epilogue(ins[2:5], w[0], "qconv")
    return [TensorType(conv_dot_out_shape(x, w, attrs, "qconv"), out)]


def nchw_shape(shape, channels_last) -> tuple:
    """An activation shape as (N, C, H, W), whichever way it is stored (channels last:
    (N, H, W, C), see ``kiln/passes/integer_layout.py``)."""
    if channels_last and len(shape) == 4:
        n, h, w, c = shape
        return (n, c, h, w)
    return tuple(shape)


def input_channels_last(attrs) -> bool:
    """Whether a ``qconv``'s input is NHWC: with ``channels_last`` unless ``nchw_input`` (the
    RGB stem reads the NCHW image and writes NHWC)."""
    return bool(attrs.get("channels_last")) and not attrs.get("nchw_input")


def _output_stage(o, body, attrs):
    """The ``qdot`` stage computing ``body(n, oc, oh, ow)`` into ``o``: NCHW, or with
    ``channels_last`` NHWC -- output channels innermost, so the requantizing epilogue writes
    each row of the register tile as one contiguous run of bytes."""
    if not attrs.get("channels_last"):
        return compute(o.name, o.shape, body, o.dtype, tag="qdot", hints=_dot_hints(attrs, (3, 1)))
    return compute(o.name, o.shape, lambda n, oh, ow, oc: body(n, oc, oh, ow), o.dtype, tag="qdot",
                   hints=_dot_hints(attrs, (2, 3)))


def conv_dot_out_shape(x, w, attrs, what: str) -> tuple:
    """(N, OC, OH, OW) of an integer convolution over x (N, C, H, W) with packed weights
    (OC, KH, KW*C/group) -- (N, OH, OW, OC) over (N, H, W, C) with attribute
    ``channels_last`` -- and a clear error for anything else."""
    if len(x) != 4 or len(w) != 3:
        raise ShapeError(f"{what} takes 2-D input (N, C, H, W) and packed weights (OC, KH, KW*C/group); "
                         f"got {x} and {w}")
    if attrs.get("channels_last"):  # (N, OH, OW, OC) out, from (N, H, W, C) unless nchw_input
        plain = {k: v for k, v in attrs.items() if k not in ("channels_last", "nchw_input")}
        n, c, oh, ow = conv_dot_out_shape(nchw_shape(x, input_channels_last(attrs)), w, plain, what)
        return (n, oh, ow, c)
    group, (kh, kw) = int(attrs.get("group", 1)), attrs["kernel"]
    if group < 1 or w[0] % group or x[1] % group or w[1] != kh or w[2] != kw * (x[1] // group):
        raise ShapeError(f"{what} weights {w} do not match input {x} with kernel {(kh, kw)} and group {group}")
    strides, pb, pe, dil = window_attrs(attrs, 2, what)
    sp = tuple(window_out_size(n, k, s, d, b, e) for n, k, s, d, b, e in zip(x[2:], (kh, kw), strides, dil, pb, pe))
    if min(sp) < 1:
        raise ShapeError(f"{what} kernel {(kh, kw)} does not fit input {x[2:]}")
    return (x[0], w[0]) + sp


def _qconv_compute(ins, outs, attrs):
    x, w, bias, mult, shift = ins
    o = outs[0]
    off = int(attrs.get("act_offset", 0))
    pad = Const(int(attrs["x_zp"]) + off, staged_dtype(x.dtype, off))
    return conv_dot_stages(x, w, o, attrs, pad, lambda acc, oc: requant(acc, bias[oc], mult[oc], shift[oc], attrs,
                                                                       o.dtype))


def conv_dot_stages(x, w, o, attrs, pad_value, epilogue):
    """Stage ``__xu``: the input, padded with ``pad_value`` (its zero point in the staged
    domain), channels last and in the staged domain (uint8, or int8 for signed dot products;
    see :func:`staged_dtype`), as (N, Hp, Wp*C): a window row of a group is then contiguous, and
    with dilation 1 and one group the whole (kw, c) window row is one run of KW*C bytes --
    the reduction the vectorizer sees. A VNNI kernel whose rows are not whole 4-byte groups
    reads past each row's end (``vnni_window_row``): padding columns after the row keep
    those reads inside it. A 1x1 convolution over a channels-last input that needs none of
    this reads the input in place (no ``__xu`` stage). Then ``o = epilogue(acc, oc)`` per output."""
    last = input_channels_last(attrs)
    n_, c_, h_, w_ = nchw_shape(x.shape, last)
    (kh, kw), group = attrs["kernel"], int(attrs.get("group", 1))
    strides, pb, pe, dil = window_attrs(attrs, 2, "qconv")
    off = int(attrs.get("act_offset", 0))
    dom = staged_dtype(x.dtype, off)
    hp, wp = h_ + pb[0] + pe[0], w_ + pb[1] + pe[1]
    row = vnni_window_row(w, attrs, kh, kw * c_)
    extra = -(-(row - kw * c_) // c_)  # pixels of padding after each row for over-reading windows

    def staged(n, h, wc):
        ww, c = wc // c_, wc % c_
        conds = []
        for v, b, e, m in ((h, pb[0], pe[0], h_), (ww, pb[1], pe[1] + extra, w_)):
            conds += ([v.ge(b)] if b else []) + ([v.lt(b + m)] if e else [])
        hh, wi = offset(h, -pb[0]), offset(ww, -pb[1])
        val = to_domain(x[n, hh, wi, c] if last else x[n, c, hh, wi], off, dom)
        return val if not conds else Select(conj(conds), val, pad_value)

    if not stages_input(attrs, extra):
        # an unpadded channels-last input already is the staged tensor: read it in place (a
        # 1x1 conv's staging copied ResNet-18's 56x56x64 input and back, 28 us on one core)
        src, stages = _PixelRows(x, c_, off, dom), []
    else:
        # an NCHW input is transposed while staged (``channels_last`` hint); an NHWC one is
        # copied a pixel's channels at a time (``runs``)
        xu = compute(f"{o.name}__xu", (n_, hp, (wp + extra) * c_), staged, dom, tag="pad", inline=False,
                     hints={"runs": c_} if last else {"channels_last": c_})
        src, stages = xu.tensor, [xu]
    icg, ocg = c_ // group, nchw_shape(o.shape, attrs.get("channels_last"))[1] // group

    if IM2COL and attrs.get("im2col") and kh > 1 and dil[1] == 1 and group == 1:
        return [*stages, *_windows_in_one_run(src, w, o, (kh, kw * c_), c_, strides, dil, epilogue, attrs)]

    def body(n, oc, oh, ow):
        base_h = oh * strides[0] if strides[0] != 1 else oh
        base_w = (ow * strides[1] if strides[1] != 1 else ow) * c_
        first = (oc // ocg) * icg if group > 1 else 0
        if attrs.get("vnni"):  # window rows of whole 4-byte groups read in place (vnni_pack)
            weight, run = weight_reader(w, attrs), row

            def term(r, j):
                hh = base_h + (r * dil[0] if dil[0] != 1 else r)
                return Cast(src[n, hh, base_w + j], I32) * Cast(weight(oc, r * run + j), I32)
            acc = rsum(term, (kh, run)) if kh > 1 else rsum(lambda j: term(0, j), run)
        elif dil[1] == 1 and group == 1:
            def term(r, j):  # (kw, c) flattened: one contiguous run
                hh = base_h + (r * dil[0] if dil[0] != 1 else r)
                return Cast(src[n, hh, base_w + j], I32) * Cast(w[oc, r, j], I32)
            acc = rsum(term, (kh, kw * icg))
        else:
            weight = conv_weight_reader(w, attrs)

            def term(r, q, c):
                hh = base_h + (r * dil[0] if dil[0] != 1 else r)
                return (Cast(src[n, hh, base_w + q * (dil[1] * c_) + first + c], I32)
                        * Cast(weight(oc, r, q * icg + c), I32))
            acc = rsum(term, (kh, kw, icg))
        return epilogue(acc, oc)

    return [*stages, _output_stage(o, body, attrs)]


def stages_input(attrs, extra: int = 0) -> bool:
    """Whether ``conv_dot_stages`` copies the input into a ``__xu`` stage: all but a
    convolution over a channels-last input without padding, offset or row over-read (a 1x1
    one, or one whose padding its input's storage holds: ``kiln/passes/padded_storage.py``).
    An offset applied where it is read (attribute ``offset_at_read``) needs no copy."""
    _, pb, pe, _ = window_attrs(attrs, 2, "qconv")
    return not (input_channels_last(attrs)
                and not (any(pb) or any(pe) or extra or staged_offset(attrs)))


def staged_offset(attrs) -> int:
    """The ``act_offset`` a staging copy has to apply: none when the op applies it at each
    read (``offset_at_read``: a target whose dot product converts in registers, Helium's
    one ``VEOR`` per sixteen bytes; ``kiln/passes/signed_activations.py``)."""
    return 0 if attrs.get("offset_at_read") else int(attrs.get("act_offset", 0))


class _PixelRows:
    """An NHWC tensor read as (N, H, W*C), the staged tensor's shape: ``[n, h, q]`` is
    pixel ``q // C``, channel ``q % C`` (the flat index is the same), moved to the staged
    domain as it is read (``offset_at_read``; as is when the offset is 0)."""

    def __init__(self, x, channels: int, off: int = 0, dom: DType | None = None):
        self.x, self.channels, self.off, self.dom = x, channels, off, dom

    def __getitem__(self, idx):
        n, h, q = idx
        return to_domain(self.x[n, h, q // self.channels, q % self.channels], self.off, self.dom)


def vnni_window_row(w, attrs, kh: int, run: int) -> int:
    """Bytes of one window row the VNNI kernel reads in place: the panels' reduction length
    over KH -- KW*C, or KW*C rounded up to whole 4-byte groups (the RGB stem: 21 -> 24),
    the extra bytes belonging to the next pixel (or to padding after the row) and meeting
    zero weights. ``run`` (KW*C) when the kernel does not read VNNI panels."""
    if not attrs.get("vnni") or int(attrs.get("group", 1)) != 1:
        return run
    return int(w.shape[1]) * 4 // kh


def _dot_hints(attrs, axes) -> dict:
    """The ``qdot`` stage's schedule hints: (rows, columns) axes, the VNNI panel width, and
    ``channel_macs`` for a taps-major depthwise convolution (its channels multiply-accumulate
    side by side: ``kiln/passes/dot_schedule.py``)."""
    return {"dot": axes, **({"vnni": int(attrs["vnni"])} if attrs.get("vnni") else {}),
            **({"channel_macs": 1} if attrs.get("taps_major") else {})}


RUN_ALIGN = 32  # window rows padded to a multiple of this many bytes (a 256-bit vector)


def window_row(run: int, attrs) -> int:
    """Bytes one im2col window row takes: ``run`` padded to ``RUN_ALIGN`` for gcc's vector
    dot product, or to whole 4-byte groups for the VNNI tile, which has no scalar remainder
    to avoid (the 7x7 stem's 21-byte rows: 24 bytes, not 32 -- a third fewer multiply-adds)."""
    align = 4 if attrs.get("vnni") else RUN_ALIGN
    return -(-run // align) * align


def _windows_in_one_run(src, w, o, window, channels, strides, dil, epilogue, attrs):
    """im2col: stage ``__win`` (N, OH, OW, KH*R) copies each output pixel's KH window rows
    (KW*C bytes each) next to each other, so the whole window is one contiguous run and the
    dot product is one loop. (A loop per window row makes gcc close its vector accumulators
    with horizontal sums after every row.)

    A row of KW*C bytes that is not a multiple of ``RUN_ALIGN`` (the 7x7 stem: 21 bytes) is
    padded with zeros to R bytes, and the weights likewise in a small stage ``__wpad``
    (OC, KH*R) rebuilt per call: a 147-byte window left gcc a 19-byte scalar remainder per
    accumulator that cost more than the 224-byte padded dot product."""
    kh, run = window
    n_, _, oh_, ow_ = nchw_shape(o.shape, attrs.get("channels_last"))
    row = window_row(run, attrs)
    padded = row != run

    def copy(n, oh, ow, k):
        r, j = k // row, k % row
        base_h = oh * strides[0] if strides[0] != 1 else oh
        base_w = (ow * strides[1] if strides[1] != 1 else ow) * channels
        val = src[n, base_h + (r * dil[0] if dil[0] != 1 else r), base_w + j]
        return Select(j.lt(run), val, Const(0, src.dtype)) if padded else val

    win = compute(f"{o.name}__win", (n_, oh_, ow_, kh * row), copy, src.dtype, tag="pad", hints={"runs": row},
                  inline=False)
    stages = [win]
    if not padded:  # (VNNI kernels never stage im2col windows: vnni_pack reads rows in place)
        weight = lambda oc, k: w[oc, k // run, k % run]  # noqa: E731
    else:
        def wcopy(oc, k):
            r, j = k // row, k % row
            return Select(j.lt(run), w[oc, r, j], Const(0, w.dtype))
        wpad = compute(f"{o.name}__wpad", (w.shape[0], kh * row), wcopy, w.dtype, tag="pad",
                       hints={"runs": row}, inline=False)
        stages.append(wpad)
        weight = lambda oc, k: wpad.tensor[oc, k]  # noqa: E731

    def body(n, oc, oh, ow):
        acc = rsum(lambda k: Cast(win.tensor[n, oh, ow, k], I32) * Cast(weight(oc, k), I32), kh * row)
        return epilogue(acc, oc)

    return stages + [_output_stage(o, body, attrs)]


register("qconv", FusionKind.OUT_FUSABLE, _qconv_infer, _qconv_compute)


# -- qmatmul -----------------------------------------------------------------------------------------

def _qmatmul_infer(ins, attrs):
    a, w = static_shape(ins[0], "qmatmul A"), static_shape(ins[1], "qmatmul weights")
    w = logical_weights(w, attrs, "qmatmul")
    out = _check_attrs(attrs, "qmatmul")
    if ins[0].dtype not in QTYPES or ins[1].dtype is not DType.int8:
        raise ShapeError(f"qmatmul takes int8/uint8 A and int8 weights; got {ins[0].dtype}, {ins[1].dtype}")
    staged_dtype(ins[0].dtype, attrs.get("act_offset", 0))
    if len(a) < 2 or len(w) != 2 or a[-1] != w[1]:
        raise ShapeError(f"qmatmul takes A (..., M, K) and packed weights (N, K); got {a} and {w}")
    _check_epilogue(ins[2:5], w[0], "qmatmul")
    return [TensorType(a[:-1] + (w[0],), out)]


def _qmatmul_compute(ins, outs, attrs):
    a, w, bias, mult, shift = ins
    o = outs[0]
    return matmul_dot_stages(a, w, o, int(attrs.get("act_offset", 0)),
                             lambda acc, n: requant(acc, bias[n], mult[n], shift[n], attrs, o.dtype), attrs)


def matmul_dot_stages(a, w, o, off: int, epilogue, attrs):
    """``o[.., m, n] = epilogue(sum_k au[.., m, k] * w[n, k], n)``; ``au``: ``a`` moved to
    the staged domain by ``off`` in a staging buffer (stage ``__au``) when ``off`` is not 0,
    or as it is read (``offset_at_read``)."""
    k = a.shape[-1]
    stages = []
    dom = staged_dtype(a.dtype, off)
    if off and not attrs.get("offset_at_read"):
        au = compute(f"{o.name}__au", a.shape, lambda *i: to_domain(a[i], off, dom), dom, tag="pad", inline=False)
        stages.append(au)
        a, off = au.tensor, 0

    weight = weight_reader(w, attrs)

    def body(*i):
        acc = rsum(lambda r: Cast(to_domain(a[i[:-1] + (r,)], off, dom), I32) * Cast(weight(i[-1], r), I32), k)
        return epilogue(acc, i[-1])

    return stages + [compute(o.name, o.shape, body, o.dtype, tag="qdot", hints=_dot_hints(attrs, (o.ndim - 2, o.ndim - 1)))]


register("qmatmul", FusionKind.OUT_FUSABLE, _qmatmul_infer, _qmatmul_compute)


# -- qadd ----------------------------------------------------------------------------------------------

def _qadd_infer(ins, attrs):
    out = _check_attrs(attrs, "qadd")
    a, b = static_shape(ins[0], "qadd A"), static_shape(ins[1], "qadd B")
    if ins[0].dtype not in QTYPES or ins[1].dtype not in QTYPES:
        raise ShapeError(f"qadd takes int8/uint8 operands; got {ins[0].dtype}, {ins[1].dtype}")
    return [TensorType(broadcast_shapes(a, b), out)]


def _qadd_compute(ins, outs, attrs):
    """y = clamp(((a - a_zp) * ma + (b - b_zp) * mb + 2^(shift-1)) >> shift + y_zp), in int32
    when every intermediate provably fits it (the multipliers the ``quantize`` pass makes
    do, for 8-bit operands), else in int64: the same integers either way."""
    a, b = ins
    o = outs[0]
    shift = int(attrs["shift"])
    terms = [(a, int(attrs["a_zp"]), int(attrs["ma"])), (b, int(attrs["b_zp"]), int(attrs["mb"]))]
    bound = sum(_centered_bound(t.dtype, zp) * abs(m) for t, zp, m in terms) + (1 << (shift - 1))
    it = I32 if bound < 2**31 else I64

    def centered(t, zp, m, i):
        return (Cast(t[broadcast_index(t, i)], it) - Const(zp, it)) * Const(m, it)

    def body(*i):
        v = centered(*terms[0], i) + centered(*terms[1], i)
        v = Bin("shr", v + Const(1 << (shift - 1), it), Const(shift, it), it) + Const(int(attrs["y_zp"]), it)
        return Cast(Bin("min", Bin("max", v, Const(int(attrs["lo"]), it), it), Const(int(attrs["hi"]), it), it),
                    o.dtype)

    return [compute(o.name, o.shape, body, o.dtype)]


def _centered_bound(dtype: DType, zp: int) -> int:
    """The largest |x - zp| for x of an integer type."""
    info = np.iinfo(dtype.np)
    return max(abs(int(info.min) - zp), abs(int(info.max) - zp))


register("qadd", FusionKind.BROADCAST, _qadd_infer, _qadd_compute)

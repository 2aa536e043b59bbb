"""The target facts the default schedule rules and layout passes read (vector width,
registers, threads, which kernels a CPU has instructions for). Each target in
``kiln/targets/`` fills one in."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Capabilities:
    """The target facts the default rules need (targets/*.py provide them)."""

    vector_bytes: int = 32
    vector_registers: int = 16
    threads: int = 2
    nchwc: bool = True  # convolutions in blocked NCHW{lanes}c layout (CPUs with SIMD)
    pack_matmul: bool = True  # matmul B in column panels of the register tile's width (CPUs)
    # (rows, columns) of outputs computed together by an integer dot-product kernel; None:
    # one dot product per output (see kiln/passes/dot_schedule.py)
    dot_tile: tuple[int, int] | None = None
    # the tile of a dot-product stage whose row extent is no multiple of dot_tile's rows
    # (Cortex-M4/M7: 2 x 2 where pixels pair up, else 1 x 4); None: dot_tile, rows shrunk
    dot_tile_unpaired: tuple[int, int] | None = None
    # the byte widths of the dot-product helpers' steps, widest first (Helium 16, 8, 4; the
    # M4/M7's words: 4). Given, a convolution whose window rows are short may copy each
    # pixel's window into a local tile, one run for the dot product, where that saves steps
    # (``dot_schedule.gathers_window``, ``gather_window``)
    dot_steps: tuple[int, ...] = ()
    # the shortest innermost reduction run that takes the dot tile: shorter ones (a depthwise
    # convolution's taps) keep one dot product per output. 16 on CPUs, whose vector dot
    # products want a whole vector; 4 on Cortex-M, whose dot helpers step by one word (the
    # DS-CNN's 10x4 first convolution, four bytes per window row: 1.24M -> 0.75M
    # instructions on the M4, 0.63M -> 0.36M on the M55)
    min_dot_length: int = 16
    # integer convolutions copy each output pixel's window into one run (im2col) and integer
    # max pools read padded rows (kiln/passes/integer_ops.py ``stage_windows``): memory a CPU
    # with megabytes of cache does not notice and a microcontroller's arena does
    window_copies: bool = False
    # u8 x s8 dot products of 4 bytes per int32 lane (x86 AVX-512 VNNI ``vpdpbusd``): integer
    # kernels take their weights in VNNI panels (kiln/passes/vnni_pack.py)
    vnni: bool = False
    # Intel AMX int8 tiles (``tdpbusd``): dot-product kernels whose reduction is one run of
    # whole 64-byte steps use 32 x 32 tiles of them (kiln/codegen/x86_amx.py)
    amx: bool = False
    # 3x3 stride-1 float convolutions as Winograd transforms around batched GEMMs
    # (kiln/passes/winograd.py)
    winograd: bool = False
    # concats whose parts their producers write into the result's storage, where each part's
    # slot is one run of bytes (kiln/passes/concat_in_place.py; targets planned by plan_memory)
    concat_in_place: bool = False
    # rows a row-wise kernel (softmax, layer norm) runs side by side, statement by
    # statement (``Schedule.interleave_statements``): out-of-order CPUs overlap one row's
    # reduction chains with the next rows' (0 or 1: one row at a time)
    interleave_rows: int = 0
    # packed matmuls whose N allows it take column panels three vectors wide (8 x 48 tiles
    # of floats on AVX-512: 24 of the 32 registers accumulate; see ``panel_widths``)
    wide_panels: bool = False
    # a lone depthwise or 1x1 convolution between NCHW tensors runs in NCHW instead of
    # converting into NCHWc and straight back (kiln/passes/isolated_convs.py; measured on
    # x86 only: on NEON gcc left the bounds-tested depthwise tile scalar)
    plain_isolated_convs: bool = False
    # a convolution reading its padding from its input's storage skips the window rows that
    # lie in a border of zeros (kiln/passes/skip_border_taps.py). Not on Cortex-M: the test
    # around each window row cost the depthwise convolutions' one-byte dot products more than
    # the skipped rows saved (VWW on the M4: 24.9M instructions without, 26.8M with)
    skip_border_taps: bool = True

    def tile(self, itemsize: int = 4) -> tuple[int, int]:
        """Register tile (rows, columns) of a GEMM-like reduction.

        Two vectors of columns per row; rows until accumulators fill three quarters of the
        vector registers, at most 8 (AVX2: 6 x 16, the classic 12-accumulator kernel;
        AVX-512: 8 x 32). Measured on GEMM 1024^3 with AVX-512: 8 x 32 ran at 213 GFLOP/s
        against 59 for 4 x 16 (numpy/OpenBLAS: 229 in the same run).
        """
        lanes = self.lanes(itemsize)
        rows = max(min(8, (3 * self.vector_registers // 4) // 2), 1)
        return rows, 2 * lanes

    def lanes(self, itemsize: int = 4) -> int:
        return max(self.vector_bytes // itemsize, 1)

    def panel_widths(self, itemsize: int = 4) -> tuple[int, ...]:
        """Column panel widths for packed matmul B, widest first: a matmul takes the first
        that divides its N (``passes/pack_matmul.py``). Three vectors where the target has
        them on: BERT's FFN GEMM [128, 768] x [768, 3072] ran 6.5 % faster with 8 x 48 tiles
        than with 8 x 32 (Sapphire Rapids, 2 threads); 4 x 64 was 10 % slower than 8 x 32."""
        two = self.tile(itemsize)[1]
        return (3 * self.lanes(itemsize), two) if self.wide_panels else (two,)


DEFAULT_CAPABILITIES = Capabilities()

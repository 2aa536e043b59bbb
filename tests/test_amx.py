"""Integer dot-product tiles on Intel AMX (kiln/codegen/x86_amx.py, kiln/passes/dot_schedule.py):
the schedule picks them only for one-run reductions of whole 64-byte steps, the printer only
where its tile loads read what the loop reads, the source compiles to ``tdpbusd``, and every
kernel computes the same integers with or without AMX -- on a machine with AMX the tiles
really run (the library's code holds ``tdpbusd``)."""
from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess

import numpy as np
import pytest

import kiln
import kiln.targets.host as host
from kiln.codegen.x86 import X86Renderer
from kiln.codegen.x86_amx import match_amx_tile
from kiln.ir.loop import For, Store, map_stmt, walk_stmts
from tests.test_vnni import _conv_model, _inputs, _matmul_model, _shift_weight
from tests.test_x86_border import _stats

# x86 flags that define __AMX_INT8__ whatever machine compiles the source (the asm check)
AMX_FLAGS = ["-march=sapphirerapids"]


def _caps(monkeypatch, amx: bool):
    """VNNI panels and the dot tile, with AMX on or off, whatever this machine has."""
    caps = dataclasses.replace(host.capabilities(), vnni=True, amx=amx, dot_tile=(8, 4))
    monkeypatch.setattr(host, "capabilities", lambda: caps)


@pytest.mark.parametrize("m, k, n, tiles", [
    (64, 128, 64, 1),     # 32 x 32 tiles: 2 x 2 C tiles
    (16, 64, 48, 1),      # 16 rows, 3 panels: 1 x 1 C tiles of one panel
])
def test_amx_matmul_equals_the_vnni_kernel(monkeypatch, m, k, n, tiles):
    model = _matmul_model(m, k, n)
    feeds = _inputs(model)
    _caps(monkeypatch, False)
    want = kiln.compile(model).run(feeds)
    _caps(monkeypatch, True)
    cm = kiln.compile(model)
    assert _stats(cm)["amx_tiles"] == tiles
    src = cm.source()
    assert "kiln_amx_ready()" in src and "_tile_dpbusd(" in src and "kiln_amx_begin();" in src
    got = cm.run(feeds)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name])


def test_windowed_convolutions_keep_the_vnni_tile(monkeypatch):
    """A 3x3 convolution's reduction is several window rows: no AMX tile; a 1x1 one's is its
    channels (64 of them: one step) over 16 output columns, which AMX takes; both equal the
    VNNI build."""
    for kernel, amx_tiles in ((3, 0), (1, 1)):
        model = _conv_model(64, 32, kernel, 16)
        feeds = _inputs(model)
        _caps(monkeypatch, False)
        want = kiln.compile(model).run(feeds)
        _caps(monkeypatch, True)
        cm = kiln.compile(model)
        stats = _stats(cm)
        assert stats["amx_tiles"] == amx_tiles
        assert stats["vnni_tiles"] >= (1 if amx_tiles == 0 else 0)
        got = cm.run(feeds)
        for name in want:
            np.testing.assert_array_equal(got[name], want[name])


def test_printer_refuses_a_weight_index_off_by_one_step(monkeypatch):
    _caps(monkeypatch, True)
    cm = kiln.compile(_matmul_model(32, 128, 32))
    func = next(k.func for k in cm.result.kernels if "_tile_dpbusd(" in X86Renderer().render_func(k.func, set()))
    r = X86Renderer()
    r.render_func(func, set())
    loop = next(s for s in walk_stmts(func.body) if isinstance(s, For) and match_amx_tile(s, r.buffers))
    tile = match_amx_tile(loop, r.buffers)
    assert (tile.row_tiles, tile.col_tiles, tile.x_stride, tile.w_stride) == (2, 2, 128, 64)

    def shift(s):
        if isinstance(s, Store) and s.buffer == tile.nest.acc:
            return Store(s.buffer, s.indices, _shift_weight(s.value, tile.nest.w, loop.var))
        return None

    assert match_amx_tile(map_stmt(loop, shift), r.buffers) is None


def test_source_compiles_to_tdpbusd(tmp_path, monkeypatch):
    _caps(monkeypatch, True)
    kiln.compile(_matmul_model(32, 256, 64)).export(tmp_path)
    asm = subprocess.run(["gcc", "-O3", *AMX_FLAGS, "-fopenmp", "-std=gnu11", "-fwrapv", "-S", "-o", "-",
                          str(tmp_path / "model.c")], capture_output=True, text=True, check=True).stdout
    assert len(re.findall(r"\btdpbusd\b", asm)) >= 4  # (gcc may unroll the steps)
    assert re.search(r"\bldtilecfg\b", asm)


@pytest.mark.skipif(not host.capabilities().amx, reason="needs a CPU with AMX (Sapphire Rapids or later)")
def test_amx_runs_on_this_machine():
    """With the machine's own capabilities the integer GEMM uses AMX tiles, and they run:
    the built library holds tdpbusd, and its outputs equal ONNX Runtime's integers."""
    from tests.util import ort_run

    model = _matmul_model(64, 256, 64)
    feeds = _inputs(model)
    cm = kiln.compile(model)
    objdump = shutil.which("objdump")
    assert objdump, "objdump (binutils) is needed to read the built library"
    code = subprocess.run([objdump, "-d", str(cm.build().library)], capture_output=True, text=True,
                          check=True).stdout
    assert "tdpbusd" in code
    want = ort_run(model, feeds)
    got = cm.run(feeds)
    for name, value in want.items():
        np.testing.assert_allclose(got[name], value, rtol=0, atol=1e-6)

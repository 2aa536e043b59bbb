"""WebGPU target on a GPU (issue 9): WGSL against cuBLAS and against Kiln's CUDA target, on
the same GPU in one run.

    python benchmarks/webgpu_bench.py                 # issue sizes: GEMM 4096^3, the model suite
    python benchmarks/webgpu_bench.py --quick         # small sizes: a smoke run (lavapipe works)
    python benchmarks/webgpu_bench.py --json out.json

Rows:
- ``gemm_fp32``: ``y = a @ b`` with both operands inputs (the tiled WGSL rule), against
  ``torch.matmul`` in fp32 with TF32 off (cuBLAS). Target: WGSL >= 0.5x cuBLAS's TFLOP/s.
  Once with the tile Kiln chooses, then with each tile shape forced
  (``kiln.passes.gpu_tiling.TILE_OVERRIDE``: 32 x 32 and 128 x 128 outputs per workgroup), so
  one run shows whether the choice is right on this GPU.
- one row per model of the suite (``examples.models``: a ResNet-style and a MobileNetV2-style
  CNN, a BERT encoder and a GPT decoder, fp32): WGSL against Kiln's ``cuda`` target. Target:
  WGSL within 2x of CUDA.

WGSL times are ``WebGPURunner.time``: runs encoded back to back in one command buffer, from
submit to the queue's end (no uploads or readbacks). CUDA and torch times are CUDA events
around back-to-back runs. A peer that cannot run here (no CUDA device, no nvcc, no torch)
gives its reason in the row, and the run goes on. The WebGPU adapter (its name and backend)
is printed first: on an NVIDIA machine it must be the NVIDIA Vulkan driver, not lavapipe.

On the H100 machine (docs/webgpu.md, "Timing on a GPU"): carry the wgpu, cffi, pycparser and
rendercanvas wheels and the Vulkan loader (libvulkan1), and set ``VK_DRIVER_FILES`` to
NVIDIA's ICD file.
"""
from __future__ import annotations

import argparse
import json
import sys
import traceback
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def adapter_info() -> str:
    from kiln.targets.webgpu import device

    info = device().adapter.info
    return f"{info.get('device', '?')} ({info.get('backend_type', '?')}, {info.get('adapter_type', '?')})"


def matmul_model(n: int):
    from onnx import TensorProto, helper

    def value(name):
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, [n, n])

    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["y"])], f"gemm_{n}",
                              [value("a"), value("b")], [value("y")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def wgsl_ms(model, feeds, repeats: int) -> tuple[float, dict]:
    import kiln

    runner = kiln.compile(model, target="webgpu").build()
    out = runner(feeds)
    return runner.time(feeds, repeats=repeats), out


def cuda_ms(model, feeds, repeats: int) -> tuple[float, dict]:
    import kiln

    runner = kiln.compile(model, target="cuda").build()
    return runner.time(feeds, repeats=repeats), runner(feeds)


def cublas_ms(n: int, repeats: int) -> float:
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError("no CUDA device for torch")
    torch.backends.cuda.matmul.allow_tf32 = False
    a, b = (torch.randn(n, n, device="cuda") for _ in range(2))
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        a @ b
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / repeats


def _try(fn):
    try:
        return fn(), None
    except Exception as e:  # noqa: BLE001  (a peer that cannot run says why in its row)
        return None, f"{type(e).__name__}: {' '.join(str(e).split())[:200]}"


def gemm_row(n: int, repeats: int, tile=None) -> dict:
    """The GEMM row; ``tile``: a ``gpu_tiling.TileConfig`` forced instead of Kiln's choice."""
    from kiln.passes import gpu_tiling

    rng = np.random.default_rng(0)
    feeds = {"a": rng.standard_normal((n, n), np.float32), "b": rng.standard_normal((n, n), np.float32)}
    flops = 2.0 * n ** 3
    gpu_tiling.TILE_OVERRIDE = tile
    try:
        result, err = _try(lambda: wgsl_ms(matmul_model(n), feeds, repeats))
    finally:
        gpu_tiling.TILE_OVERRIDE = None
    wgsl, out = result if result else (None, None)
    shape = tile or gpu_tiling.choose_tile(n, n, 1)
    name = f"gemm_fp32_{n}" + (f" (tile {shape.rows}x{shape.cols} forced)" if tile else
                               f" (tile {shape.rows}x{shape.cols} chosen)")
    row = {"workload": name, "wgsl_ms": wgsl, "wgsl_error": err}
    if wgsl is not None:
        ref = feeds["a"].astype(np.float64) @ feeds["b"]
        row["max_rel_err"] = float(np.abs(out["y"] - ref).max() / np.abs(ref).max())
        row["wgsl_tflops"] = flops / wgsl / 1e9
    row["cublas_ms"], row["cublas_error"] = _try(lambda: cublas_ms(n, repeats))
    if row["cublas_ms"] and wgsl:
        row["cublas_tflops"] = flops / row["cublas_ms"] / 1e9
        row["wgsl_vs_cublas"] = row["cublas_ms"] / wgsl  # target >= 0.5
    return row


def model_rows(quick: bool, repeats: int) -> list[dict]:
    from examples import models as M

    suite = {
        "resnet_style": lambda: M.resnet_style(depth=18, image=64 if quick else 224),
        "mobilenetv2_style": lambda: M.mobilenetv2_style(image=64 if quick else 224),
        "bert_encoder": lambda: (M.bert_encoder(layers=1, hidden=64, heads=4, seq=32) if quick else
                                 M.bert_encoder(layers=4, hidden=768, heads=12, seq=128, ffn=3072)),
        "gpt_decoder": lambda: (M.gpt_decoder(layers=1, hidden=64, heads=4, seq=32) if quick else
                                M.gpt_decoder(layers=4, hidden=768, heads=12, seq=128)),
    }
    rows = []
    for name, build in suite.items():
        row = {"workload": name}
        model, err = _try(build)
        if model is None:
            rows.append({**row, "wgsl_error": err})
            continue
        feeds = M.example_inputs(model, seed=0)
        wgsl, row["wgsl_error"] = _try(lambda: wgsl_ms(model, feeds, repeats))
        cuda, row["cuda_error"] = _try(lambda: cuda_ms(model, feeds, repeats))
        row["wgsl_ms"] = wgsl[0] if wgsl else None
        row["cuda_ms"] = cuda[0] if cuda else None
        if wgsl and cuda:
            row["wgsl_over_cuda"] = wgsl[0] / cuda[0]  # target <= 2
            row["max_abs_diff"] = max(float(np.abs(wgsl[1][k] - cuda[1][k]).max()) for k in wgsl[1])
        rows.append(row)
    return rows


def _fmt(v, spec=".3f") -> str:
    return "—" if v is None else format(v, spec)


def report(rows: list[dict]) -> str:
    lines = ["| workload | WGSL ms | peer | peer ms | ratio | target | note |", "|---|---:|---|---:|---:|---|---|"]
    for r in rows:
        if r["workload"].startswith("gemm"):
            peer, ms, ratio, target = "cuBLAS fp32", r.get("cublas_ms"), r.get("wgsl_vs_cublas"), "WGSL/cuBLAS speed >= 0.5"
        else:
            peer, ms, ratio, target = "Kiln cuda", r.get("cuda_ms"), r.get("wgsl_over_cuda"), "WGSL time <= 2x CUDA"
        note = "; ".join(e for e in (r.get("wgsl_error"), r.get("cublas_error"), r.get("cuda_error")) if e)
        lines.append(f"| {r['workload']} | {_fmt(r.get('wgsl_ms'))} | {peer} | {_fmt(ms)} | {_fmt(ratio, '.2f')} | "
                     f"{target} | {note[:160]} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--json", type=Path, help="write the rows as JSON")
    args = p.parse_args(argv)
    print(f"WebGPU adapter: {adapter_info()}", flush=True)
    rows = []
    try:
        from kiln.passes.gpu_tiling import LARGE, SMALL

        n = 512 if args.quick else 4096
        rows += [gemm_row(n, args.repeats)] + [gemm_row(n, args.repeats, tile) for tile in (SMALL, LARGE)]
        rows += model_rows(args.quick, args.repeats)
    except Exception:  # noqa: BLE001
        traceback.print_exc()
    print(report(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

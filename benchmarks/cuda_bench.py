"""CUDA target vs PyTorch on one GPU, side by side in one run (needs an NVIDIA GPU, CuPy, torch).

    python benchmarks/cuda_bench.py                 # everything at the issue's sizes
    python benchmarks/cuda_bench.py --quick         # small shapes, a smoke run
    python benchmarks/cuda_bench.py --only gemm_fp16,layernorm --json out.json

Rows: fp16 and fp32 (TF32 off) GEMM 4096^3 against ``torch.matmul`` (cuBLAS); fused
LayerNorm and softmax against the measured device-to-device copy bandwidth; a
BERT-base-like encoder (batch 32, seq 128, fp16) and a ResNet-50-like CNN (batch 32,
fp16) against torch eager and ``torch.compile(mode="max-autotune")``. Every time is the
mean of CUDA-event-timed runs after warm-up; Kiln's output is checked against torch's on
the same inputs (max relative error column). A row that fails prints its error and the
run goes on. Nothing here is a claim until it has been run: write results to
docs/benchmarks.md with the date and the device.
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
import traceback
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def cuda_time_ms(fn, repeats: int, warmup: int = 5) -> float:
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / repeats


def to_fp16(model):
    """fp32 ONNX -> fp16: float initializers, inputs, outputs and Casts to float."""
    import onnx
    from onnx import TensorProto, numpy_helper

    m = onnx.ModelProto()
    m.CopyFrom(model)
    for i, t in enumerate(m.graph.initializer):
        if t.data_type == TensorProto.FLOAT:
            m.graph.initializer[i].CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float16), t.name))
    for v in list(m.graph.input) + list(m.graph.output):
        if v.type.tensor_type.elem_type == TensorProto.FLOAT:
            v.type.tensor_type.elem_type = TensorProto.FLOAT16
    for n in m.graph.node:
        for a in n.attribute:
            if n.op_type == "Cast" and a.name == "to" and a.i == TensorProto.FLOAT:
                a.i = TensorProto.FLOAT16
    del m.graph.value_info[:]
    return m


class Bench:
    def __init__(self, repeats: int):
        import torch

        self.torch = torch
        self.repeats = repeats
        self.rows: list[dict] = []

    def kiln_model(self, onnx_model, feeds, example_inputs=None):
        import kiln

        compiled = kiln.compile(onnx_model, target="cuda", example_inputs=example_inputs)
        runner = compiled.build()
        import cupy as cp

        dev = {k: cp.asarray(v) for k, v in feeds.items()}
        return runner, dev

    def row(self, name, work, unit, kiln_ms, peers: dict, err=None, note=""):
        r = {"row": name, "kiln_ms": kiln_ms, "unit": unit, "kiln_rate": work / kiln_ms / 1e9 if work else None,
             "peers_ms": peers, "max_rel_err": err, "note": note}
        self.rows.append(r)
        peer_txt = "  ".join(f"{k} {v:.3f} ms ({v / kiln_ms:.2f}x)" for k, v in peers.items())
        rate = f"{r['kiln_rate']:.1f} {unit}" if work else ""
        print(f"{name:<28} kiln {kiln_ms:.3f} ms {rate}  {peer_txt}  err {err}  {note}", flush=True)

    def gemm(self, n: int, fp16: bool):
        import onnx
        from onnx import TensorProto, helper, numpy_helper

        torch = self.torch
        torch.backends.cuda.matmul.allow_tf32 = False
        dt, np_dt = (TensorProto.FLOAT16, np.float16) if fp16 else (TensorProto.FLOAT, np.float32)
        rng = np.random.default_rng(0)
        w = rng.standard_normal((n, n)).astype(np_dt) / np.sqrt(n)
        x = rng.standard_normal((n, n)).astype(np_dt)
        g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "gemm",
                              [helper.make_tensor_value_info("x", dt, [n, n])],
                              [helper.make_tensor_value_info("y", dt, [n, n])], [numpy_helper.from_array(w, "w")])
        model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
        onnx.checker.check_model(model)
        runner, dev = self.kiln_model(model, {"x": x})
        kiln_ms = runner.time({"x": dev["x"]}, repeats=self.repeats)
        tx, tw = torch.from_numpy(x).cuda(), torch.from_numpy(w).cuda()
        torch_ms = cuda_time_ms(lambda: tx @ tw, self.repeats)
        got = torch.from_dlpack(runner.run_device({"x": dev["x"]})["y"]).float()
        want = (tx @ tw).float()
        err = float((got - want).abs().max() / want.abs().max())
        self.row(f"gemm_{'fp16' if fp16 else 'fp32'}_{n}", 2 * n ** 3 / 1e3, "TFLOP/s", kiln_ms,
                 {"cublas": torch_ms}, err)

    def bandwidth(self, op: str, rows: int, cols: int):
        from onnx import TensorProto, helper, numpy_helper

        torch = self.torch
        x = np.random.default_rng(0).standard_normal((rows, cols)).astype(np.float32)
        inits = []
        if op == "layernorm":
            inits = [numpy_helper.from_array(np.ones(cols, np.float32), "g"),
                     numpy_helper.from_array(np.zeros(cols, np.float32), "b")]
            node = helper.make_node("LayerNormalization", ["x", "g", "b"], ["y"], axis=-1, epsilon=1e-5)
        else:
            node = helper.make_node("Softmax", ["x"], ["y"], axis=-1)
        g = helper.make_graph([node], op, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [rows, cols])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [rows, cols])], inits)
        model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
        runner, dev = self.kiln_model(model, {"x": x})
        kiln_ms = runner.time({"x": dev["x"]}, repeats=self.repeats)
        tx = torch.from_numpy(x).cuda()
        copy_ms = cuda_time_ms(lambda: tx.clone(), self.repeats)
        fn = (lambda: torch.nn.functional.layer_norm(tx, (cols,), eps=1e-5)) if op == "layernorm" \
            else (lambda: torch.softmax(tx, -1))
        torch_ms = cuda_time_ms(fn, self.repeats)
        got = torch.from_dlpack(runner.run_device({"x": dev["x"]})["y"])
        want = fn()
        err = float((got - want).abs().max() / want.abs().max())
        bytes_moved = 2 * x.nbytes
        copy_bw = bytes_moved / copy_ms / 1e9
        self.row(f"{op}_{rows}x{cols}", bytes_moved / 1e3, "TB/s", kiln_ms, {"torch": torch_ms, "copy": copy_ms},
                 err, note=f"copy {copy_bw:.2f} TB/s; kiln at {copy_ms / kiln_ms:.0%} of copy")

    def model(self, name: str, onnx_model, feeds, torch_module, torch_inputs, example_inputs=None):
        torch = self.torch
        runner, dev = self.kiln_model(onnx_model, feeds, example_inputs)
        kiln_ms = runner.time(dev, repeats=self.repeats)
        mod = torch_module.cuda().half().eval()
        ins = [t.cuda().half() if t.is_floating_point() else t.cuda() for t in torch_inputs]
        with torch.no_grad():
            eager_ms = cuda_time_ms(lambda: mod(*ins), self.repeats)
            compiled = torch.compile(mod, mode="max-autotune")
            compiled(*ins)
            compile_ms = cuda_time_ms(lambda: compiled(*ins), self.repeats)
        self.row(name, 0, "", kiln_ms, {"eager": eager_ms, "max-autotune": compile_ms},
                 note="torch modules share the architecture, not the weights: time only")


def bert_torch(layers, hidden, heads, ffn):
    import torch

    layer = torch.nn.TransformerEncoderLayer(hidden, heads, ffn, dropout=0.0, activation="gelu", batch_first=True)
    return torch.nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)


def resnet_torch():
    import torch
    from torch import nn

    class Bottleneck(nn.Module):
        def __init__(self, cin, mid, stride):
            super().__init__()
            cout = mid * 4
            self.body = nn.Sequential(nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(),
                                      nn.Conv2d(mid, mid, 3, stride, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(),
                                      nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout))
            self.skip = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                         if stride != 1 or cin != cout else nn.Identity())

        def forward(self, x):
            return torch.relu(self.body(x) + self.skip(x))

    layers, cin = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(3, 2, 1)], 64
    for mid, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
        for b in range(blocks):
            layers.append(Bottleneck(cin, mid, stride if b == 0 else 1))
            cin = mid * 4
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2048, 1000)]
    return nn.Sequential(*layers)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small shapes: a smoke run")
    ap.add_argument("--only", default="", help="comma-separated rows: gemm_fp16,gemm_fp32,layernorm,softmax,bert,resnet")
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--json", default="", help="write the rows to this JSON file")
    args = ap.parse_args(argv)
    import torch

    from examples import models

    if not torch.cuda.is_available():
        print("cuda_bench: no CUDA GPU visible to torch", file=sys.stderr)
        return 2
    only = set(filter(None, args.only.split(",")))
    want = lambda k: not only or k in only  # noqa: E731
    n = 1024 if args.quick else 4096
    batch, seq = (2, 32) if args.quick else (32, 128)
    bench = Bench(args.repeats)
    print(f"device: {torch.cuda.get_device_name()}  date: {datetime.date.today()}  torch {torch.__version__}")
    jobs = []
    if want("gemm_fp16"):
        jobs.append(lambda: bench.gemm(n, True))
    if want("gemm_fp32"):
        jobs.append(lambda: bench.gemm(n, False))
    for op in ("layernorm", "softmax"):
        if want(op):
            jobs.append(lambda op=op: bench.bandwidth(op, 4096 if args.quick else 65536, 1024))
    if want("bert"):
        def bert():
            layers, hidden, heads, ffn = (2, 256, 4, 1024) if args.quick else (12, 768, 12, 3072)
            onnx_model = to_fp16(models.bert_encoder(layers, hidden, heads, seq, ffn, batch=batch))
            feeds = {k: v.astype(np.float16) for k, v in models.example_inputs(
                models.bert_encoder(layers, hidden, heads, seq, ffn, batch=batch)).items()}
            bench.model(f"bert_base_like_b{batch}_s{seq}", onnx_model, feeds, bert_torch(layers, hidden, heads, ffn),
                        [torch.randn(batch, seq, hidden)])
        jobs.append(bert)
    if want("resnet"):
        def resnet():
            # bottleneck blocks (examples/models.py has BasicBlocks only): Kiln compiles the
            # torch module itself (torch frontend), in fp16, so all three run the same weights
            image = 64 if args.quick else 224
            module = resnet_torch().eval().half()
            x = torch.randn(batch, 3, image, image).half()
            feeds = {"input": x.numpy()}  # nn.Sequential.forward(input)
            bench.model(f"resnet50_like_b{batch}", module, feeds, module, [x], example_inputs=(x,))
        jobs.append(resnet)
    for job in jobs:
        try:
            job()
        except Exception:  # noqa: BLE001  (report the row, keep going)
            traceback.print_exc()
    if args.json:
        Path(args.json).write_text(json.dumps({"device": torch.cuda.get_device_name(), "date": str(datetime.date.today()),
                                               "rows": bench.rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

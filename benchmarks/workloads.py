"""The benchmark suite: kernels and models, each as an ONNX model plus a torch definition.

Every workload builds its ONNX model with onnx.helper and seeded random weights (the
models come from examples/models.py). Its torch definition (benchmarks/torch_models.py)
reads the same weights out of that ONNX model, so every peer computes the same function,
and the harness checks that: each peer's outputs are compared with ONNX Runtime's.

    gemm       GEMM 512/1024/2048 cubed (both operands inputs), BERT FFN 128x768x3072 and
               128x3072x768 (weights constant); numpy (OpenBLAS) is an extra peer here
    conv       ResNet-50 3x3 and 1x1 layers, batch 1, bias, stride 1, 'same' padding
    dwconv     depthwise 3x3 (MobileNetV2 layers)
    layernorm  128x768;  softmax  12x128x128 (last axis)
    attention  self-attention block: QKV and output projections, 12 heads, seq 128, hidden 768
    models     resnet18, mobilenetv2 (224x224), bert (encoder, seq 128), gpt (decoder, seq 128),
               lstm and gru (2-layer keyword-spotting classifiers, 49 frames, hidden 128)
    zoo        the nine ``light`` models shipped inside the onnx package (ResNet-50,
               DenseNet-121, Inception v1/v2, ShuffleNet, SqueezeNet, VGG-19, AlexNet,
               ZFNet-512: published architectures with constant weights), no torch peer;
               only when named (``--workloads zoo``): they double a full run's time

``suite(quick=True)`` gives tiny sizes of every workload, for smoke runs and tests.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from examples import models as M  # noqa: E402
from kiln.bench import Workload  # noqa: E402

GROUPS = ("gemm", "conv", "dwconv", "layernorm", "softmax", "reduce", "attention", "models", "zoo")
ZOO = ("resnet50", "densenet121", "inception_v1", "inception_v2", "shufflenet", "squeezenet", "vgg19",
       "bvlc_alexnet", "zfnet512")


def _torch(name: str, **kw):
    """A lazy torch factory: torch is imported only when the torch peer runs."""
    def factory(model):
        from benchmarks import torch_models

        return getattr(torch_models, name)(model, **kw)
    return factory


def _weight(model, name: str) -> np.ndarray:
    from onnx import numpy_helper

    return next(numpy_helper.to_array(t) for t in model.graph.initializer if t.name == name)


# -- kernels -------------------------------------------------------------------------------

def gemm(m: int, k: int, n: int) -> Workload:
    """Y = A @ B with both operands as inputs (no weight to pre-pack)."""
    def build():
        b = M._Builder(f"gemm_{m}x{k}x{n}", seed=0)
        b.op("MatMul", [b.input("a", [m, k]), b.input("b", [k, n])], out="y")
        b.output("y", [m, n])
        return b.model()

    name = f"gemm_{m}" if m == k == n else f"gemm_{m}x{k}x{n}"
    return Workload(name, "kernel", "gemm", f"GEMM {m}x{k}x{n} (MxKxN), both operands inputs",
                    build, flops=2.0 * m * n * k, torch=_torch("gemm"),
                    numpy=lambda model: lambda a, b: np.matmul(a, b))


_FFN = {"ffn_in": "up-projection", "ffn_out": "down-projection"}


def linear(m: int, k: int, n: int, label: str) -> Workload:
    """Y = X @ W with a constant weight W [k, n], as in a transformer's FFN."""
    def build():
        b = M._Builder(f"linear_{m}x{k}x{n}", seed=0)
        w = b.normal((k, n), 1.0 / math.sqrt(k), "w")
        b.op("MatMul", [b.input("x", [m, k]), w], out="y")
        b.output("y", [m, n])
        return b.model()

    def numpy_fn(model):
        w = _weight(model, "w_0")
        return lambda x: np.matmul(x, w)

    return Workload(f"{label}_{m}x{k}x{n}", "kernel", "gemm",
                    f"BERT FFN {_FFN[label]} GEMM {m}x{k}x{n} (MxKxN), constant weight",
                    build, flops=2.0 * m * n * k, torch=_torch("matmul_weight"), numpy=numpy_fn)


def conv(hw: int, cin: int, cout: int, k: int, depthwise: bool = False) -> Workload:
    """Conv k x k, stride 1, 'same' padding, with bias, on a [1, cin, hw, hw] input."""
    groups = cin if depthwise else 1
    if depthwise and cout != cin:
        raise ValueError("a depthwise conv keeps the channel count")

    def build():
        b = M._Builder(f"conv{k}x{k}_{hw}_{cin}_{cout}", seed=0)
        w = b.normal((cout, cin // groups, k, k), math.sqrt(2.0 / (cin // groups * k * k)), "conv_w")
        bias = b.normal((cout,), 0.05, "conv_b")
        b.op("Conv", [b.input("x", [1, cin, hw, hw]), w, bias], out="y", kernel_shape=[k, k],
             pads=[k // 2] * 4, group=groups)
        b.output("y", [1, cout, hw, hw])
        return b.model()

    flops = 2.0 * hw * hw * cout * (cin // groups) * k * k
    if depthwise:
        return Workload(f"dw{k}x{k}_{hw}x{hw}x{cin}", "kernel", "dwconv",
                        f"depthwise conv {k}x{k}, {hw}x{hw}, {cin} channels", build, flops=flops,
                        torch=_torch("conv", groups=groups))
    return Workload(f"conv{k}x{k}_{hw}x{hw}x{cin}_{cout}", "kernel", "conv",
                    f"conv {k}x{k}, {hw}x{hw}, {cin} -> {cout} channels", build, flops=flops,
                    torch=_torch("conv", groups=1))


def layernorm(rows: int, hidden: int) -> Workload:
    def build():
        b = M._Builder(f"layernorm_{rows}x{hidden}", seed=0)
        gamma = b.const((1.0 + b.rng.normal(0, 0.05, hidden)).astype(np.float32), "ln_gamma")
        beta = b.normal((hidden,), 0.02, "ln_beta")
        b.op("LayerNormalization", [b.input("x", [rows, hidden]), gamma, beta], out="y",
             axis=-1, epsilon=1e-5)
        b.output("y", [rows, hidden])
        return b.model()

    # no FLOP count: it is memory-bound, and any count would be a convention
    return Workload(f"layernorm_{rows}x{hidden}", "kernel", "layernorm",
                    f"LayerNormalization over the last axis of {rows}x{hidden}", build,
                    torch=_torch("layernorm"))


def softmax(shape: tuple[int, ...]) -> Workload:
    def build():
        b = M._Builder("softmax", seed=0)
        b.op("Softmax", [b.input("x", list(shape))], out="y", axis=-1)
        b.output("y", list(shape))
        return b.model()

    dims = "x".join(map(str, shape))
    return Workload(f"softmax_{dims}", "kernel", "softmax", f"Softmax over the last axis of {dims}",
                    build, torch=_torch("softmax"))


def reduce_mean(shape: tuple[int, ...], axis: int | tuple[int, ...]) -> Workload:
    """ReduceMean over one axis that is not the innermost (mean pooling over the tokens of
    [batch, tokens, hidden], or over the channels of NCHW), or over several (a global
    average pool of NCHW over H and W)."""
    dims = "x".join(map(str, shape))
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    label = f"axis{axis}" if isinstance(axis, int) else "axes" + "".join(map(str, axes))

    def build():
        b = M._Builder(f"reduce_mean_{dims}", seed=0)
        b.op("ReduceMean", [b.input("x", list(shape))], out="y", axes=list(axes), keepdims=0)  # opset 17
        b.output("y", [d for k, d in enumerate(shape) if k not in axes])
        return b.model()

    return Workload(f"reduce_mean_{dims}_{label}", "kernel", "reduce",
                    f"ReduceMean over axis {axis} of {dims}" if isinstance(axis, int)
                    else f"ReduceMean over axes {', '.join(map(str, axes))} of {dims}", build,
                    torch=_torch("reduce_mean", axis=axis))


def attention(seq: int, hidden: int, heads: int) -> Workload:
    """Self-attention as in BERT: QKV projections, scaled scores, softmax, output projection."""
    def build():
        b = M._Builder(f"attention_{seq}_{hidden}", seed=0)
        y = b.attention(b.input("x", [1, seq, hidden]), 1, seq, hidden, heads)
        b.op("Identity", [y], out="y")
        b.output("y", [1, seq, hidden])
        return b.model()

    flops = 8.0 * seq * hidden * hidden + 4.0 * seq * seq * hidden
    return Workload(f"attention_s{seq}_h{hidden}", "kernel", "attention",
                    f"self-attention, batch 1, seq {seq}, {heads} heads, hidden {hidden} "
                    "(with QKV and output projections)", build, flops=flops,
                    torch=_torch("attention", heads=heads))


# -- models --------------------------------------------------------------------------------

def resnet18(image: int = 224, width: int = 64) -> Workload:
    return Workload("resnet18", "model", "models", f"ResNet-18-style, 1x3x{image}x{image}, width {width}",
                    lambda: M.resnet_style(18, image=image, width=width),
                    torch=_torch("ResNet", blocks=(2, 2, 2, 2), width=width))


def mobilenetv2(image: int = 224, width_mult: float = 1.0) -> Workload:
    return Workload("mobilenetv2", "model", "models",
                    f"MobileNetV2-style, 1x3x{image}x{image}, width x{width_mult:g}",
                    lambda: M.mobilenetv2_style(image=image, width_mult=width_mult),
                    torch=_torch("MobileNetV2", width_mult=width_mult))


def bert(layers: int, hidden: int = 768, heads: int = 12, seq: int = 128, ffn: int = 3072) -> Workload:
    return Workload("bert", "model", "models",
                    f"BERT-base-like encoder, {layers} layers, hidden {hidden}, {heads} heads, ffn {ffn}, "
                    f"seq {seq}",
                    lambda: M.bert_encoder(layers, hidden=hidden, heads=heads, seq=seq, ffn=ffn),
                    inputs=M.example_inputs, torch=_torch("Bert", layers=layers, heads=heads))


def gpt(layers: int, hidden: int = 768, heads: int = 12, seq: int = 128, vocab: int = 256) -> Workload:
    return Workload("gpt", "model", "models",
                    f"GPT-style decoder, {layers} layers, hidden {hidden}, {heads} heads, seq {seq}, "
                    f"vocab {vocab}",
                    lambda: M.gpt_decoder(layers, hidden=hidden, heads=heads, seq=seq, vocab=vocab),
                    inputs=M.example_inputs, torch=_torch("Gpt", layers=layers, heads=heads))


def recurrent(cell: str, layers: int = 2, seq: int = 49, features: int = 40, hidden: int = 128) -> Workload:
    return Workload(cell, "model", "models",
                    f"{cell.upper()} keyword-spotting classifier, {layers} layers, hidden {hidden}, "
                    f"{seq} frames of {features} features",
                    lambda: M.recurrent_classifier(cell, layers, seq=seq, features=features, hidden=hidden),
                    inputs=M.example_inputs, torch=_torch("Recurrent", cell=cell, layers=layers))


def zoo_model(name: str) -> Workload:
    """One of onnx's ``light`` models, as the package ships it (opset 9-era graphs)."""
    def build():
        import os

        import onnx

        return onnx.load(os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light",
                                      f"light_{name}.onnx"))
    return Workload(name, "model", "zoo", f"onnx light model zoo: {name}, batch 1", build)


# -- the suite -----------------------------------------------------------------------------

def suite(quick: bool = False, layers: int = 2) -> list[Workload]:
    """Every workload, in table order; ``quick`` shrinks each to run in well under a second.

    ``layers`` is the depth of the BERT and GPT models (BERT-base has 12; the per-layer
    ratios are the same, and 2 keeps a full run short)."""
    if quick:
        return [
            gemm(64, 64, 64), gemm(128, 128, 128),
            linear(16, 64, 256, "ffn_in"), linear(16, 256, 64, "ffn_out"),
            conv(14, 16, 16, 3), conv(14, 16, 32, 1),
            conv(28, 16, 16, 3, depthwise=True),
            layernorm(16, 64), softmax((2, 16, 16)), reduce_mean((2, 16, 64), 1), attention(16, 64, 4),
            resnet18(image=64, width=16), mobilenetv2(image=64, width_mult=0.5),
            bert(1, hidden=128, heads=4, seq=32, ffn=512), gpt(1, hidden=128, heads=4, seq=32),
            recurrent("lstm", seq=8, features=8, hidden=16), recurrent("gru", seq=8, features=8, hidden=16),
        ]
    return [
        gemm(512, 512, 512), gemm(1024, 1024, 1024), gemm(2048, 2048, 2048),
        linear(128, 768, 3072, "ffn_in"), linear(128, 3072, 768, "ffn_out"),
        conv(56, 64, 64, 3), conv(56, 64, 256, 1), conv(28, 128, 128, 3),
        conv(14, 256, 256, 3), conv(7, 512, 512, 3), conv(14, 1024, 256, 1),
        conv(112, 32, 32, 3, depthwise=True), conv(56, 144, 144, 3, depthwise=True),
        conv(14, 576, 576, 3, depthwise=True),
        layernorm(128, 768), softmax((12, 128, 128)), reduce_mean((8, 128, 768), 1),
        reduce_mean((8, 64, 56, 56), 1), reduce_mean((8, 64, 56, 56), (2, 3)), attention(128, 768, 12),
        resnet18(), mobilenetv2(), bert(layers), gpt(layers), recurrent("lstm"), recurrent("gru"),
        *(zoo_model(n) for n in ZOO),
    ]


def select(workloads: list[Workload], spec: str | None) -> list[Workload]:
    """Workloads named by ``spec``: comma-separated group names (gemm, conv, ..., models,
    kernels, zoo) or workload names; None or 'all' keeps every one but the zoo's, which only
    come when named. Unknown names raise ValueError."""
    if not spec or spec == "all":
        return [w for w in workloads if w.group != "zoo"]
    wanted = [s.strip() for s in spec.split(",") if s.strip()]
    names = {w.name for w in workloads}
    unknown = [s for s in wanted if s not in names and s not in GROUPS and s != "kernels"]
    if unknown:
        raise ValueError(f"unknown workload(s) {', '.join(unknown)}; choose groups "
                         f"{', '.join(GROUPS)}, kernels, or names {', '.join(sorted(names))}")
    return [w for w in workloads
            if w.name in wanted or w.group in wanted or ("kernels" in wanted and w.kind == "kernel")]

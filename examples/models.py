"""The project's own test and benchmark models, built with onnx.helper.

Every builder returns an ``onnx.ModelProto``: fp32, opset 17, static shapes, weights drawn
from a seeded numpy generator (the same arguments give the same model, byte for byte). The
size arguments let tests build tiny versions and benchmarks realistic ones, e.g.
``resnet_style(image=224)`` or ``bert_encoder(seq=128, hidden=768, heads=12, ffn=3072)``.

    small_cnn          conv-bn-relu x2, max pool, gemm           input  [b, 1, 28, 28]
    resnet_style       ResNet-18/34-style BasicBlocks             input  [b, 3, H, W]
    mobilenetv2_style  inverted residuals, depthwise 3x3, relu6  input  [b, 3, H, W]
    bert_encoder       post-LN encoder, erf GELU, additive mask   inputs embeddings [b, s, h], attention_mask [b, s]
    gpt_decoder        pre-LN decoder, causal mask, LM head       input  embeddings [b, s, h]

``example_inputs(model)`` makes matching random inputs (a 1/0 attention mask for BERT).
Run ``python examples/models.py`` to check every model with onnx.checker and ONNX Runtime.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8

__all__ = [
    "small_cnn", "resnet_style", "mobilenetv2_style", "bert_encoder", "gpt_decoder",
    "example_inputs", "MODELS",
]


class _Builder:
    """Accumulates nodes and initializers with unique names and seeded random weights."""

    def __init__(self, name: str, seed: int):
        self.name = name
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self._count: dict[str, int] = {}

    def fresh(self, hint: str) -> str:
        n = self._count.get(hint, 0)
        self._count[hint] = n + 1
        return f"{hint}_{n}"

    # -- graph pieces --------------------------------------------------------------------
    def input(self, name: str, shape: Sequence[int]) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape)))
        return name

    def output(self, name: str, shape: Sequence[int]) -> None:
        self.outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape)))

    def const(self, array, hint: str = "const") -> str:
        name = self.fresh(hint)
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def scalar(self, value: float, hint: str = "scalar") -> str:
        return self.const(np.array(value, dtype=np.float32), hint)

    def ints(self, values: Sequence[int], hint: str = "shape") -> str:
        return self.const(np.array(values, dtype=np.int64), hint)

    def normal(self, shape, std: float, hint: str) -> str:
        return self.const(self.rng.normal(0.0, std, size=shape).astype(np.float32), hint)

    def uniform(self, shape, lo: float, hi: float, hint: str) -> str:
        return self.const(self.rng.uniform(lo, hi, size=shape).astype(np.float32), hint)

    def op(self, op_type: str, inputs: Sequence[str], out: str | None = None, **attrs) -> str:
        out = out or self.fresh(op_type.lower())
        self.nodes.append(helper.make_node(op_type, list(inputs), [out],
                                           name=self.fresh("n_" + op_type.lower()), **attrs))
        return out

    def model(self) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, self.name, self.inputs, self.outputs,
                                  initializer=self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                  producer_name="kiln-examples")
        model.ir_version = IR_VERSION
        onnx.checker.check_model(model, full_check=True)
        return model

    # -- layers --------------------------------------------------------------------------
    def conv(self, x: str, cin: int, cout: int, k: int, stride: int = 1, groups: int = 1,
             bias: bool = False) -> str:
        fan_in = (cin // groups) * k * k
        w = self.normal((cout, cin // groups, k, k), math.sqrt(2.0 / fan_in), "conv_w")
        ins = [x, w] + ([self.normal((cout,), 0.05, "conv_b")] if bias else [])
        pad = k // 2
        return self.op("Conv", ins, kernel_shape=[k, k], strides=[stride, stride],
                       pads=[pad, pad, pad, pad], group=groups)

    def batchnorm(self, x: str, c: int) -> str:
        scale = self.uniform((c,), 0.5, 1.0, "bn_scale")
        bias = self.normal((c,), 0.1, "bn_bias")
        mean = self.normal((c,), 0.1, "bn_mean")
        var = self.uniform((c,), 0.5, 1.5, "bn_var")
        return self.op("BatchNormalization", [x, scale, bias, mean, var], epsilon=1e-5)

    def relu6(self, x: str) -> str:
        return self.op("Clip", [x, self.scalar(0.0, "clip_min"), self.scalar(6.0, "clip_max")])

    def gemm(self, x: str, fin: int, fout: int) -> str:
        w = self.normal((fout, fin), 1.0 / math.sqrt(fin), "fc_w")
        b = self.normal((fout,), 0.05, "fc_b")
        return self.op("Gemm", [x, w, b], transB=1)

    def linear(self, x: str, fin: int, fout: int, hint: str = "linear") -> str:
        """MatMul + Add as exporters emit for nn.Linear on a 3-D input."""
        w = self.normal((fin, fout), 1.0 / math.sqrt(fin), hint + "_w")
        b = self.normal((fout,), 0.02, hint + "_b")
        return self.op("Add", [self.op("MatMul", [x, w]), b])

    def layernorm(self, x: str, h: int, eps: float) -> str:
        gamma = self.const((1.0 + self.rng.normal(0, 0.05, h)).astype(np.float32), "ln_gamma")
        beta = self.normal((h,), 0.02, "ln_beta")
        return self.op("LayerNormalization", [x, gamma, beta], axis=-1, epsilon=eps)

    def attention(self, x: str, batch: int, seq: int, hidden: int, heads: int,
                  mask: str | None = None, causal: str | None = None) -> str:
        """Multi-head self-attention: x [b, s, h] -> [b, s, h].

        ``mask`` is an additive [b, 1, 1, s] mask; ``causal`` a bool [1, 1, s, s] constant
        applied with Where (kept positions true).
        """
        dh = hidden // heads
        split = self.ints([batch, seq, heads, dh], "heads_shape")
        q = self.op("Transpose", [self.op("Reshape", [self.linear(x, hidden, hidden, "q"), split])],
                    perm=[0, 2, 1, 3])
        k = self.op("Transpose", [self.op("Reshape", [self.linear(x, hidden, hidden, "k"), split])],
                    perm=[0, 2, 3, 1])
        v = self.op("Transpose", [self.op("Reshape", [self.linear(x, hidden, hidden, "v"), split])],
                    perm=[0, 2, 1, 3])
        scores = self.op("Div", [self.op("MatMul", [q, k]), self.scalar(math.sqrt(dh), "sqrt_dh")])
        if mask is not None:
            scores = self.op("Add", [scores, mask])
        if causal is not None:
            scores = self.op("Where", [causal, scores, self.scalar(-1e4, "neg_big")])
        probs = self.op("Softmax", [scores], axis=-1)
        ctx = self.op("Transpose", [self.op("MatMul", [probs, v])], perm=[0, 2, 1, 3])
        ctx = self.op("Reshape", [ctx, self.ints([batch, seq, hidden], "merge_shape")])
        return self.linear(ctx, hidden, hidden, "attn_out")

    def gelu_erf(self, x: str) -> str:
        """0.5 * x * (1 + erf(x / sqrt(2))), as torch.onnx exports nn.GELU()."""
        e = self.op("Erf", [self.op("Div", [x, self.scalar(math.sqrt(2.0), "sqrt2")])])
        return self.op("Mul", [self.op("Mul", [x, self.op("Add", [e, self.scalar(1.0, "one")])]),
                               self.scalar(0.5, "half")])

    def gelu_tanh(self, x: str) -> str:
        """0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3))), GPT-2's GELU."""
        cube = self.op("Pow", [x, self.scalar(3.0, "three")])
        inner = self.op("Add", [x, self.op("Mul", [cube, self.scalar(0.044715, "gelu_c")])])
        t = self.op("Tanh", [self.op("Mul", [inner, self.scalar(math.sqrt(2.0 / math.pi), "gelu_k")])])
        return self.op("Mul", [self.op("Mul", [x, self.scalar(0.5, "half")]),
                               self.op("Add", [t, self.scalar(1.0, "one")])])


# -- CNNs ------------------------------------------------------------------------------------

def small_cnn(batch: int = 1, image: int = 28, channels: Sequence[int] = (8, 16),
              classes: int = 10, seed: int = 0) -> onnx.ModelProto:
    """conv3x3-bn-relu, conv3x3-bn-relu, 2x2 max pool, flatten, gemm. Input ``input``."""
    if image % 2:
        raise ValueError(f"image must be even for the 2x2 pool, got {image}")
    b = _Builder("small_cnn", seed)
    x = b.input("input", [batch, 1, image, image])
    cin = 1
    for c in channels:
        x = b.op("Relu", [b.batchnorm(b.conv(x, cin, c, 3, bias=True), c)])
        cin = c
    x = b.op("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])
    x = b.op("Flatten", [x], axis=1)
    b.op("Gemm", [x, b.normal((classes, cin * (image // 2) ** 2), 1.0 / math.sqrt(cin * (image // 2) ** 2), "fc_w"),
                  b.normal((classes,), 0.05, "fc_b")], out="logits", transB=1)
    b.output("logits", [batch, classes])
    return b.model()


_RESNET_BLOCKS = {10: (1, 1, 1, 1), 18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}


def resnet_style(depth: int | Sequence[int] = 18, image: int = 64, batch: int = 1,
                 width: int = 64, classes: int = 1000, seed: int = 0) -> onnx.ModelProto:
    """ResNet with BasicBlocks (two 3x3 conv-bn, residual add, relu).

    ``depth`` is 10, 18 or 34, or a tuple of blocks per stage. Stages have ``width`` x
    (1, 2, 4, 8) channels; the first block of stages 2-4 has stride 2 and a 1x1 stride-2
    conv-bn downsample on the shortcut. Stem: 7x7/2 conv-bn-relu, 3x3/2 max pool; head:
    GlobalAveragePool, Flatten, Gemm. Input ``input`` [batch, 3, image, image].
    """
    blocks = _RESNET_BLOCKS[depth] if isinstance(depth, int) else tuple(depth)
    b = _Builder(f"resnet_style_{sum(blocks) * 2 + 2}", seed)
    x = b.input("input", [batch, 3, image, image])
    x = b.op("Relu", [b.batchnorm(b.conv(x, 3, width, 7, stride=2), width)])
    x = b.op("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    cin = width
    for stage, n in enumerate(blocks):
        cout = width * 2 ** stage
        for i in range(n):
            stride = 2 if stage > 0 and i == 0 else 1
            y = b.op("Relu", [b.batchnorm(b.conv(x, cin, cout, 3, stride=stride), cout)])
            y = b.batchnorm(b.conv(y, cout, cout, 3), cout)
            shortcut = x
            if stride != 1 or cin != cout:
                shortcut = b.batchnorm(b.conv(x, cin, cout, 1, stride=stride), cout)
            x = b.op("Relu", [b.op("Add", [y, shortcut])])
            cin = cout
    x = b.op("Flatten", [b.op("GlobalAveragePool", [x])], axis=1)
    b.op("Gemm", [x, b.normal((classes, cin), 1.0 / math.sqrt(cin), "fc_w"),
                  b.normal((classes,), 0.05, "fc_b")], out="logits", transB=1)
    b.output("logits", [batch, classes])
    return b.model()


_MBV2_CONFIG = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))  # expansion t, channels c, repeats n, stride s


def _divisible(v: float, d: int = 8) -> int:
    new = max(d, int(v + d / 2) // d * d)
    return new + d if new < 0.9 * v else new


def mobilenetv2_style(image: int = 64, batch: int = 1, width_mult: float = 1.0,
                      stages: int = 7, classes: int = 1000, seed: int = 0) -> onnx.ModelProto:
    """MobileNetV2: inverted residuals (1x1 expand, depthwise 3x3 with group=C, 1x1 project),
    Clip(0, 6) as relu6, residual add when stride 1 and channels match.

    ``stages`` keeps the first N of the 7 standard stages (smaller test models);
    ``width_mult`` scales every channel count. Input ``input`` [batch, 3, image, image].
    """
    b = _Builder("mobilenetv2_style", seed)
    x = b.input("input", [batch, 3, image, image])
    cin = _divisible(32 * width_mult)
    x = b.relu6(b.batchnorm(b.conv(x, 3, cin, 3, stride=2), cin))
    for t, c, n, s in _MBV2_CONFIG[:stages]:
        cout = _divisible(c * width_mult)
        for i in range(n):
            stride = s if i == 0 else 1
            hidden = cin * t
            y = x
            if t != 1:
                y = b.relu6(b.batchnorm(b.conv(y, cin, hidden, 1), hidden))
            y = b.relu6(b.batchnorm(b.conv(y, hidden, hidden, 3, stride=stride, groups=hidden), hidden))
            y = b.batchnorm(b.conv(y, hidden, cout, 1), cout)
            x = b.op("Add", [x, y]) if stride == 1 and cin == cout else y
            cin = cout
    last = _divisible(1280 * max(1.0, width_mult))
    x = b.relu6(b.batchnorm(b.conv(x, cin, last, 1), last))
    x = b.op("Flatten", [b.op("GlobalAveragePool", [x])], axis=1)
    b.op("Gemm", [x, b.normal((classes, last), 1.0 / math.sqrt(last), "fc_w"),
                  b.normal((classes,), 0.05, "fc_b")], out="logits", transB=1)
    b.output("logits", [batch, classes])
    return b.model()


# -- transformers ----------------------------------------------------------------------------

def _check_heads(hidden: int, heads: int) -> None:
    if hidden % heads:
        raise ValueError(f"hidden ({hidden}) must be a multiple of heads ({heads})")


def bert_encoder(layers: int = 2, hidden: int = 128, heads: int = 4, seq: int = 32,
                 ffn: int = 512, batch: int = 1, seed: int = 0) -> onnx.ModelProto:
    """A BERT encoder stack (post-LN) on precomputed embeddings.

    Inputs: ``embeddings`` [batch, seq, hidden] and ``attention_mask`` [batch, seq] (float,
    1 = attend, 0 = padding), turned into an additive (1 - mask) * -10000 mask of shape
    [batch, 1, 1, seq]. Each layer: multi-head attention (MatMul/Reshape/Transpose/Softmax),
    residual add, LayerNormalization, FFN with GELU written as 0.5*x*(1+erf(x/sqrt 2)),
    residual add, LayerNormalization. Output ``last_hidden_state`` [batch, seq, hidden].
    """
    _check_heads(hidden, heads)
    b = _Builder(f"bert_encoder_{layers}l_{hidden}h", seed)
    x = b.input("embeddings", [batch, seq, hidden])
    m = b.input("attention_mask", [batch, seq])
    inv = b.op("Sub", [b.scalar(1.0, "one"), m])
    additive = b.op("Mul", [inv, b.scalar(-10000.0, "mask_value")])
    additive = b.op("Reshape", [additive, b.ints([batch, 1, 1, seq], "mask_shape")])
    for _ in range(layers):
        a = b.attention(x, batch, seq, hidden, heads, mask=additive)
        x = b.layernorm(b.op("Add", [a, x]), hidden, 1e-12)
        f = b.linear(b.gelu_erf(b.linear(x, hidden, ffn, "ffn_in")), ffn, hidden, "ffn_out")
        x = b.layernorm(b.op("Add", [f, x]), hidden, 1e-12)
    b.op("Identity", [x], out="last_hidden_state")
    b.output("last_hidden_state", [batch, seq, hidden])
    return b.model()


def gpt_decoder(layers: int = 2, hidden: int = 128, heads: int = 4, seq: int = 32,
                ffn: int | None = None, vocab: int = 256, batch: int = 1,
                seed: int = 0) -> onnx.ModelProto:
    """A GPT-2-style decoder stack (pre-LN) on precomputed embeddings, with an LM head.

    Input ``embeddings`` [batch, seq, hidden]. Each layer: x + attn(LN(x)) with a constant
    lower-triangular causal mask applied by Where, then x + mlp(LN(x)) with GPT-2's tanh
    GELU (Pow, Tanh). A final LayerNormalization and a MatMul to ``vocab`` logits.
    Output ``logits`` [batch, seq, vocab]. ``ffn`` defaults to 4 * hidden.
    """
    _check_heads(hidden, heads)
    ffn = ffn or 4 * hidden
    b = _Builder(f"gpt_decoder_{layers}l_{hidden}h", seed)
    x = b.input("embeddings", [batch, seq, hidden])
    causal = b.const(np.tril(np.ones((seq, seq), dtype=bool))[None, None], "causal_mask")
    for _ in range(layers):
        x = b.op("Add", [x, b.attention(b.layernorm(x, hidden, 1e-5), batch, seq, hidden, heads,
                                        causal=causal)])
        h = b.linear(b.gelu_tanh(b.linear(b.layernorm(x, hidden, 1e-5), hidden, ffn, "mlp_in")),
                     ffn, hidden, "mlp_out")
        x = b.op("Add", [x, h])
    x = b.layernorm(x, hidden, 1e-5)
    b.op("MatMul", [x, b.normal((hidden, vocab), 1.0 / math.sqrt(hidden), "lm_head")], out="logits")
    b.output("logits", [batch, seq, vocab])
    return b.model()


def recurrent_classifier(cell: str = "lstm", layers: int = 2, seq: int = 49, features: int = 40,
                         hidden: int = 128, classes: int = 12, batch: int = 1, seed: int = 0) -> onnx.ModelProto:
    """A keyword-spotting-style recurrent classifier: stacked LSTM or GRU layers over a
    sequence of feature frames (49 frames of 40 MFCCs, as in the speech-commands models),
    then a linear layer on the last layer's final hidden state.

    Input ``features`` [seq, batch, features] (ONNX's time-major layout). GRU layers use
    ``linear_before_reset=1``, as PyTorch's GRU computes. Output ``logits`` [batch, classes].
    """
    op, gates = {"lstm": ("LSTM", 4), "gru": ("GRU", 3)}[cell]
    b = _Builder(f"{cell}_classifier_{layers}l_{hidden}h", seed)
    x = b.input("features", [seq, batch, features])
    size, last = features, None
    for _ in range(layers):
        bound = 1.0 / math.sqrt(hidden)  # PyTorch's initialization range for recurrent weights
        w = b.uniform((1, gates * hidden, size), -bound, bound, "rnn_w")
        r = b.uniform((1, gates * hidden, hidden), -bound, bound, "rnn_r")
        bias = b.uniform((1, 2 * gates * hidden), -bound, bound, "rnn_b")
        y, last = b.fresh("rnn_y"), b.fresh("rnn_h")
        attrs = {"linear_before_reset": 1} if cell == "gru" else {}
        b.nodes.append(helper.make_node(op, [x, w, r, bias], [y, last], name=b.fresh("n_" + cell),
                                        hidden_size=hidden, **attrs))
        x = b.op("Squeeze", [y, b.ints([1], "axes")])  # [seq, 1, batch, hidden] -> [seq, batch, hidden]
        size = hidden
    h = b.op("Reshape", [last, b.ints([batch, hidden], "shape")])
    b.op("Gemm", [h, b.normal((classes, hidden), 1.0 / math.sqrt(hidden), "fc_w"),
                  b.normal((classes,), 0.05, "fc_b")], out="logits", transB=1)
    b.output("logits", [batch, classes])
    return b.model()


MODELS = {
    "small_cnn": small_cnn,
    "resnet_style": resnet_style,
    "mobilenetv2_style": mobilenetv2_style,
    "bert_encoder": bert_encoder,
    "gpt_decoder": gpt_decoder,
    "recurrent_classifier": recurrent_classifier,
}


def example_inputs(model: onnx.ModelProto, seed: int = 0) -> dict[str, np.ndarray]:
    """Random fp32 inputs for a model above: standard normal values, and for an input named
    ``attention_mask`` ones with the last quarter of each row set to 0 (padding)."""
    rng = np.random.default_rng(seed)
    inits = {t.name for t in model.graph.initializer}
    out = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        shape = tuple(d.dim_value for d in vi.type.tensor_type.shape.dim)
        if vi.name == "attention_mask":
            mask = np.ones(shape, dtype=np.float32)
            mask[..., shape[-1] - shape[-1] // 4:] = 0.0
            out[vi.name] = mask
        else:
            out[vi.name] = rng.standard_normal(shape).astype(np.float32)
    return out


def _self_check(large: bool = False) -> None:
    import time

    import onnxruntime as ort

    if large:
        builds = {
            "small_cnn": lambda: small_cnn(),
            "resnet_style (18, 224)": lambda: resnet_style(18, image=224),
            "mobilenetv2_style (224)": lambda: mobilenetv2_style(image=224),
            "bert_encoder (2 x 768, seq 128)": lambda: bert_encoder(2, hidden=768, heads=12, seq=128, ffn=3072),
            "gpt_decoder (2 x 768, seq 128)": lambda: gpt_decoder(2, hidden=768, heads=12, seq=128),
            "recurrent_classifier (lstm)": lambda: recurrent_classifier("lstm"),
            "recurrent_classifier (gru)": lambda: recurrent_classifier("gru"),
        }
    else:
        builds = {name: fn for name, fn in MODELS.items()}
    for name, build in builds.items():
        t0 = time.perf_counter()
        model = build()
        onnx.checker.check_model(model, full_check=True)
        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        inputs = example_inputs(model)
        outs = sess.run(None, inputs)
        for o in outs:
            if not np.all(np.isfinite(o)):
                raise SystemExit(f"{name}: non-finite output")
        n_nodes, n_params = len(model.graph.node), sum(int(np.prod(t.dims)) for t in model.graph.initializer)
        ins = ", ".join(f"{k}{list(v.shape)}" for k, v in inputs.items())
        res = ", ".join(f"{o.name}{list(a.shape)} (std {a.std():.3g})"
                        for o, a in zip(sess.get_outputs(), outs))
        print(f"{name:32s} {n_nodes:4d} nodes {n_params / 1e6:7.2f} M params  {ins} -> {res}  "
              f"[{time.perf_counter() - t0:.1f} s]")


if __name__ == "__main__":
    import argparse

    p = argparse.ArgumentParser(description="check every example model with onnx.checker and ONNX Runtime")
    p.add_argument("--large", action="store_true", help="check the benchmark sizes instead of the defaults")
    _self_check(p.parse_args().large)

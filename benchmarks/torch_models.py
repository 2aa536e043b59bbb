"""Torch definitions of the benchmark workloads, with the weights of their ONNX models.

Each factory takes the ONNX model that benchmarks/workloads.py built and returns a torch
callable that takes the same inputs by name. Weights are read from the model's
initializers in the order examples/models.py created them: its builder names them
``<hint>_<n>`` with one counter per hint (``conv_w_0``, ``conv_w_1``, ...), so a module that
is constructed layer by layer in the builder's order asks for ``take("conv_w")`` and gets the
right array. The suite compares each peer's outputs with ONNX Runtime's, so a definition that
drifted from its ONNX twin shows up as a large error in the table.

This is eager PyTorch written the way its users write it (nn.Conv2d + nn.BatchNorm2d in eval
mode, nn.Linear, F.scaled_dot_product_attention); no torch.compile.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from onnx import numpy_helper
from torch import nn

from examples import models as M


class _Weights:
    """The ONNX initializers, handed out per hint in the order the builder made them."""

    def __init__(self, model):
        self.arrays = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        self.count: dict[str, int] = {}

    def take(self, hint: str) -> torch.Tensor:
        n = self.count.get(hint, 0)
        self.count[hint] = n + 1
        return torch.from_numpy(np.array(self.arrays[f"{hint}_{n}"], dtype=np.float32))


def _param(t: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(t.contiguous(), requires_grad=False)


# -- kernels -------------------------------------------------------------------------------

def gemm(model):
    return lambda a, b: torch.matmul(a, b)


def matmul_weight(model):
    w = _Weights(model).take("w").T.contiguous()  # nn.Linear's [out, in] layout
    return lambda x: F.linear(x, w)


def conv(model, groups: int = 1):
    w = _Weights(model)
    weight, bias = w.take("conv_w"), w.take("conv_b")
    pad = weight.shape[-1] // 2
    return lambda x: F.conv2d(x, weight, bias, padding=pad, groups=groups)


def layernorm(model):
    w = _Weights(model)
    gamma, beta = w.take("ln_gamma"), w.take("ln_beta")
    return lambda x: F.layer_norm(x, gamma.shape, gamma, beta, 1e-5)


def softmax(model):
    return lambda x: F.softmax(x, dim=-1)


def reduce_mean(model, axis: int):
    return lambda x: x.mean(dim=axis)


def attention(model, heads: int):
    module = _Attention(_Weights(model), heads).eval()
    return lambda x: module(x)


# -- layers --------------------------------------------------------------------------------

def _linear(w: _Weights, hint: str) -> nn.Linear:
    """The builder's MatMul + Add: weight [in, out] and bias, as an nn.Linear."""
    weight, bias = w.take(hint + "_w"), w.take(hint + "_b")
    lin = nn.Linear(weight.shape[0], weight.shape[1])
    lin.weight, lin.bias = _param(weight.T), _param(bias)
    return lin


def _layernorm(w: _Weights, eps: float) -> nn.LayerNorm:
    gamma, beta = w.take("ln_gamma"), w.take("ln_beta")
    ln = nn.LayerNorm(gamma.shape[0], eps=eps)
    ln.weight, ln.bias = _param(gamma), _param(beta)
    return ln


def _conv_bn(w: _Weights, cin: int, cout: int, k: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    """The builder's conv (no bias, 'same' padding) followed by BatchNormalization."""
    conv = nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False)
    conv.weight = _param(w.take("conv_w"))
    bn = nn.BatchNorm2d(cout, eps=1e-5)
    bn.weight, bn.bias = _param(w.take("bn_scale")), _param(w.take("bn_bias"))
    bn.running_mean, bn.running_var = w.take("bn_mean"), w.take("bn_var")
    return nn.Sequential(conv, bn)


def _fc(w: _Weights) -> nn.Linear:
    """The classifier Gemm (transB=1): the weight is already [classes, in]."""
    weight, bias = w.take("fc_w"), w.take("fc_b")
    fc = nn.Linear(weight.shape[1], weight.shape[0])
    fc.weight, fc.bias = _param(weight), _param(bias)
    return fc


class _Attention(nn.Module):
    """Multi-head self-attention with the builder's q, k, v and attn_out projections."""

    def __init__(self, w: _Weights, heads: int):
        super().__init__()
        self.q, self.k, self.v = _linear(w, "q"), _linear(w, "k"), _linear(w, "v")
        self.out = _linear(w, "attn_out")
        self.heads = heads

    def forward(self, x, mask=None, causal: bool = False):
        b, s, h = x.shape

        def split(t):
            return t.view(b, s, self.heads, h // self.heads).transpose(1, 2)

        ctx = F.scaled_dot_product_attention(split(self.q(x)), split(self.k(x)), split(self.v(x)),
                                             attn_mask=mask, is_causal=causal)
        return self.out(ctx.transpose(1, 2).reshape(b, s, h))


# -- models --------------------------------------------------------------------------------

class _BasicBlock(nn.Module):
    def __init__(self, w: _Weights, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = _conv_bn(w, cin, cout, 3, stride)
        self.conv2 = _conv_bn(w, cout, cout, 3)
        self.down = _conv_bn(w, cin, cout, 1, stride) if stride != 1 or cin != cout else None

    def forward(self, x):
        y = self.conv2(F.relu(self.conv1(x)))
        return F.relu(y + (self.down(x) if self.down is not None else x))


class ResNet(nn.Module):
    """examples.models.resnet_style with BasicBlocks."""

    def __init__(self, model, blocks=(2, 2, 2, 2), width: int = 64):
        super().__init__()
        w = _Weights(model)
        self.stem = _conv_bn(w, 3, width, 7, 2)
        layers, cin = [], width
        for stage, n in enumerate(blocks):
            cout = width * 2 ** stage
            for i in range(n):
                layers.append(_BasicBlock(w, cin, cout, 2 if stage > 0 and i == 0 else 1))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.fc = _fc(w)
        self.eval()

    def forward(self, input):  # noqa: A002  (the ONNX input's name)
        x = F.max_pool2d(F.relu(self.stem(input)), 3, 2, 1)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.layers(x), 1), 1))


class _InvertedResidual(nn.Module):
    def __init__(self, w: _Weights, cin: int, cout: int, t: int, stride: int):
        super().__init__()
        hidden = cin * t
        self.expand = _conv_bn(w, cin, hidden, 1) if t != 1 else None
        self.depthwise = _conv_bn(w, hidden, hidden, 3, stride, groups=hidden)
        self.project = _conv_bn(w, hidden, cout, 1)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        y = F.relu6(self.expand(x)) if self.expand is not None else x
        y = self.project(F.relu6(self.depthwise(y)))
        return x + y if self.residual else y


class MobileNetV2(nn.Module):
    """examples.models.mobilenetv2_style, same configuration table and channel rounding."""

    def __init__(self, model, width_mult: float = 1.0, stages: int = 7):
        super().__init__()
        w = _Weights(model)
        cin = M._divisible(32 * width_mult)
        self.stem = _conv_bn(w, 3, cin, 3, 2)
        blocks = []
        for t, c, n, s in M._MBV2_CONFIG[:stages]:
            cout = M._divisible(c * width_mult)
            for i in range(n):
                blocks.append(_InvertedResidual(w, cin, cout, t, s if i == 0 else 1))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        last = M._divisible(1280 * max(1.0, width_mult))
        self.head = _conv_bn(w, cin, last, 1)
        self.fc = _fc(w)
        self.eval()

    def forward(self, input):  # noqa: A002
        x = F.relu6(self.head(self.blocks(F.relu6(self.stem(input)))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class _BertLayer(nn.Module):
    def __init__(self, w: _Weights, heads: int):
        super().__init__()
        self.attn = _Attention(w, heads)
        self.ln1 = _layernorm(w, 1e-12)
        self.ffn_in, self.ffn_out = _linear(w, "ffn_in"), _linear(w, "ffn_out")
        self.ln2 = _layernorm(w, 1e-12)

    def forward(self, x, mask):
        x = self.ln1(self.attn(x, mask) + x)
        return self.ln2(self.ffn_out(F.gelu(self.ffn_in(x))) + x)


class Bert(nn.Module):
    """examples.models.bert_encoder: post-LN, erf GELU, additive (1 - mask) * -10000 mask."""

    def __init__(self, model, layers: int, heads: int):
        super().__init__()
        w = _Weights(model)
        self.layers = nn.ModuleList([_BertLayer(w, heads) for _ in range(layers)])
        self.eval()

    def forward(self, embeddings, attention_mask):
        b, s = attention_mask.shape
        mask = ((1.0 - attention_mask) * -10000.0).view(b, 1, 1, s)
        x = embeddings
        for layer in self.layers:
            x = layer(x, mask)
        return x


class _GptLayer(nn.Module):
    def __init__(self, w: _Weights, heads: int):
        super().__init__()
        self.ln1 = _layernorm(w, 1e-5)
        self.attn = _Attention(w, heads)
        self.ln2 = _layernorm(w, 1e-5)
        self.mlp_in, self.mlp_out = _linear(w, "mlp_in"), _linear(w, "mlp_out")

    def forward(self, x):
        x = x + self.attn(self.ln1(x), causal=True)
        return x + self.mlp_out(F.gelu(self.mlp_in(self.ln2(x)), approximate="tanh"))


class Gpt(nn.Module):
    """examples.models.gpt_decoder: pre-LN, causal attention, tanh GELU, LM head."""

    def __init__(self, model, layers: int, heads: int):
        super().__init__()
        w = _Weights(model)
        self.layers = nn.ModuleList([_GptLayer(w, heads) for _ in range(layers)])
        self.ln = _layernorm(w, 1e-5)
        self.lm_head = w.take("lm_head")
        self.eval()

    def forward(self, embeddings):
        x = embeddings
        for layer in self.layers:
            x = layer(x)
        return torch.matmul(self.ln(x), self.lm_head)


# ONNX gate blocks in the order PyTorch stacks them: LSTM i,o,f,c -> i,f,g(c),o; GRU z,r,h -> r,z,n
_TORCH_GATES = {"lstm": (0, 2, 3, 1), "gru": (1, 0, 2)}


class Recurrent(nn.Module):
    """examples.models.recurrent_classifier: nn.LSTM or nn.GRU (time-major), then a linear
    layer on the last layer's final hidden state."""

    def __init__(self, model, cell: str, layers: int):
        super().__init__()
        w = _Weights(model)
        order = _TORCH_GATES[cell]
        first = w.arrays["rnn_w_0"]
        hidden, features = first.shape[1] // len(order), first.shape[2]
        self.rnn = (nn.LSTM if cell == "lstm" else nn.GRU)(features, hidden, num_layers=layers)

        def gates(t: torch.Tensor) -> torch.Tensor:  # [G*H, ...] in ONNX order -> PyTorch order
            return torch.cat([t[k * hidden:(k + 1) * hidden] for k in order])

        for layer in range(layers):
            wx, wr, b = w.take("rnn_w")[0], w.take("rnn_r")[0], w.take("rnn_b")[0]
            half = b.shape[0] // 2
            for name, value in (("weight_ih", wx), ("weight_hh", wr), ("bias_ih", b[:half]), ("bias_hh", b[half:])):
                setattr(self.rnn, f"{name}_l{layer}", _param(gates(value)))
        self.fc = _fc(w)
        self.eval()

    def forward(self, features):
        _, state = self.rnn(features)
        h = state[0] if isinstance(state, tuple) else state
        return self.fc(h[-1])

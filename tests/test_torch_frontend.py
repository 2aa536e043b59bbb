"""The PyTorch frontend: torch.nn.Modules compiled for the host against torch eager.

Module tests go through ``kiln.compile(module, example_inputs=...)`` and the generated C;
the op-family cases below them run on every backend in ``tests.util.BACKENDS``. Every
float result must match eager within rtol=1e-4 and an atol of 1e-5 times the output's
largest magnitude; integer and bool results must match exactly.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils._pytree as pytree

import kiln
from kiln.errors import KilnError, ModelLoadError, UnsupportedOperatorError
from kiln.frontend.torch import from_torch
from kiln.ir.interp import run_graph
from tests.util import BACKENDS

RTOL, ATOL_SCALE = 1e-4, 1e-5


def eager(module, inputs) -> list[np.ndarray]:
    with torch.no_grad():
        return [t.numpy() for t in pytree.tree_leaves(module(*inputs))]


def assert_matches(got: dict, want: list[np.ndarray]) -> float:
    """Compare outputs output_0... with eager; returns the largest error / output scale."""
    assert sorted(got) == sorted(f"output_{k}" for k in range(len(want)))
    worst = 0.0
    for k, w in enumerate(want):
        g = got[f"output_{k}"]
        assert g.shape == w.shape and g.dtype == w.dtype, f"output_{k}: {g.dtype}{g.shape} != {w.dtype}{w.shape}"
        if w.dtype.kind in "biu":
            np.testing.assert_array_equal(g, w, err_msg=f"output_{k}")
            continue
        finite = np.isfinite(w)
        np.testing.assert_array_equal(np.isfinite(g), finite, err_msg=f"output_{k} non-finite positions")
        scale = max(float(np.max(np.abs(w[finite]), initial=0.0)), 1e-6)
        np.testing.assert_allclose(g[finite], w[finite], rtol=RTOL, atol=ATOL_SCALE * scale, err_msg=f"output_{k}")
        worst = max(worst, float(np.max(np.abs(g[finite] - w[finite]), initial=0.0)) / scale)
    return worst


def compile_and_check(module, inputs, backend: str = "host") -> float:
    module = module.eval()
    feeds_of = lambda g: {v.name: t.numpy() for v, t in zip(g.inputs, inputs)}  # noqa: E731
    if backend == "interp":
        graph = from_torch(module, inputs)
        got = run_graph(graph, feeds_of(graph))
    else:
        m = kiln.compile(module, example_inputs=inputs, target=backend)
        got = m.run(feeds_of(m.graph))
    return assert_matches(got, eager(module, inputs))


def randomize_norm_stats(module: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BatchNorm running statistics and affine parameters (the defaults are 0/1)."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(c, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(c, generator=g) * 0.1)
    return module


# -- module definitions ------------------------------------------------------------------------

def conv_bn(cin, cout, k=3, stride=1, groups=1):
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout))


class SmallCNN(nn.Module):
    """A classifier: conv-BN-ReLU-maxpool twice, global average pool, flatten, linear, log_softmax."""

    def __init__(self, classes=10):
        super().__init__()
        self.features = nn.Sequential(conv_bn(3, 16), nn.ReLU(), nn.MaxPool2d(2),
                                      conv_bn(16, 32), nn.ReLU(), nn.MaxPool2d(3, 2, 1))
        self.head = nn.Linear(32, classes)

    def forward(self, image):
        y = F.adaptive_avg_pool2d(self.features(image), 1)
        return F.log_softmax(self.head(torch.flatten(y, 1)), dim=1)


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.a, self.b = conv_bn(cin, cout, stride=stride), conv_bn(cout, cout)
        self.skip = conv_bn(cin, cout, k=1, stride=stride) if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x):
        return F.relu(self.b(F.relu(self.a(x))) + self.skip(x))


class ResNetTiny(nn.Module):
    """Residual blocks with identity and strided 1x1 projection shortcuts."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(conv_bn(3, 16), nn.ReLU())
        self.blocks = nn.Sequential(BasicBlock(16, 16, 1), BasicBlock(16, 32, 2))
        self.fc = nn.Linear(32, 5)

    def forward(self, x):
        return self.fc(self.blocks(self.stem(x)).mean(dim=(2, 3)))


class InvertedResidual(nn.Module):
    """MobileNetV2-style: 1x1 expand, depthwise 3x3, 1x1 project, residual; ReLU6 and hardswish."""

    def __init__(self, c=16, expand=4):
        super().__init__()
        h = c * expand
        self.body = nn.Sequential(conv_bn(c, h, k=1), nn.ReLU6(), conv_bn(h, h, groups=h), nn.ReLU6(),
                                  conv_bn(h, c, k=1))

    def forward(self, x):
        return F.avg_pool2d(F.hardswish(x + self.body(x)), 3, stride=2, padding=1)


class EncoderBlock(nn.Module):
    """A post-norm transformer encoder layer with nn.MultiheadAttention and a key padding mask."""

    def __init__(self, d=32, heads=4, ffn=64):
        super().__init__()
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.ffn = nn.Sequential(nn.Linear(d, ffn), nn.GELU(), nn.Dropout(0.1), nn.Linear(ffn, d))

    def forward(self, x, padding_mask):
        a, _ = self.attn(x, x, x, key_padding_mask=padding_mask, need_weights=False)
        x = self.ln1(x + a)
        return self.ln2(x + self.ffn(x))


class BertSelfAttention(nn.Module):
    """Manual multi-head attention with an additive mask (0 / -10000) given at run time."""

    def __init__(self, d=32, heads=4):
        super().__init__()
        self.h, self.dk = heads, d // heads
        self.qkv, self.out, self.ln = nn.Linear(d, 3 * d), nn.Linear(d, d), nn.LayerNorm(d, eps=1e-12)

    def forward(self, hidden, attention_mask):
        b, s, d = hidden.shape
        q, k, v = self.qkv(hidden).view(b, s, 3, self.h, self.dk).permute(2, 0, 3, 1, 4).unbind(0)
        scores = q @ k.transpose(-1, -2) / self.dk ** 0.5
        scores = scores + (1.0 - attention_mask[:, None, None, :]) * -10000.0
        ctx = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, s, d)
        return self.ln(hidden + self.out(ctx))


class TinyGPT(nn.Module):
    """GPT-style decoder: token + position embeddings, causal self-attention with a tril buffer
    and masked_fill(-inf), pre-norm, tanh-GELU MLP, tied LM head."""

    def __init__(self, vocab=50, d=32, heads=4, ctx=16):
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, d), nn.Embedding(ctx, d)
        self.h = heads
        self.ln1, self.ln2, self.lnf = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(approximate="tanh"), nn.Linear(4 * d, d))
        self.register_buffer("causal", torch.tril(torch.ones(ctx, ctx, dtype=torch.bool)))

    def forward(self, input_ids):
        b, s = input_ids.shape
        x = self.tok(input_ids) + self.pos(torch.arange(s))
        q, k, v = self.qkv(self.ln1(x)).split(x.shape[-1], dim=2)
        q, k, v = (t.view(b, s, self.h, -1).transpose(1, 2) for t in (q, k, v))
        att = (q @ k.transpose(-2, -1)) * (1.0 / k.shape[-1] ** 0.5)
        att = att.masked_fill(~self.causal[:s, :s], float("-inf")).softmax(dim=-1)
        x = x + self.proj((att @ v).transpose(1, 2).contiguous().view(b, s, -1))
        x = x + self.mlp(self.ln2(x))
        return self.lnf(x) @ self.tok.weight.t()


class SdpaCausal(nn.Module):
    """F.scaled_dot_product_attention with is_causal=True (decomposes to masks and _softmax)."""

    def __init__(self, d=32, heads=2):
        super().__init__()
        self.h, self.qkv = heads, nn.Linear(d, 3 * d)

    def forward(self, x):
        b, s, d = x.shape
        q, k, v = self.qkv(x).view(b, s, 3, self.h, d // self.h).permute(2, 0, 3, 1, 4)
        return F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).flatten(2)


class TinyUNet(nn.Module):
    """Encoder-decoder with skip concatenation, nearest and bilinear upsampling, a transposed conv."""

    def __init__(self):
        super().__init__()
        self.enc1, self.enc2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.mid = nn.Conv2d(16, 16, 3, stride=2, padding=1)
        self.up = nn.ConvTranspose2d(16, 8, 2, stride=2)
        self.dec = nn.Conv2d(16 + 16, 8, 3, padding=1)
        self.out = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        e1 = F.relu(self.enc1(x))
        e2 = F.relu(self.enc2(e1))
        m = F.interpolate(F.relu(self.mid(e2)), scale_factor=2, mode="nearest")
        d = F.relu(self.dec(torch.cat([m, e2], dim=1)))
        d = self.up(d.repeat(1, 2, 1, 1)) + e1
        return torch.sigmoid(F.interpolate(self.out(d), size=(24, 20), mode="bilinear", align_corners=False))


class ShuffleMix(nn.Module):
    """chunk / split / cat / permute / view / flatten plumbing (ShuffleNet-style channel shuffle)."""

    def __init__(self, c=12):
        super().__init__()
        self.branch = nn.Sequential(nn.Conv2d(c // 2, c // 2, 1), nn.ReLU())
        self.fc = nn.Linear(c * 4, 6)

    def forward(self, x):
        a, b = x.chunk(2, dim=1)
        y = torch.cat([a, self.branch(b)], dim=1)
        n, c, h, w = y.shape
        y = y.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)  # channel shuffle
        p, q, r = torch.split(y, [3, 4, 5], dim=1)
        z = torch.cat([r, p.flip(1), q], 1).permute(0, 2, 3, 1)
        return self.fc(F.adaptive_max_pool2d(z.permute(0, 3, 1, 2), 2).flatten(1)), z.sum(-1)


class NormsAndReductions(nn.Module):
    """GroupNorm, InstanceNorm, Conv1d + BatchNorm1d, softmax/log_softmax, mean/sum/var/amax."""

    def __init__(self):
        super().__init__()
        self.gn, self.inorm = nn.GroupNorm(2, 8), nn.InstanceNorm2d(8, affine=True)
        self.conv1d, self.bn1d = nn.Conv1d(8, 8, 3, padding=1), nn.BatchNorm1d(8)

    def forward(self, x):
        y = self.inorm(self.gn(x))
        seq = F.relu(self.bn1d(self.conv1d(y.flatten(2))))
        return (seq.softmax(dim=1), F.log_softmax(seq, dim=-1), seq.mean(-1, keepdim=True),
                y.sum(dim=(1, 3)), y.var(dim=1), torch.amax(y, dim=(2, 3)), F.max_pool1d(seq, 2))


class EmbeddingBag(nn.Module):
    """Embedding lookups, index_select, gather, masked mean pooling over valid tokens."""

    def __init__(self, vocab=40, d=16):
        super().__init__()
        self.emb = nn.Embedding(vocab, d, padding_idx=0)
        self.proj = nn.Linear(d, 4)

    def forward(self, ids, lengths):
        e = self.emb(ids)
        valid = (torch.arange(ids.shape[1])[None, :] < lengths[:, None]).to(e.dtype)
        pooled = (e * valid[..., None]).sum(1) / valid.sum(1, keepdim=True)
        first = torch.gather(e, 1, torch.zeros(ids.shape[0], 1, e.shape[2], dtype=torch.int64))
        return self.proj(pooled), first.squeeze(1), e.index_select(2, torch.tensor([0, 5, 7]))


# -- module tests ---------------------------------------------------------------------------------

def _images(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _module_cases():
    torch.manual_seed(0)
    ids = torch.randint(0, 50, (2, 12), generator=torch.Generator().manual_seed(3))
    pad = torch.zeros(2, 10, dtype=torch.bool)
    pad[1, 7:] = True
    bert_mask = torch.ones(2, 10)
    bert_mask[0, 6:] = 0
    return {
        "small_cnn": (randomize_norm_stats(SmallCNN()), (_images(2, 3, 32, 32),)),
        "resnet_tiny": (randomize_norm_stats(ResNetTiny()), (_images(1, 3, 32, 32),)),
        "mobilenet_inverted_residual": (randomize_norm_stats(InvertedResidual()), (_images(1, 16, 14, 14),)),
        "transformer_encoder_mha": (EncoderBlock(), (_images(2, 10, 32), pad)),
        "bert_attention_additive_mask": (BertSelfAttention(), (_images(2, 10, 32), bert_mask)),
        "gpt_causal_block": (TinyGPT(), (ids,)),
        "sdpa_causal": (SdpaCausal(), (_images(2, 8, 32),)),
        "unet_upsample_concat": (TinyUNet(), (_images(1, 3, 16, 16),)),
        "shuffle_split_permute": (ShuffleMix(), (_images(2, 12, 4, 4),)),
        "norms_and_reductions": (randomize_norm_stats(NormsAndReductions()), (_images(2, 8, 4, 4),)),
        "embedding_gather": (EmbeddingBag(), (ids % 40, torch.tensor([12, 5]))),
    }


MODULES = _module_cases()


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_matches_eager(name):
    module, inputs = MODULES[name]
    compile_and_check(module, inputs)


def test_masks_change_the_result():
    """The run-time masks are honoured: padding different tokens changes unmasked outputs."""
    module, (x, pad) = MODULES["transformer_encoder_mha"]
    m = kiln.compile(module.eval(), example_inputs=(x, pad))
    other = pad.clone()
    other[0, 5:] = True
    a = m.run({"x": x.numpy(), "padding_mask": pad.numpy()})["output_0"]
    b = m.run({"x": x.numpy(), "padding_mask": other.numpy()})["output_0"]
    assert not np.allclose(a[0], b[0])
    np.testing.assert_allclose(a[1], b[1], rtol=1e-6, atol=1e-6)
    assert_matches({"output_0": b}, eager(module, (x, other)))


# -- op families, on every backend ------------------------------------------------------------------

class Fn(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, *args):
        return self.fn(*args)


_G = torch.Generator().manual_seed(7)
X3 = torch.randn(2, 5, 8, generator=_G)
X4 = torch.randn(2, 4, 6, 6, generator=_G)
W = [torch.randn(*s, generator=_G) for s in ((3, 4, 3, 3), (4, 1, 3, 3), (2, 4, 2, 3), (3, 4, 3), (4, 2, 3, 3),
                                             (4, 1, 2, 2), (8, 3), (3, 2, 3, 3, 3))]
X5 = torch.randn(1, 2, 4, 6, 6, generator=_G)
IDX = torch.tensor([[0, 3, 1], [1, 0, 1]])

def unary_math(x):
    return (x.exp(), x.abs().log(), x.abs().sqrt(), x.abs().rsqrt(), x.tanh(), torch.erf(x), x.sigmoid(),
            x.floor(), x.ceil(), x.round(), x.sin(), x.cos(), x.tan(), x.sinh(), x.cosh(), x.sign(), -x,
            (x / 3).asin(), (x / 3).acos(), x.atan(), x.asinh(), (x.abs() + 1).acosh(), (x / 3).atanh(),
            torch.log1p(x.abs()), torch.expm1(x), torch.trunc(3 * x), torch.log2(x.abs() + 1),
            torch.log10(x.abs() + 1), x.reciprocal(), torch.isnan(x.log()))


def activations(x):
    return (F.relu(x), F.gelu(x), F.gelu(x, approximate="tanh"), F.silu(x), F.mish(x), F.leaky_relu(x, 0.2),
            F.elu(x), F.selu(x), F.celu(x), F.hardtanh(x), F.relu6(x), F.hardsigmoid(x), F.hardswish(x),
            F.softplus(x), F.softplus(x, 2, 3), F.softsign(x), F.logsigmoid(x), F.prelu(x, torch.full((5,), 0.1)))


def arithmetic(x, y):
    return (x + y, x - 2 * y, x * y, x / (y.abs() + 1), torch.maximum(x, y), x ** 2, x.abs() ** 0.5, x ** 3,
            torch.pow(x.abs() + 1, y), 2 ** x, x.abs() ** y, 3 - x, torch.add(x, y, alpha=2.5),
            torch.fmod(x, 0.7), torch.fmod(x, y), torch.remainder(x, 0.7), torch.remainder(x, y),
            torch.div(x, 0.3, rounding_mode="floor"), torch.div(x, 0.3, rounding_mode="trunc"),
            x.clamp(-0.5, 0.5), x.clamp(min=y))


def compare_logic_where(x, y):
    return (x > y, x <= 0.1, x != y, x == y.round(), x >= y, x <= y, x != 0.5, x >= 0.5,
            torch.logical_and(x > 0, y > 0), torch.logical_or(x > 0, y > 0), torch.logical_xor(x > 0, y > 0),
            ~(x > 0), torch.where(x > y, x, y), torch.where(x > 0, x, 0.0), x.masked_fill(x < 0, -1.0),
            torch.isinf(x / 0.0))


def integers(i):
    return (i + 1, i * 2, i // 2, -i // 2, i % 3, i / 2, (i > 1).to(torch.int64), i.sum(), i.cumsum(1),
            torch.arange(3) + i, i & 2, i | 4, (i > 0) & (i < 3), (i > 0) | (i > 2), (i > 0) ^ (i > 2), -i,
            i.abs(), i.clamp(0, 2), torch.maximum(i, i.flip(0)))


def norms_softmax(x):
    return (F.layer_norm(x, (8,)), F.group_norm(x, 5), F.instance_norm(x.view(2, 5, 2, 4)),
            F.normalize(x, dim=-1), F.rms_norm(x, (8,)), F.batch_norm(x, None, None, training=True),
            x.softmax(1), F.log_softmax(x, 0), torch.logsumexp(x, 2))


def reductions(x):
    return (x.sum(), x.sum((0, 2), keepdim=True), x.mean(-1), x.mean(), x.amax(1), x.amin((1, 2)), x.max(),
            x.min(), x.max(1)[0], x.max(1)[1], x.min(2, keepdim=True)[1], x.argmax(), x.argmin(2), x.prod(1),
            x.prod(), x.var(1), x.std(), x.var(2, unbiased=False, keepdim=True), *torch.var_mean(x, 1, correction=0),
            (x > 0).any(1), (x > 2).any(), (x > -3).all(), (x > 0).all(2), x.norm(dim=1), x.norm(p=1, dim=2),
            x.abs().norm(p=3), x.cumsum(2))


def shapes(x):
    return (x.view(2, -1), x.reshape(10, 8).t(), x.permute(2, 0, 1), x.unsqueeze(1), x[:, None, :, None], x[0],
            x[:, 1], x[..., ::3], x[:, 1:4, 2:-1], x.flip(1, 2), x.expand(3, 2, 5, 8), torch.cat([x, x * 2], 1),
            torch.stack([x, x]), *x.chunk(2, 2), *x.split([1, 4], 1), *x.unbind(0), x.repeat(2, 1, 1, 1),
            torch.tril(x), torch.triu(x, 1), torch.roll(x, 1, 2), x.movedim(0, -1), x.narrow(2, 1, 3),
            F.pad(x, (1, 2, 3, 0)), F.pad(x, (2, 2), mode="reflect"), F.pad(x, (1, 1), mode="replicate"),
            F.pad(X4, (1, 2, 2, 1), mode="reflect"), F.pad(X4, (0, 1, 3, 0), mode="replicate"))


def indexing(x, i):
    return (x[:, i[0]], x[i[1]], x[-i[1]], x[i[1, :2], :, i[0, 1:]], x[:, i[0][:, None], i[1, :2] - 8],
            torch.index_select(x, 2, i[0]), F.embedding(i, x[0]), torch.gather(x, 2, i.view(2, 1, 3).expand(2, 5, 3)))


def pooling(x):
    return (F.max_pool2d(x, 2), F.max_pool2d(x, 3, 2, 1, ceil_mode=True), F.max_pool2d(x, 2, dilation=2),
            F.avg_pool2d(x, 3, 2, 1), F.avg_pool2d(x, 3, 2, 1, count_include_pad=False),
            F.avg_pool2d(x, 3, 2, 1, ceil_mode=True), F.adaptive_avg_pool2d(x, (3, 2)), F.adaptive_max_pool2d(x, 2),
            F.max_pool1d(x[0], 2), F.avg_pool1d(x[0], 3, 1, 1))


def volumetric(x):
    return (F.max_pool3d(x, 2), F.avg_pool3d(x, 3, 1, 1), F.conv3d(x, W[7], padding=1),
            F.adaptive_avg_pool3d(x, (2, 3, 3)), F.adaptive_max_pool3d(x, (2, 3, 1)),
            F.interpolate(x, scale_factor=2, mode="trilinear"), F.interpolate(x, scale_factor=2),
            F.interpolate(x, scale_factor=2, mode="nearest-exact"),
            F.pad(x, (1, 1, 2, 0, 1, 2), mode="reflect"), F.pad(x, (1, 0, 0, 2, 1, 1), mode="replicate"))


def upsampling(x):
    return (F.interpolate(x, scale_factor=2), F.interpolate(x, size=(9, 7)),
            F.interpolate(x, scale_factor=2, mode="bilinear"), F.interpolate(x, size=(9, 4), mode="bilinear"),
            F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True),
            F.interpolate(x, scale_factor=2, mode="nearest-exact"), F.interpolate(x, scale_factor=2, mode="bicubic"),
            F.interpolate(x, size=(5, 3), mode="bicubic", align_corners=True),
            F.interpolate(x[0], scale_factor=3, mode="linear"), F.interpolate(x[0], size=4),
            F.interpolate(x[0], size=9, mode="nearest-exact"), F.pixel_shuffle(x, 2))


def convolutions(x):
    return (F.conv2d(x, W[0], W[0][:, 0, 0, 0], padding=1), F.conv2d(x, W[1], stride=2, groups=4),
            F.conv2d(x, W[2], dilation=(2, 1), padding="same"), F.conv1d(x[:, :, 0], W[3], padding=2),
            F.conv_transpose2d(x, W[4], stride=2, padding=1, output_padding=1),
            F.conv_transpose2d(x, W[5], stride=2, groups=2))


def matmuls(x):
    w = W[6]
    return (x @ w, F.linear(x, w.t(), torch.ones(3)), torch.bmm(x, w.expand(2, 8, 3)),
            torch.baddbmm(torch.ones(2, 5, 3), x, w.expand(2, 8, 3), alpha=0.5, beta=2),
            torch.addmm(torch.ones(3), x[0], w, alpha=2), torch.einsum("bik,kj->bji", x, w), x[0] @ w[:, 0],
            x[0, 0] @ w)


def factories(x):
    return (x + torch.ones(8), torch.zeros_like(x), torch.full((2, 3), 7.0), torch.arange(0, 1, 0.25) * x[0, 0, :4],
            torch.arange(5)[None] + torch.arange(5)[:, None], torch.tensor([1.0, 2.0]) * 2,
            torch.ones_like(x, dtype=torch.int64), x * 1.0 + 0)


OP_CASES = {
    "unary_math": (unary_math, (X3,)),
    "activations": (activations, (X3,)),
    "arithmetic": (arithmetic, (X3, X3[0].flip(0) + 2)),
    "compare_logic_where": (compare_logic_where, (X3, X3.flip(0))),
    "integers": (integers, (IDX,)),
    "norms_softmax": (norms_softmax, (X3,)),
    "reductions": (reductions, (X3,)),
    "shapes": (shapes, (X3,)),
    "indexing": (indexing, (X3, IDX)),
    "pooling": (pooling, (X4,)),
    "volumetric": (volumetric, (X5,)),
    "upsampling": (upsampling, (X4,)),
    "convolutions": (convolutions, (X4,)),
    "matmuls": (matmuls, (X3,)),
    "factories": (factories, (X3,)),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", sorted(OP_CASES))
def test_op_family_matches_eager(name, backend):
    fn, inputs = OP_CASES[name]
    compile_and_check(Fn(fn), inputs, backend)


# -- the frontend's interface and errors ------------------------------------------------------------

class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor([2.0, 3.0]))

    def forward(self, image, tokens):
        return {"sum": image.sum(-1), "pair": (image, tokens + 1)}, self.scale


def test_inputs_named_after_forward_arguments_and_outputs_flattened():
    image, tokens = torch.randn(3, 2), torch.tensor([1, 2])
    m = kiln.compile(TwoInputs(), example_inputs=(image, tokens))
    assert m.input_names == ["image", "tokens"]
    assert m.output_names == ["output_0", "output_1", "output_2", "output_3"]
    got = m.run({"image": image.numpy(), "tokens": tokens.numpy()})
    assert_matches(got, eager(TwoInputs(), (image, tokens)))


def test_numpy_single_and_keyword_example_inputs():
    x = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    module = Fn(lambda x: x.relu())
    for example in (x, (x,), [torch.from_numpy(x)]):
        assert kiln.compile(module, example_inputs=example).run({"args_0": x})["output_0"].shape == (2, 3)
    g = from_torch(TwoInputs(), {"image": torch.ones(3, 2), "tokens": torch.ones(2, dtype=torch.int64)})
    assert [v.name for v in g.inputs] == ["image", "tokens"]


def test_module_in_training_mode_is_compiled_in_eval_mode_and_restored():
    module = randomize_norm_stats(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Dropout(0.5)))
    module.train()
    x = _images(1, 3, 8, 8)
    got = kiln.compile(module, example_inputs=(x,)).run({"input": x.numpy()})
    assert all(m.training for m in module.modules())
    assert_matches(got, eager(module.eval(), (x,)))


def test_every_unsupported_op_listed_before_converting():
    module = Fn(lambda x: (torch.topk(x, 2)[0], torch.cumprod(x, 1), torch.sort(x, 1)[0], torch.cumprod(x, 0)))
    with pytest.raises(UnsupportedOperatorError) as err:
        kiln.compile(module, example_inputs=(torch.randn(3, 4),))
    found = {op: names for op, _, names in err.value.unsupported}
    assert set(found) == {"aten.topk.default", "aten.cumprod.default", "aten.sort.default"}
    assert found["aten.cumprod.default"] == ["cumprod", "cumprod_1"]
    assert "aten.topk.default" in str(err.value) and "'cumprod_1'" in str(err.value)


def test_unsupported_variants_and_results_are_named():
    with pytest.raises(UnsupportedOperatorError, match="training"):
        from_torch(Fn(lambda x: F.dropout(x, 0.5, training=True)), (torch.randn(4),))
    with pytest.raises(UnsupportedOperatorError, match="max_pool2d_with_indices.*result 1"):
        from_torch(Fn(lambda x: F.max_pool2d(x, 2, return_indices=True)[1]), (torch.randn(1, 1, 4, 4),))
    with pytest.raises(UnsupportedOperatorError, match="unequal sizes"):
        from_torch(Fn(lambda x: F.adaptive_avg_pool2d(x, 3)), (torch.randn(1, 1, 4, 4),))


class Counter(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("calls", torch.zeros(1))

    def forward(self, x):
        self.calls.add_(1)
        return x * self.calls


class DataDependent(nn.Module):
    def forward(self, x):
        return x * 2 if x.sum() > 0 else x - 1


def test_export_problems_are_kiln_errors():
    with pytest.raises(ModelLoadError, match="in place"):
        kiln.compile(Counter(), example_inputs=(torch.ones(2),))
    with pytest.raises(ModelLoadError, match="torch.export could not export DataDependent"):
        kiln.compile(DataDependent(), example_inputs=(torch.ones(2),))
    with pytest.raises(ModelLoadError, match="example_inputs"):
        kiln.compile(Fn(torch.relu))
    with pytest.raises(KilnError, match="input_shapes"):
        kiln.compile(Fn(torch.relu), example_inputs=(torch.ones(2),), input_shapes={"x": (2,)})
    with pytest.raises(ModelLoadError, match="not a tensor"):
        from_torch(Fn(lambda x: (x + 1, None)), (torch.ones(2),))


def test_inspect_shows_the_imported_graph():
    text = kiln.inspect(SmallCNN(), example_inputs=(_images(1, 3, 16, 16),), print_ir_after="import")
    assert "conv(%image" in text and "log_softmax" in text and "batch_norm" in text


def test_onnx_compile_never_imports_torch():
    """Recognising a torch module must not cost an ONNX user the torch import."""
    import subprocess
    import sys
    from pathlib import Path

    code = ("import sys, numpy as np, kiln\n"
            "from onnx import helper\n"
            "from tests.util import make_model\n"
            "m = make_model([helper.make_node('Relu', ['x'], ['y'])], [('x', np.float32, [2])], "
            "[('y', np.float32, [2])])\n"
            "assert kiln.compile(m).run({'x': np.array([-1, 2], np.float32)})['y'].tolist() == [0, 2]\n"
            "assert 'torch' not in sys.modules\n")
    subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1], check=True)

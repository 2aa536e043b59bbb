"""Kiln against CMSIS-NN, layer by layer, on the same emulated Cortex-M cores.

    git clone https://github.com/ARM-software/CMSIS-NN /tmp/CMSIS-NN
    python benchmarks/cmsis_nn_peer.py --cmsis-nn /tmp/CMSIS-NN
    python benchmarks/cmsis_nn_peer.py --cmsis-nn /tmp/CMSIS-NN --only ds_cnn --targets cortex-m4 --write

CMSIS-NN is Arm's int8 kernel library: what TensorFlow Lite Micro calls on Cortex-M, and
what a user compares a microcontroller compiler with. This script runs the layers of each
benchmark model (the float ONNX graph of benchmarks/mcu_bench.py: its convolutions,
depthwise convolutions, fully connected layers, pools and softmax) through CMSIS-NN's
``arm_*_wrapper_s8`` entry points -- the kernels TFLM picks -- in one firmware image
per core, built with the same compiler, flags (``-O2``), startup code, linker script and
QEMU board as Kiln's own model, and counts executed instructions per layer under
``-icount`` (deterministic, like mcu_bench.py). Kiln's model runs beside it with
``make profile``; both columns are instructions, lower is better.

The CMSIS-NN harness feeds each layer the previous layer's int8 output (random input and
weights, per-channel requantization scaled to keep outputs in range) and writes every
layer's output; each one is checked against a NumPy reference of the same integer layer
(within 1 for rounding), so a wrongly configured call cannot pass as fast. Kiln's count
covers its whole inference (input quantization and any layout copies included), the
CMSIS-NN column only the layers listed: the comparison is conservative for Kiln.
"""
from __future__ import annotations

import argparse
import datetime
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper, shape_inference

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import mcu_bench  # noqa: E402

DOC = ROOT / "docs" / "benchmarks" / "cmsis_nn.md"
SOURCE_DIRS = ("ConvolutionFunctions", "NNSupportFunctions", "FullyConnectedFunctions", "PoolingFunctions",
               "SoftmaxFunctions", "TransposeFunctions")
OPT = "-O2"   # Kiln's Cortex-M projects build their model code at -O2


# -- the layers of a model --------------------------------------------------------------------------------

def layers(model: onnx.ModelProto) -> list[dict]:
    """The compute layers of a float ONNX model in TFLite's terms (NHWC, int8): conv,
    depthwise, fc, avgpool, maxpool, softmax; elementwise activations fuse into the
    preceding layer as they do in TFLite."""
    model = shape_inference.infer_shapes(model)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output)}
    consts = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    out = []
    for node in model.graph.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        x, y = shapes.get(node.input[0]), shapes.get(node.output[0])
        if node.op_type == "Conv":
            oc, cin_g, kh, kw = consts[node.input[1]].shape
            group = attrs.get("group", 1)
            pads = list(attrs.get("pads", [0, 0, 0, 0]))
            stride = list(attrs.get("strides", [1, 1]))
            kind = "conv" if group == 1 else "depthwise"
            if group not in (1, x[1]):
                raise SystemExit(f"{node.name}: grouped convolution (group={group}) has no CMSIS-NN s8 kernel")
            if kind == "conv" and x[2:] == [1, 1] and (kh, kw) == (1, 1):
                kind = "fc"          # a 1x1 convolution over one pixel: TFLite converts it to FULLY_CONNECTED
            out.append(dict(kind=kind, name=node.output[0], inp=(x[2], x[3], x[1]), out=(y[2], y[3], y[1]),
                            kernel=(kh, kw), stride=tuple(stride), pad=(pads[0], pads[1]), depth=cin_g))
        elif node.op_type in ("Gemm", "MatMul"):
            w = consts[node.input[1]]
            oc = w.shape[0] if attrs.get("transB") else w.shape[1]
            n = int(np.prod(x[1:]))
            out.append(dict(kind="fc", name=node.output[0], inp=(1, 1, n), out=(1, 1, oc), kernel=(1, 1),
                            stride=(1, 1), pad=(0, 0), depth=n))
        elif node.op_type in ("GlobalAveragePool", "AveragePool", "MaxPool"):
            k = (x[2], x[3]) if node.op_type == "GlobalAveragePool" else tuple(attrs["kernel_shape"])
            stride = tuple(attrs.get("strides", k)) if node.op_type != "GlobalAveragePool" else k
            pads = attrs.get("pads", [0, 0, 0, 0])
            out.append(dict(kind="maxpool" if node.op_type == "MaxPool" else "avgpool", name=node.output[0],
                            inp=(x[2], x[3], x[1]), out=(y[2], y[3], y[1]), kernel=k, stride=stride,
                            pad=(pads[0], pads[1]), depth=1))
        elif node.op_type == "Softmax":
            n = int(np.prod(x))
            out.append(dict(kind="softmax", name=node.output[0], inp=(1, 1, n), out=(1, 1, n), kernel=(1, 1),
                            stride=(1, 1), pad=(0, 0), depth=n))
    return out


def layer_macs(layer: dict) -> int:
    if layer["kind"] not in ("conv", "depthwise", "fc"):
        return 0
    oh, ow, oc = layer["out"]
    return oh * ow * oc * layer["kernel"][0] * layer["kernel"][1] * layer["depth"]


# -- parameters and the NumPy reference -------------------------------------------------------------------

IN_OFFSET, OUT_OFFSET = 128, -128   # int8 after ReLU: zero point -128 on both sides, as TFLite's


def quantized_multiplier(scale: float) -> tuple[int, int]:
    """scale = multiplier * 2^(shift - 31), multiplier in [2^30, 2^31)."""
    mantissa, exponent = np.frexp(scale)
    m = int(round(mantissa * (1 << 31)))
    if m == 1 << 31:
        m, exponent = m // 2, exponent + 1
    return m, int(exponent)


def parameters(layer: dict, rng: np.random.Generator) -> dict:
    kind = layer["kind"]
    oc = layer["out"][2]
    p = {}
    if kind in ("conv", "depthwise", "fc"):
        kh, kw = layer["kernel"]
        if kind == "depthwise":
            shape = (1, kh, kw, oc)
        elif kind == "fc":
            shape = (oc, layer["depth"])
        else:
            shape = (oc, kh, kw, layer["depth"])
        p["weights"] = rng.integers(-127, 128, shape, dtype=np.int8)
        p["bias"] = rng.integers(-2000, 2000, oc, dtype=np.int32)
        spread = np.sqrt(kh * kw * layer["depth"]) * 74.0 * 73.0   # std of the accumulator
        scales = 40.0 / spread * rng.uniform(0.7, 1.3, oc if kind != "fc" else 1)
        mult_shift = [quantized_multiplier(s) for s in scales]
        p["multiplier"] = np.array([m for m, _ in mult_shift], np.int64)
        p["shift"] = np.array([s for _, s in mult_shift], np.int64)
    return p


def requantize(acc: np.ndarray, multiplier, shift) -> np.ndarray:
    real = acc.astype(np.float64) * multiplier.astype(np.float64) * np.exp2(shift.astype(np.float64) - 31)
    return np.clip(np.round(real) + OUT_OFFSET, -128, 127)


def reference(layer: dict, x: np.ndarray, p: dict) -> np.ndarray:
    """The layer in integers (x: int8, H x W x C); requantization in float64, so the
    harness's output may differ by 1 where CMSIS-NN's fixed-point rounding does."""
    kind = layer["kind"]
    (ih, iw, ic), (oh, ow, oc) = layer["inp"], layer["out"]
    if kind in ("conv", "depthwise"):
        kh, kw = layer["kernel"]
        sh, sw = layer["stride"]
        pt, pl = layer["pad"]
        xi = x.astype(np.int64) + IN_OFFSET
        padded = np.zeros((oh * sh + kh, ow * sw + kw, ic), np.int64)
        padded[pt:pt + ih, pl:pl + iw] = xi
        acc = np.zeros((oh, ow, oc), np.int64)
        w = p["weights"].astype(np.int64)
        for dy in range(kh):
            for dx in range(kw):
                patch = padded[dy:dy + oh * sh:sh, dx:dx + ow * sw:sw]
                if kind == "depthwise":
                    acc += patch * w[0, dy, dx]
                else:
                    acc += patch @ w[:, dy, dx, :].T
        return requantize(acc + p["bias"], p["multiplier"], p["shift"])
    if kind == "fc":
        acc = (x.reshape(-1).astype(np.int64) + IN_OFFSET) @ p["weights"].astype(np.int64).T + p["bias"]
        return requantize(acc, p["multiplier"], p["shift"]).reshape(oh, ow, oc)
    if kind in ("avgpool", "maxpool"):
        kh, kw = layer["kernel"]
        sh, sw = layer["stride"]
        out = np.zeros((oh, ow, oc))
        for i in range(oh):
            for j in range(ow):
                window = x[i * sh:i * sh + kh, j * sw:j * sw + kw].astype(np.float64)
                out[i, j] = window.mean(axis=(0, 1)) if kind == "avgpool" else window.max(axis=(0, 1))
        return np.round(out)
    raise ValueError(kind)   # softmax is checked by its sum, in check_outputs


# -- the firmware ------------------------------------------------------------------------------------------

def c_array(name: str, ctype: str, values: np.ndarray) -> str:
    flat = ", ".join(str(int(v)) for v in values.reshape(-1))
    return f"static const {ctype} {name}[{values.size}] = {{{flat}}};\n"


def dims(name: str, n, h, w, c) -> str:
    return f"  static const cmsis_nn_dims {name} = {{{n}, {h}, {w}, {c}}};\n"


def layer_call(i: int, layer: dict) -> str:
    """C statements running layer i from ``src`` into ``dst``; sets ``status``."""
    kind = layer["kind"]
    (ih, iw, ic), (oh, ow, oc) = layer["inp"], layer["out"]
    kh, kw = layer["kernel"]
    sh, sw = layer["stride"]
    pt, pl = layer["pad"]
    act = "{-128, 127}"
    s = dims("in_d", 1, ih, iw, ic) + dims("out_d", 1, oh, ow, oc) + dims("bias_d", 1, 1, 1, oc)
    if kind == "conv":
        s += dims("filt_d", oc, kh, kw, ic)
        s += (f"  static const cmsis_nn_conv_params cp = {{{IN_OFFSET}, {OUT_OFFSET}, {{{sw}, {sh}}}, "
              f"{{{pl}, {pt}}}, {{1, 1}}, {act}}};\n"
              f"  cmsis_nn_per_channel_quant_params qp = {{(int32_t*)l{i}_mult, (int32_t*)l{i}_shift}};\n"
              f"  ctx.size = arm_convolve_wrapper_s8_get_buffer_size(&cp, &in_d, &filt_d, &out_d);\n"
              f"  if (ctx.size > SCRATCH) return fail({i});\n  t0 = ticks();\n"
              f"  status = arm_convolve_wrapper_s8(&ctx, &cp, &qp, &in_d, src, &filt_d, l{i}_w, &bias_d, "
              f"l{i}_b, &out_d, dst);\n")
    elif kind == "depthwise":
        s += dims("filt_d", 1, kh, kw, oc)
        s += (f"  static const cmsis_nn_dw_conv_params cp = {{{IN_OFFSET}, {OUT_OFFSET}, {oc // ic}, "
              f"{{{sw}, {sh}}}, {{{pl}, {pt}}}, {{1, 1}}, {act}}};\n"
              f"  cmsis_nn_per_channel_quant_params qp = {{(int32_t*)l{i}_mult, (int32_t*)l{i}_shift}};\n"
              f"  ctx.size = arm_depthwise_conv_wrapper_s8_get_buffer_size(&cp, &in_d, &filt_d, &out_d);\n"
              f"  if (ctx.size > SCRATCH) return fail({i});\n  t0 = ticks();\n"
              f"  status = arm_depthwise_conv_wrapper_s8(&ctx, &cp, &qp, &in_d, src, &filt_d, l{i}_w, &bias_d, "
              f"l{i}_b, &out_d, dst);\n")
    elif kind == "fc":
        n = layer["depth"]
        s += dims("filt_d", n, 1, 1, oc)
        # TFLM computes the weights' row sums (bias included) once, at Prepare: the Helium kernel reads them
        s += (f"  static const cmsis_nn_fc_params fp = {{{IN_OFFSET}, 0, {OUT_OFFSET}, {act}}};\n"
              f"  cmsis_nn_per_tensor_quant_params qp = {{(int32_t)l{i}_mult[0], (int32_t)l{i}_shift[0]}};\n"
              f"  ctx.size = arm_fully_connected_s8_get_buffer_size(&filt_d);\n"
              f"  if (ctx.size > SCRATCH) return fail({i});\n"
              f"  if (ctx.size) arm_vector_sum_s8((int32_t*)scratch, {n}, {oc}, l{i}_w, {IN_OFFSET}, 0, l{i}_b);\n"
              f"  t0 = ticks();\n"
              f"  status = arm_fully_connected_s8(&ctx, &fp, &qp, &in_d, src, &filt_d, l{i}_w, &bias_d, "
              f"l{i}_b, &out_d, dst);\n")
    elif kind in ("avgpool", "maxpool"):
        s += dims("filt_d", 1, kh, kw, 1)
        s += f"  static const cmsis_nn_pool_params pp = {{{{{sw}, {sh}}}, {{{pl}, {pt}}}, {act}}};\n"
        if kind == "avgpool":
            s += (f"  ctx.size = arm_avgpool_s8_get_buffer_size({ow}, {ic});\n"
                  f"  if (ctx.size > SCRATCH) return fail({i});\n  t0 = ticks();\n"
                  f"  status = arm_avgpool_s8(&ctx, &pp, &in_d, src, &filt_d, &out_d, dst);\n")
        else:
            s += ("  t0 = ticks();\n"
                  "  status = arm_max_pool_s8(&ctx, &pp, &in_d, src, &filt_d, &out_d, dst);\n")
    elif kind == "softmax":
        # TFLite's int8 softmax with input scale 1/16 (beta 1): multiplier and shift as its Prepare computes
        s += ("  t0 = ticks();\n"
              f"  arm_softmax_s8(src, 1, {ic}, 1518500250, 22, -248, dst);\n  status = ARM_CMSIS_NN_SUCCESS;\n")
    return s


HARNESS = """\
/* CMSIS-NN layers of {model} for benchmarks/cmsis_nn_peer.py: the ticks of each layer,
 * and each layer's output written to peer_out.bin for the NumPy check. */
#include <stdint.h>
#include <stddef.h>
#include "arm_nnfunctions.h"
#include "kiln_semihost.h"

#define SYST_CSR (*(volatile uint32_t*)0xE000E010u)
#define SYST_RVR (*(volatile uint32_t*)0xE000E014u)
#define SYST_CVR (*(volatile uint32_t*)0xE000E018u)
#define SCRATCH {scratch}
extern volatile uint32_t kiln_systick_wraps;

static int8_t buf[2][{largest}] __attribute__((aligned(16)));
static int8_t scratch[SCRATCH] __attribute__((aligned(16)));
static int32_t fout;

static uint64_t ticks(void) {{
  uint32_t w, v;
  do {{ w = kiln_systick_wraps; v = SYST_CVR; }} while (w != kiln_systick_wraps);
  return ((uint64_t)w << 24) + (0xFFFFFFu - v);
}}

static void print_u64(const char* label, int layer, uint64_t x) {{
  char out[80], digits[24];
  int n = 0, d = 0, i;
  while (label[n]) {{ out[n] = label[n]; ++n; }}
  out[n++] = (char)('0' + layer / 10); out[n++] = (char)('0' + layer % 10); out[n++] = ' ';
  do {{ digits[d++] = (char)('0' + (int)(x % 10u)); x /= 10u; }} while (x);
  for (i = d - 1; i >= 0; --i) out[n++] = digits[i];
  out[n++] = '\\n'; out[n] = 0;
  kiln_sh_write0(out);
}}

static int fail(int layer) {{ print_u64("peer: failed layer ", layer, 0); return 1; }}

{constants}
{functions}
int main(void) {{
  int i;
  fout = kiln_sh_open("peer_out.bin", 5);
  if (fout < 0) return 1;
  for (i = 0; i < {input_size}; ++i) buf[0][i] = input0[i];
  SYST_RVR = 0xFFFFFFu;
  SYST_CVR = 0;
  SYST_CSR = 0x7u;
{calls}
  kiln_sh_close(fout);
  return 0;
}}
"""


def harness(model_name: str, net: list[dict], params: list[dict], x0: np.ndarray) -> str:
    constants = c_array("input0", "int8_t", x0)
    functions = []
    for i, (layer, p) in enumerate(zip(net, params)):
        if "weights" in p:
            constants += c_array(f"l{i}_w", "int8_t", p["weights"]) + c_array(f"l{i}_b", "int32_t", p["bias"])
            constants += c_array(f"l{i}_mult", "int32_t", p["multiplier"])
            constants += c_array(f"l{i}_shift", "int32_t", p["shift"])
        size = int(np.prod(layer["out"]))
        functions.append(
            f"static int layer{i}(const int8_t* src, int8_t* dst) {{  /* {layer['kind']} -> {layer['name']} */\n"
            f"  cmsis_nn_context ctx = {{scratch, 0}};\n  arm_cmsis_nn_status status;\n  uint64_t t0, t1;\n"
            f"{layer_call(i, layer)}"
            f"  t1 = ticks();\n  if (status != ARM_CMSIS_NN_SUCCESS) return fail({i});\n"
            f"  print_u64(\"peer: layer ticks \", {i}, t1 - t0);\n"
            f"  kiln_sh_write(fout, dst, {size});\n  return 0;\n}}\n")
    calls = "\n".join(f"  if (layer{i}(buf[{i % 2}], buf[{(i + 1) % 2}])) return 1;" for i in range(len(net)))
    largest = max(max(int(np.prod(l["inp"])), int(np.prod(l["out"]))) for l in net)
    return HARNESS.format(model=model_name, scratch=64 << 10, largest=largest, constants=constants,
                          functions="\n".join(functions), input_size=x0.size, calls=calls)


def cmsis_objects(cmsis: Path, cpu_flags: list[str], build: Path) -> list[Path]:
    """CMSIS-NN's integer sources compiled for one core (cached in ``build``)."""
    sources = [p for d in SOURCE_DIRS for p in sorted((cmsis / "Source" / d).glob("*.c"))
               if not re.search(r"_(f16|f32)\b|_f(16|32)_|_f(16|32)\.c$", p.name)]
    build.mkdir(parents=True, exist_ok=True)

    def compile_one(src: Path) -> Path:
        obj = build / (src.stem + ".o")
        if not obj.exists():
            subprocess.run(["arm-none-eabi-gcc", *cpu_flags, OPT, "-std=c11", "-ffunction-sections",
                            "-fdata-sections", f"-I{cmsis / 'Include'}", "-c", "-o", str(obj), str(src)],
                           check=True, capture_output=True, text=True)
        return obj

    with ThreadPoolExecutor(2) as pool:
        return list(pool.map(compile_one, sources))


def run_peer(cmsis: Path, key: str, target: str, kiln_dir: Path, work: Path) -> tuple[list[int], bool]:
    """Per-layer instructions of CMSIS-NN for one model and core, and whether every layer's
    output matched the NumPy reference."""
    from kiln.targets.cortex_m import BOARDS, ICOUNT_SHIFT

    board = BOARDS[target]
    model = mcu_bench.MODELS[key][1]()[0]
    net = layers(model)
    rng = np.random.default_rng(7)
    params = [parameters(layer, rng) for layer in net]
    x0 = rng.integers(-128, 128, int(np.prod(net[0]["inp"])), dtype=np.int8)
    d = work / f"{key}_{target}"
    d.mkdir(parents=True, exist_ok=True)
    for name in ("startup.c", "link.ld", "kiln_semihost.h"):
        shutil.copy(kiln_dir / name, d / name)
    (d / "peer_main.c").write_text(harness(key, net, params, x0))
    flags = list(board.cpu_flags)
    objs = cmsis_objects(cmsis, flags, work / f"cmsis_{target}")
    cc = ["arm-none-eabi-gcc", *flags, OPT, "-std=c11", "-ffunction-sections", "-fdata-sections",
          f"-I{cmsis / 'Include'}", f"-I{d}"]
    for name in ("peer_main", "startup"):
        subprocess.run([*cc, "-c", "-o", str(d / f"{name}.o"), str(d / f"{name}.c")], check=True)
    subprocess.run(["arm-none-eabi-gcc", *flags, "-nostartfiles", "--specs=nano.specs", "-T", str(d / "link.ld"),
                    "-Wl,--gc-sections", "-o", str(d / "peer.elf"), str(d / "peer_main.o"), str(d / "startup.o"),
                    *map(str, objs), "-lc", "-lgcc"], check=True)
    proc = subprocess.run(["qemu-system-arm", "-M", board.machine, "-nographic", "-monitor", "none", "-serial",
                           "null", "-semihosting-config", "enable=on,target=native", "-icount",
                           f"shift={ICOUNT_SHIFT}", "-kernel", str(d / "peer.elf")],
                          cwd=d, capture_output=True, text=True, timeout=300)
    log = proc.stdout + proc.stderr
    ticks = [int(t) for t in re.findall(r"peer: layer ticks \d+ (\d+)", log)]
    if proc.returncode != 0 or len(ticks) != len(net):
        raise SystemExit(f"the CMSIS-NN harness failed on {target} (exit {proc.returncode}):\n{log}")
    ok = check_outputs(net, params, x0, (d / "peer_out.bin").read_bytes())
    per_ns = 1e9 / board.clock_hz / (1 << ICOUNT_SHIFT)
    return [round(t * per_ns) for t in ticks], ok


def check_outputs(net, params, x0, raw: bytes) -> bool:
    x, pos, ok = x0.reshape(net[0]["inp"]), 0, True
    for layer, p in zip(net, params):
        size = int(np.prod(layer["out"]))
        got = np.frombuffer(raw[pos:pos + size], np.int8).reshape(layer["out"])
        pos += size
        if layer["kind"] == "softmax":
            total = (got.astype(np.int64) + 128).sum()     # probabilities in 1/256 steps
            good = abs(total - 256) <= x.size
        else:
            good = np.abs(got.astype(np.int64) - reference(layer, x, p)).max() <= 1
        if not good:
            print(f"  CMSIS-NN output of {layer['kind']} {layer['name']} differs from the reference")
        ok &= bool(good)
        x = got
    return ok


# -- Kiln beside it and the report -------------------------------------------------------------------------

COMPUTE_OPS = ("qconv", "qmatmul", "qglobal_avg_pool", "qavg_pool", "qmax_pool", "qsoftmax", "softmax")


def pair(net: list[dict], kernels: list[tuple[str, int]]) -> list[tuple[str, int | None]]:
    """Kiln's kernel instructions per CMSIS-NN layer: the kernels computing a layer's op
    in the same order; Kiln's other kernels (layout copies, quantization) are summed apart."""
    compute = [(name, n) for name, n in kernels if re.search(r"\((%s) " % "|".join(COMPUTE_OPS), name)]
    if len(compute) != len(net):
        return [(layer["kind"], None) for layer in net]
    return [(name, n) for name, n in compute]


def compare(cmsis: Path, key: str, target: str, work: Path, activations: str = "int8") -> dict:
    import kiln

    model, calibration, sample = mcu_bench.MODELS[key][1]()
    quantized = kiln.quantize(model, calibration, method="minmax", activations=activations)
    row = mcu_bench.measure(key, quantized, sample, target, profile=True)
    peer, ok = run_peer(cmsis, key, target, Path(row["directory"]), work)
    net = layers(model)
    return dict(model=key, target=target, net=net, peer=peer, peer_ok=ok, kiln=pair(net, row["kernels"]),
                kiln_total=row["instructions"], kiln_exact=row["exact"])


def report(rows: list[dict]) -> str:
    lines = ["| model | core | Kiln (whole inference) | CMSIS-NN (layers) | Kiln / CMSIS-NN | check |",
             "|---|---|--:|--:|--:|---|"]
    for r in rows:
        peer = sum(r["peer"])
        check = ("Kiln = host int8; " if r["kiln_exact"] else "**Kiln differs from host**; ") + \
            ("CMSIS-NN = NumPy reference" if r["peer_ok"] else "**CMSIS-NN output wrong**")
        lines.append(f"| {mcu_bench.MODELS[r['model']][0]} | {r['target']} | {r['kiln_total']:,} | {peer:,} | "
                     f"{r['kiln_total'] / peer:.2f} | {check} |")
    out = "\n".join(lines) + "\n"
    for r in rows:
        out += (f"\n### {mcu_bench.MODELS[r['model']][0]}, {r['target']}, layer by layer\n\n"
                "| layer | shape (H×W×C in → out, kernel, stride) | MACs | Kiln | CMSIS-NN | Kiln / CMSIS-NN |\n"
                "|---|---|--:|--:|--:|--:|\n")
        for layer, peer, (_, mine) in zip(r["net"], r["peer"], r["kiln"]):
            shape = "{}→{}, {}×{}, /{}".format("×".join(map(str, layer["inp"])), "×".join(map(str, layer["out"])),
                                              *layer["kernel"], layer["stride"][0])
            ratio = f"{mine / peer:.2f}" if mine is not None else "–"
            mine_s = f"{mine:,}" if mine is not None else "–"
            out += (f"| {layer['kind']} | {shape} | {layer_macs(layer):,} | {mine_s} | {peer:,} | {ratio} |\n")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cmsis-nn", required=True, type=Path, help="a checkout of github.com/ARM-software/CMSIS-NN")
    ap.add_argument("--only", default="ds_cnn,vww", help="models, comma-separated: ds_cnn,vww,digits")
    ap.add_argument("--targets", default="cortex-m4,cortex-m55")
    ap.add_argument("--activations", default="int8", choices=("int8", "uint8"),
                    help="Kiln's activation type (CMSIS-NN's is int8, TFLite's scheme)")
    ap.add_argument("--write", action="store_true", help=f"write {DOC.relative_to(ROOT)}")
    args = ap.parse_args(argv)
    if not (args.cmsis_nn / "Include" / "arm_nnfunctions.h").exists():
        ap.error(f"{args.cmsis_nn} is not a CMSIS-NN checkout (no Include/arm_nnfunctions.h)")
    rows = []
    with tempfile.TemporaryDirectory(prefix="kiln_cmsis_") as tmp:
        for key in args.only.split(","):
            if key not in mcu_bench.MODELS:
                ap.error(f"unknown model {key!r}; expected one of {', '.join(mcu_bench.MODELS)}")
            for target in args.targets.split(","):
                r = compare(args.cmsis_nn, key, target, Path(tmp), args.activations)
                rows.append(r)
                print(f"{key:7s} {target:11s} Kiln {r['kiln_total']:>11,}  CMSIS-NN {sum(r['peer']):>11,}  "
                      f"ratio {r['kiln_total'] / sum(r['peer']):.2f}  peer ok {r['peer_ok']}", flush=True)
    text = report(rows)
    print(text)
    if args.write:
        commit = subprocess.run(["git", "-C", str(args.cmsis_nn), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True).stdout.strip() or "unknown"
        DOC.write_text(
            "# Kiln against CMSIS-NN on emulated Cortex-M\n\n"
            f"Generated by `python benchmarks/cmsis_nn_peer.py --cmsis-nn DIR --write` on "
            f"{datetime.date.today().isoformat()} (CMSIS-NN {commit}; {mcu_bench.tool_versions()}; both `{OPT}`, "
            "`-icount shift=5`). Executed instructions per inference under QEMU (deterministic, not silicon "
            "cycles; lower is better). How the layers are built and checked is in the script's docstring.\n\n"
            + text)
        print(f"wrote {DOC.relative_to(ROOT)}")
    return 0 if all(r["peer_ok"] and r["kiln_exact"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

"""Microcontroller benchmarks: int8 models on emulated Cortex-M4/M7/M55.

    python benchmarks/mcu_bench.py                    # print the table
    python benchmarks/mcu_bench.py --write            # and write docs/benchmarks/mcu.md
    python benchmarks/mcu_bench.py --only ds_cnn --targets cortex-m4
    python benchmarks/mcu_bench.py --only ds_cnn --targets cortex-m4 --profile   # per kernel

Models (all int8 by ``kiln.quantize``, min/max calibration): the digits CNN trained on
``sklearn.datasets.load_digits`` (tests/test_quantize_digits.py), the keyword-spotting
DS-CNN (49x10) and MobileNetV1-0.25 visual wake words (96x96x3) from
examples/mcu_models.py (random weights, fixed seed: instruction counts, sizes and memory
do not depend on the weights' values).

Per model and core, one inference under ``qemu-system-arm -icount shift=5`` (its output
checked against Kiln's host int8 build of the same graph, bit for bit):

- **instructions**: executed instructions per inference (SysTick under -icount: the same
  binary gives the same count on every run). QEMU does not model pipelines or wait states:
  these are not cycle counts of silicon.
- **MACs** of the convolutions and matrix products, and instructions per MAC.
- **arena** against its **lower bound** (the most bytes live at one time).
- **code**: ``.text`` of ``model.o`` (kernels and schedule, no weights; the DSP helpers
  are inlined into it), from ``arm-none-eabi-size``. **weights**: ``.rodata`` of
  ``weights.o``. **flash** / **RAM**: the whole linked image (harness, startup and
  newlib's semihosting included; RAM holds the arena, the stack, the harness's input and
  output buffers and static data).
"""
from __future__ import annotations

import argparse
import datetime
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TARGETS = ("cortex-m4", "cortex-m7", "cortex-m55")
DOC = ROOT / "docs" / "benchmarks" / "mcu.md"


# -- the models ----------------------------------------------------------------------------------------

def digits():
    from sklearn import datasets

    from tests.test_quantize_digits import _onnx, _train

    d = datasets.load_digits()
    x = (d.images.astype(np.float32) / 16.0)[:, None]
    y = d.target.astype(np.int64)
    perm = np.random.default_rng(0).permutation(len(x))
    train = perm[:1400]
    return _onnx(_train(x[train], y[train])), {"image": x[train][:256]}, x[perm[1400:1401]]


def ds_cnn():
    from examples.mcu_models import ds_cnn as build

    rng = np.random.default_rng(1)
    return build(), {"input": rng.standard_normal((32, 1, 49, 10)).astype(np.float32)}, \
        rng.standard_normal((1, 1, 49, 10)).astype(np.float32)


def vww():
    from examples.mcu_models import mobilenet_v1_vww

    rng = np.random.default_rng(1)
    return mobilenet_v1_vww(), {"input": rng.random((8, 3, 96, 96)).astype(np.float32)}, \
        rng.random((1, 3, 96, 96)).astype(np.float32)


MODELS = {"digits": ("digits CNN (8×8)", digits), "ds_cnn": ("DS-CNN KWS (49×10)", ds_cnn),
          "vww": ("MobileNetV1-0.25 VWW (96×96×3)", vww),
          "vww_patch": ("VWW, patch-based 3×3 (MCUNetV2)", vww)}
# target options a model is compiled with (patch-based execution of the first layers)
OPTIONS = {"vww_patch": "patch=3x3"}


# -- measuring -------------------------------------------------------------------------------------------

def macs(graph) -> int:
    """Multiply-accumulates of the integer convolutions and matrix products."""
    from kiln.ir.ops.qlinear import logical_weights

    types = graph.value_types()
    total = 0
    for n in graph.nodes:
        out = int(np.prod(types[n.outputs[0].name].shape))
        if n.op == "qconv":  # (OC, KH, KW*C/group), however the target stores them
            total += out * int(np.prod(logical_weights(graph.constants[n.inputs[1]].shape, n.attrs, "qconv")[1:]))
        elif n.op == "qmatmul":
            total += out * int(graph.constants[n.inputs[1]].shape[1])
    return total


def measure(key: str, quantized, sample: np.ndarray, target: str, profile: bool = False) -> dict:
    import kiln
    from kiln.frontend.onnx import from_onnx
    from kiln.passes.integer_io import integer_io

    option = OPTIONS.get(key)
    cm = kiln.compile(quantized, target=f"{target}:{option}" if option else target)
    name = cm.graph.inputs[0].name
    p = cm.target_impl.io_quant[name]
    info = np.iinfo(p.dtype.np)
    xq = np.clip(np.round(sample / p.scale) + p.zero_point, info.min, info.max).astype(p.dtype.np)
    runner = cm.build()
    got = runner({name: xq})
    instructions = runner.instructions[0]  # before a profiling run replaces it with its own
    host = kiln.compile(integer_io(from_onnx(quantized))[0], target="host").run({name: xq})
    exact = all(np.array_equal(got[k], host[k]) for k in host)
    float_ops = [n.op for n in cm.graph.nodes if any(o.type.dtype.is_float for o in n.outputs)]
    sizes = runner.sizes()
    plan = cm.result.plan
    kernels = runner.profile({name: xq}) if profile else None
    count = macs(cm.graph)
    patching = getattr(plan, "patching", None)
    return dict(model=key, target=target, instructions=instructions, macs=count,
                layer_bound=patching.lower_bound_without if patching else None,
                per_mac=instructions / max(count, 1), arena=plan.arena_size, lower_bound=plan.lower_bound,
                code=sizes["model_code"], weights=sizes["weights"], flash=sizes["flash"], ram=sizes["ram_static"],
                exact=exact, float_ops=float_ops, kernels=kernels, directory=str(runner.directory))


def tool_versions() -> str:
    def first(cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True).stdout.splitlines()[0]
        except (OSError, IndexError):
            return "not found"
    gcc = re.sub(r"^arm-none-eabi-gcc \(.*?\) ", "", first(["arm-none-eabi-gcc", "--version"]))
    qemu = re.sub(r"^QEMU emulator version ", "", first(["qemu-system-arm", "--version"]))
    return f"arm-none-eabi-gcc {gcc}, QEMU {qemu}"


def table(rows) -> str:
    head = ("| model | core | instructions | MACs | instr/MAC | arena | lower bound | arena/bound | code | "
            "weights | flash | RAM | check |\n|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|\n")
    lines = []
    for r in rows:
        check = "host int8 exact" if r["exact"] else "**differs from host**"
        if r["float_ops"]:
            check += f"; float ops: {', '.join(r['float_ops'])}"
        if r["layer_bound"]:
            check += f"; layer-by-layer lower bound {r['layer_bound']:,}"
        lines.append(f"| {MODELS[r['model']][0]} | {r['target']} | {r['instructions']:,} | {r['macs']:,} | "
                     f"{r['per_mac']:.2f} | {r['arena']:,} | {r['lower_bound']:,} | "
                     f"{r['arena'] / max(r['lower_bound'], 1):.3f} | {r['code']:,} B | {r['weights']:,} B | "
                     f"{r['flash']:,} B | {r['ram']:,} B | {check} |")
    return head + "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default=",".join(MODELS), help="models, comma-separated: " + ",".join(MODELS))
    ap.add_argument("--targets", default=",".join(TARGETS))
    ap.add_argument("--write", action="store_true", help=f"write {DOC.relative_to(ROOT)}")
    ap.add_argument("--profile", action="store_true", help="print each kernel's instructions as well")
    args = ap.parse_args(argv)
    import kiln

    rows = []
    for key in args.only.split(","):
        if key not in MODELS:
            ap.error(f"unknown model {key!r}; expected one of {', '.join(MODELS)}")
        model, calibration, sample = MODELS[key][1]()
        quantized = kiln.quantize(model, calibration, method="minmax")
        for target in args.targets.split(","):
            row = measure(key, quantized, sample, target, args.profile)
            rows.append(row)
            for kernel, count in row["kernels"] or ():
                print(f"  {count:>11,}  {kernel}")
            print(f"{key:7s} {target:11s} {row['instructions']:>11,} instr  {row['per_mac']:5.2f}/MAC  "
                  f"arena {row['arena']:>7,} / {row['lower_bound']:>7,}  code {row['code']:>6,} B  "
                  f"flash {row['flash']:>8,} B  RAM {row['ram']:>8,} B  exact {row['exact']}", flush=True)
    text = table(rows)
    print(text)
    if args.write:
        command = "python benchmarks/mcu_bench.py --write"
        DOC.write_text(
            "# Microcontroller benchmarks: int8 models on emulated Cortex-M\n\n"
            f"Generated by `{command}` on {datetime.date.today().isoformat()} ({tool_versions()}; "
            "model code `-O2`, `-icount shift=5`). What each column means is in the script's docstring: "
            "instructions are executed instructions per inference under QEMU (deterministic, not silicon "
            "cycles); code is `model.o` `.text` without weights; flash and RAM are the whole linked test "
            "image (harness and newlib included; RAM = arena + 16 KiB stack + the harness's input and "
            "output buffers + static data).\n\n" + text)
        print(f"wrote {DOC.relative_to(ROOT)}")
    return 0 if all(r["exact"] and not r["float_ops"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

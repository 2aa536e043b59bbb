"""Host model suite: Kiln vs ONNX Runtime on the CPU, in one interleaved run.

    python benchmarks/host_models.py                  # full sizes, 10 repeats
    python benchmarks/host_models.py --quick          # small shapes, a smoke run
    python benchmarks/host_models.py --models resnet18,bert --repeats 20 --write

Models come from examples/models.py (built here, nothing downloaded). Each is compiled with
``kiln.compile(target="host")`` (compile time recorded), then Kiln and ONNX Runtime
(intra_op_num_threads=2, ORT_ENABLE_ALL) are timed alternately, one run of each per repeat,
after ``--warmup`` runs of each (``--pause-ms`` adds idle time before each timed run); the
table shows medians. Both engines use 2 threads: on a 2-core machine any other busy process
makes the timings meaningless (an OpenMP barrier waits for a descheduled thread), so the
script warns when the load average is above 0.5 at the start. Kiln runs with OMP_NUM_THREADS=2.
"max rel err" is max |kiln - ort| / max |ort| over all outputs.

``--write`` also writes the table to docs/benchmarks/host_models.md.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "2")  # before kiln (and its OpenMP runtime) load

import argparse  # noqa: E402
import datetime  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))
sys.path.insert(0, str(ROOT))

import models as M  # noqa: E402

ORT_THREADS = 2
OUT_FILE = ROOT / "docs" / "benchmarks" / "host_models.md"


@dataclass
class Spec:
    name: str
    description: str
    build: object  # () -> onnx.ModelProto


def suite(quick: bool, bert_layers: int, gpt_layers: int) -> dict[str, Spec]:
    if quick:
        return {
            "resnet18": Spec("resnet18", "ResNet-18-style, 64x64, width 16",
                             lambda: M.resnet_style(18, image=64, width=16)),
            "mobilenetv2": Spec("mobilenetv2", "MobileNetV2-style, 64x64, width 0.5",
                                lambda: M.mobilenetv2_style(image=64, width_mult=0.5)),
            "bert": Spec("bert", f"BERT encoder, {bert_layers} layers, hidden 128, seq 32",
                         lambda: M.bert_encoder(bert_layers, hidden=128, heads=4, seq=32, ffn=512)),
            "gpt": Spec("gpt", f"GPT decoder, {gpt_layers} layers, hidden 128, seq 32",
                        lambda: M.gpt_decoder(gpt_layers, hidden=128, heads=4, seq=32)),
        }
    return {
        "resnet18": Spec("resnet18", "ResNet-18-style, 1x3x224x224",
                         lambda: M.resnet_style(18, image=224)),
        "mobilenetv2": Spec("mobilenetv2", "MobileNetV2-style, 1x3x224x224",
                            lambda: M.mobilenetv2_style(image=224)),
        "bert": Spec("bert", f"BERT-base-like encoder, {bert_layers} layers, hidden 768, 12 heads, "
                             "ffn 3072, seq 128",
                     lambda: M.bert_encoder(bert_layers, hidden=768, heads=12, seq=128, ffn=3072)),
        "gpt": Spec("gpt", f"GPT-style decoder, {gpt_layers} layers, hidden 768, 12 heads, seq 128, "
                           "vocab 256",
                    lambda: M.gpt_decoder(gpt_layers, hidden=768, heads=12, seq=128)),
    }


@dataclass
class Row:
    model: str
    description: str
    kiln_ms: float | None = None
    ort_ms: float | None = None
    compile_s: float | None = None
    max_rel_err: float | None = None
    error: str | None = None


def ort_session(model):
    """The same ONNX Runtime set-up as the workload suite (kiln/bench/peers.py): no spinning."""
    from kiln.bench import ort_session as suite_session

    return suite_session(model, threads=ORT_THREADS)


def max_rel_err(got: dict, want: dict) -> float:
    worst = 0.0
    for name, w in want.items():
        g = np.asarray(got[name], dtype=np.float64)
        if g.shape != w.shape:
            raise AssertionError(f"output {name!r}: kiln shape {g.shape} != onnxruntime {w.shape}")
        scale = max(float(np.max(np.abs(w))), 1e-30)
        worst = max(worst, float(np.max(np.abs(g - w))) / scale)
    return worst


def bench_one(spec: Spec, repeats: int, warmup: int, verbose: bool, pause_ms: float = 0.0) -> Row:
    import kiln

    row = Row(spec.name, spec.description)
    model = spec.build()
    inputs = M.example_inputs(model, seed=0)
    sess = ort_session(model)
    names = [o.name for o in sess.get_outputs()]

    t0 = time.perf_counter()
    try:
        compiled = kiln.compile(model, target="host")
        build = getattr(compiled, "build", None)
        if callable(build):  # the C build is part of compiling
            build()
        row.compile_s = time.perf_counter() - t0
        got = compiled.run(inputs)
    except Exception as e:  # one model failing must not lose the others' results
        row.error = _describe(e)
        if verbose:
            traceback.print_exc()
        return row

    want = dict(zip(names, sess.run(names, inputs)))
    row.max_rel_err = max_rel_err(got, want)

    def kiln_call():
        compiled.run(inputs)

    def ort_call():
        sess.run(names, inputs)

    for _ in range(warmup):
        kiln_call()
        ort_call()
    kiln_t, ort_t = [], []
    pause = pause_ms / 1e3
    for _ in range(repeats):  # interleaved, so drift in machine load hits both alike
        if pause:
            time.sleep(pause)  # let the other engine's spinning thread pool go idle first
        t = time.perf_counter()
        kiln_call()
        kiln_t.append(time.perf_counter() - t)
        if pause:
            time.sleep(pause)
        t = time.perf_counter()
        ort_call()
        ort_t.append(time.perf_counter() - t)
    row.kiln_ms = statistics.median(kiln_t) * 1e3
    row.ort_ms = statistics.median(ort_t) * 1e3
    return row


def _describe(e: Exception) -> str:
    if getattr(e, "unsupported", None):  # UnsupportedOperatorError
        return f"{type(e).__name__}: " + ", ".join(op for op, _, _ in e.unsupported)
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: " + (text[:300] + " ..." if len(text) > 300 else text)


def _fmt(v: float | None, spec: str) -> str:
    return "—" if v is None else format(v, spec)


def _ms(v: float | None) -> str:
    return _fmt(v, ".3f" if v is not None and v < 10 else ".1f")


def table(rows: list[Row]) -> str:
    lines = ["| model | kiln ms | ort ms | ratio ort/kiln | compile s | max rel err |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        ratio = r.ort_ms / r.kiln_ms if r.kiln_ms and r.ort_ms else None
        lines.append(f"| {r.model} | {_ms(r.kiln_ms)} | {_ms(r.ort_ms)} | "
                     f"{_fmt(ratio, '.2f')} | {_fmt(r.compile_s, '.1f')} | {_fmt(r.max_rel_err, '.1e')} |")
    return "\n".join(lines)


def environment(args) -> str:
    import onnxruntime as ort

    import kiln

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{datetime.date.today().isoformat()}, {cpu}, {os.cpu_count()} logical CPUs; "
            f"kiln {getattr(kiln, '__version__', '?')} (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}), "
            f"onnxruntime {ort.__version__} (intra_op_num_threads={ORT_THREADS}, ORT_ENABLE_ALL); "
            f"median of {args.repeats} interleaved runs after {args.warmup} warm-up runs"
            + (f", {args.pause_ms:g} ms pause before each" if args.pause_ms else "")
            + (f"; load average {_load():.2f} at the start" if _load() is not None else "")
            + ("; --quick sizes" if args.quick else ""))


_START_LOAD: list = []


def _load() -> float | None:
    """The 1-minute load average when the run started."""
    if not _START_LOAD:
        try:
            _START_LOAD.append(os.getloadavg()[0])
        except OSError:
            _START_LOAD.append(None)
    return _START_LOAD[0]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="resnet18,mobilenetv2,bert,gpt",
                   help="comma-separated subset of: resnet18, mobilenetv2, bert, gpt")
    p.add_argument("--repeats", type=int, default=10, help="timed runs of each engine (median)")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs of each engine first")
    p.add_argument("--pause-ms", type=float, default=0.0,
                   help="idle time before each timed run, to let one engine's spinning worker "
                        "threads go idle before the other runs (default 0)")
    p.add_argument("--quick", action="store_true", help="small shapes: a smoke run in seconds")
    p.add_argument("--bert-layers", type=int, default=2, help="encoder layers of the BERT model (BERT-base has 12)")
    p.add_argument("--gpt-layers", type=int, default=2, help="decoder layers of the GPT model")
    p.add_argument("--write", action="store_true", help=f"write the table to {OUT_FILE.relative_to(ROOT)}")
    p.add_argument("-v", "--verbose", action="store_true", help="print tracebacks of failed compiles")
    args = p.parse_args(argv)

    specs = suite(args.quick, args.bert_layers, args.gpt_layers)
    wanted = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in wanted if m not in specs]
    if unknown:
        p.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(specs)}")

    load = _load()
    if load is not None and load > 0.5:
        print(f"warning: load average is {load:.2f}: other processes are running, and the "
              "timings will be noisy", file=sys.stderr)
    rows = []
    for name in wanted:
        print(f"[{name}] {specs[name].description} ...", file=sys.stderr, flush=True)
        row = bench_one(specs[name], args.repeats, args.warmup, args.verbose, args.pause_ms)
        rows.append(row)
        print(f"[{name}] " + (f"failed: {row.error}" if row.error else
                              f"kiln {row.kiln_ms:.2f} ms, ort {row.ort_ms:.2f} ms, "
                              f"compile {row.compile_s:.1f} s, max rel err {row.max_rel_err:.1e}"),
              file=sys.stderr, flush=True)

    text = table(rows)
    failures = [r for r in rows if r.error]
    notes = "\n".join(f"- {r.model}: Kiln failed: {r.error}" for r in failures)
    print(text)
    if notes:
        print("\n" + notes)
    if args.write:
        OUT_FILE.parent.mkdir(parents=True, exist_ok=True)
        models = "\n".join(f"- {r.model}: {r.description}" for r in rows)
        OUT_FILE.write_text(
            "# Host model suite: Kiln vs ONNX Runtime\n\n"
            f"Generated by `python benchmarks/host_models.py{' --quick' if args.quick else ''}`"
            f" ({environment(args)}).\n\n"
            f"{models}\n\n{text}\n" + (f"\n{notes}\n" if notes else ""))
        print(f"\nwrote {OUT_FILE.relative_to(ROOT)}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

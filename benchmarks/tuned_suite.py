"""Tuned host fp32 against ONNX Runtime: the model suite after ``kiln tune``.

    python benchmarks/tuned_suite.py --trials 256 --write      # docs/benchmarks/tuned_suite.md
    python benchmarks/tuned_suite.py --models resnet18 --trials 64 --db /tmp/tuning
    python benchmarks/tuned_suite.py --quick                   # tiny sizes, 8 trials: a smoke run

Issue 5 asks for the model suite's geometric mean to be at least 1.25x faster than ONNX
Runtime once tuned. Each model of the suite's ``models`` group (benchmarks/workloads.py:
ResNet-18 and MobileNetV2 at 224x224, BERT and GPT with 2 layers at sequence 128) is tuned
with ``kiln.tune(model, trials=N, db=DIR)`` -- the tuner resumes, so trials already in DIR
count -- and then timed by the suite's harness (``kiln.bench``) side by side: Kiln with the
tuned records, Kiln untuned (the default rules), Kiln untuned with direct 3x3 convolutions
(``host:-winograd``) and ONNX Runtime, 2 threads each,
interleaved rounds, outputs checked against ONNX Runtime. Ratios above 1: Kiln is faster.

Tuning measures kernels: run it on a quiet machine (check the load average first).
"""
from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "2")

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import workloads as W  # noqa: E402
from kiln import bench as B  # noqa: E402

OUT_MD = ROOT / "docs" / "benchmarks" / "tuned_suite.md"
TARGET_RATIO = 1.25


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="models", help="suite workload names or groups (default: models)")
    p.add_argument("--trials", type=int, default=256, help="tuning trials per model (spread over its tasks)")
    p.add_argument("--db", type=Path, default=ROOT / "tuning" / "suite", help="tuning database directory")
    p.add_argument("--batch-size", type=int, default=16, help="candidates measured per tuning round")
    p.add_argument("--repeats", type=int, default=10, help="timed rounds (samples per peer; median)")
    p.add_argument("--layers", type=int, default=2, help="layers of the BERT and GPT models")
    p.add_argument("--quick", action="store_true", help="tiny sizes and 8 trials: a smoke run")
    p.add_argument("--write", action="store_true", help=f"write {OUT_MD.relative_to(ROOT)}")
    p.add_argument("--out", type=Path, default=OUT_MD, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.trials = min(args.trials, 8)
    return args


def tune_model(workload, trials: int, db: Path, batch_size: int, log) -> tuple[int, int, float]:
    """``kiln.tune`` into ``db``: (tasks, tasks that got trials, seconds)."""
    import kiln

    t0 = time.perf_counter()
    result = kiln.tune(workload.model(), "host", trials=trials, db=str(db), batch_size=batch_size)
    seconds = time.perf_counter() - t0
    tuned = sum(1 for t in result.tasks if t["trials"])
    log(f"[{workload.name}] tuned: {trials} trials over {tuned} of {len(result.tasks)} tasks, {seconds:.0f} s")
    return len(result.tasks), tuned, seconds


def geomean(values: list[float]) -> float | None:
    import math

    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else None


def ratios(rows: list[B.Row]) -> dict[str, dict[str, float]]:
    """Per workload: ORT / tuned Kiln, ORT / untuned Kiln, untuned / tuned (medians of rows
    that answered correctly)."""
    out: dict[str, dict[str, float]] = {}
    for name in dict.fromkeys(r.workload for r in rows):
        med = {r.peer: r.median_ms for r in rows if r.workload == name and r.ok}
        if {"kiln", "ort"} <= med.keys():
            out[name] = {"ort/tuned": med["ort"] / med["kiln"]}
            if "kiln-untuned" in med:
                out[name].update({"ort/untuned": med["ort"] / med["kiln-untuned"],
                                  "untuned/tuned": med["kiln-untuned"] / med["kiln"]})
            if "kiln-direct" in med:
                out[name]["ort/direct"] = med["ort"] / med["kiln-direct"]
    return out


def summary(by_model: dict[str, dict[str, float]]) -> list[str]:
    lines = []
    for key, label in (("ort/tuned", "ONNX Runtime / tuned Kiln"), ("ort/untuned", "ONNX Runtime / untuned Kiln"),
                       ("untuned/tuned", "untuned / tuned Kiln"),
                       ("ort/direct", "ONNX Runtime / untuned Kiln with direct 3x3 convolutions")):
        g = geomean([v[key] for v in by_model.values() if key in v])
        if g is not None:
            lines.append(f"geometric mean {label}: {g:.2f}")
    g = geomean([v["ort/tuned"] for v in by_model.values()])
    if g is not None:
        lines.append(f"issue 5 target (tuned suite >= {TARGET_RATIO}x ONNX Runtime): "
                     f"{'met' if g >= TARGET_RATIO else 'not met'}")
    return lines


def write_markdown(path: Path, argv, rows, tuning, loads, db: Path) -> None:
    by_model = ratios(rows)
    lines = B.report_header("Tuned model suite: Kiln after `kiln tune` against ONNX Runtime",
                            "benchmarks/tuned_suite.py", "its docstring says how it tunes and times", loads)
    lines += ["- Peers: " + "; ".join(p.version() for p in _peers(db)),
              f"- Command: `python benchmarks/tuned_suite.py {' '.join(argv)}`".rstrip(), "",
              "## Tuning", "", "| model | trials | tasks tuned / extracted | tuning time |", "|---|---:|---:|---:|"]
    lines += [f"| {name} | {trials} | {tuned} / {tasks} | {sec / 60:.1f} min |"
              for name, (trials, tasks, tuned, sec) in tuning.items()]
    lines += ["", "## Results", "", B.markdown_table(rows), "", "| model | ORT / tuned | ORT / untuned | "
              "untuned / tuned | ORT / untuned direct |", "|---|---:|---:|---:|---:|"]
    for name, r in by_model.items():
        cells = [f"{r[k]:.2f}" if k in r else "—" for k in ("ort/tuned", "ort/untuned", "untuned/tuned", "ort/direct")]
        lines.append(f"| {name} | {' | '.join(cells)} |")
    lines += ["", "## Summary", "", *[f"- {line}" for line in summary(by_model)], ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))


def _peers(db: Path) -> list:
    # kiln-direct: untuned with every 3x3 convolution direct (no Winograd), the rules before it
    return [B.KilnPeer("host", db=db), B.KilnPeer("host", name="kiln-untuned"),
            B.KilnPeer("host:-winograd", name="kiln-direct"), B.OrtPeer()]


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    log = B.log_stderr
    try:
        workloads = W.select(W.suite(args.quick, args.layers), args.models)
    except (ValueError, B.KilnError) as e:
        log(f"tuned_suite.py: error: {e}")
        return 2
    loads = [B.starting_load(log)]
    tuning, rows = {}, []
    for w in workloads:
        tasks, tuned, sec = tune_model(w, args.trials, args.db, args.batch_size, log)
        tuning[w.name] = (args.trials, tasks, tuned, sec)
        rows += B.bench_workload(w, _peers(args.db), B.Options(repeats=args.repeats), log)
    loads.append(B.load_average())
    print(B.markdown_table(rows))
    print("\n".join(summary(ratios(rows))))
    if args.write:
        write_markdown(args.out, argv, rows, tuning, loads, args.db)
        log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

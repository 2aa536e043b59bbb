"""Search-in-the-loop curves: best latency against trials for several cost models and seeds.

    python benchmarks/cost_models/search_curves.py --workload gemm --size 1024 --trials 512 --seeds 3
    python benchmarks/cost_models/search_curves.py --workload resnet18 --tasks 4 --trials 256 --seeds 3

Methods: ``xgb`` (evolutionary search + XGBModel), ``random-model`` (evolutionary search
+ RandomModel), ``random-search`` (pure random sampling), and any ``pkg.mod:Class``.
Each run tunes one task alone into a fresh database. For every task the script reports
the trials each run needed to reach 95 % of the best latency any run found (latency <=
best / 0.95), the median over seeds per method, and the ratio of XGB's median to pure
random search's (the acceptance criterion asks for <= 0.25). Writes ``OUT/curves.json``,
``OUT/curves.png`` and ``OUT/summary.md``.

Timing-sensitive: run it on a quiet machine (check the load average first).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "examples")]

from kiln.autotune.database import Database  # noqa: E402
from kiln.autotune.measure import MeasureOptions  # noqa: E402
from kiln.autotune.tasks import extract_tasks  # noqa: E402
from kiln.autotune.tuner import tune  # noqa: E402

METHODS = {"xgb": ("xgb", "evolutionary"), "random-model": ("random", "evolutionary"),
           "random-search": ("random", "random")}


def gemm_model(n: int):
    from onnx import helper

    from tests.util import make_model

    w = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    return make_model([helper.make_node("MatMul", ["x", "w"], ["y"])], [("x", np.float32, (n, n))],
                      [("y", np.float32, (n, n))], [("w", w)])


def workload_tasks(args):
    if args.workload == "gemm":
        return extract_tasks(gemm_model(args.size))
    from models import resnet_style

    tasks = [t for t in extract_tasks(resnet_style(18, image=args.size)) if "conv" in t.desc]
    return tasks[: args.tasks]


def best_so_far(db_dir: Path, key: str) -> list[float]:
    records = Database(db_dir).records(key, "host")
    curve, best = [], float("inf")
    for r in sorted(records, key=lambda r: r.get("time", 0)):
        if r["latency"] is not None:
            best = min(best, r["latency"])
        curve.append(best)
    return curve


def trials_to_reach(curve: list[float], goal: float) -> int | None:
    return next((i + 1 for i, v in enumerate(curve) if v <= goal), None)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workload", choices=["gemm", "resnet18"], default="gemm")
    p.add_argument("--size", type=int, default=1024, help="GEMM size, or ResNet image size")
    p.add_argument("--tasks", type=int, default=4, help="ResNet-18: the heaviest N convolution tasks")
    p.add_argument("--trials", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--methods", default="xgb,random-model,random-search")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=str(ROOT / "docs" / "benchmarks" / "cost_models"))
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    methods = args.methods.split(",")
    print(f"load average at start: {os.getloadavg()[0]:.2f}", file=sys.stderr)
    curves: dict = {}
    for task in workload_tasks(args):
        curves[task.name] = {}
        for method in methods:
            model, search = METHODS.get(method, (method, "evolutionary"))
            runs = []
            for seed in range(args.seeds):
                with tempfile.TemporaryDirectory() as tmp:
                    tune(None, trials=args.trials, db=tmp, cost_model=model, search=search, seed=seed,
                         batch_size=args.batch_size, tasks=[task],
                         measure=MeasureOptions(repeats=args.repeats))
                    runs.append(best_so_far(Path(tmp), task.key))
                print(f"{task.name} {method} seed {seed}: best {runs[-1][-1] * 1e3:.4f} ms", file=sys.stderr)
            curves[task.name][method] = runs
    lines = ["| task | method | median trials to 95 % of best | ratio to random search |", "|---|---|---:|---:|"]
    summary = {}
    for name, by_method in curves.items():
        best = min(min(c) for runs in by_method.values() for c in runs)
        med = {}
        for method, runs in by_method.items():
            reach = [trials_to_reach(c, best / 0.95) or args.trials * 2 for c in runs]  # never: 2x budget
            med[method] = statistics.median(reach)
        summary[name] = med
        for method, m in med.items():
            ratio = m / med["random-search"] if "random-search" in med else float("nan")
            lines.append(f"| {name} | {method} | {m:g} | {ratio:.2f} |")
    (out / "curves.json").write_text(json.dumps({"args": vars(args), "curves": curves, "summary": summary}))
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    plot(curves, out / "curves.png")
    print("\n".join(lines))


def plot(curves, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(5 * len(curves), 4), squeeze=False)
    for ax, (name, by_method) in zip(axes[0], curves.items()):
        for method, runs in by_method.items():
            n = min(len(c) for c in runs)
            med = np.median(np.array([c[:n] for c in runs]), axis=0) * 1e3
            ax.plot(np.arange(1, n + 1), med, label=method)
        ax.set_title(name, fontsize=8)
        ax.set_xlabel("trials")
        ax.set_ylabel("best latency (ms), median of seeds")
        ax.set_yscale("log")  # the first random candidates are 40x slower than the best
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()

"""Search-in-the-loop curves: best latency against trials for several cost models and seeds.

    python benchmarks/cost_models/search_curves.py --workload gemm --size 1024 --trials 256 --seeds 3
    python benchmarks/cost_models/search_curves.py --workload resnet18 --tasks 2 --trials 128 --seeds 3

Methods: ``xgb`` (evolutionary search + XGBModel; its first trial is the default rules'
schedule), ``xgb-no-default`` (the same without that trial), ``random-model``
(evolutionary search + RandomModel), ``random-search`` (pure random sampling),
``xgb-pretrained`` (XGB starting from a model trained on *other* tasks, see
``--pretrain``), and any ``pkg.mod:Class``. Each run tunes one task alone into a fresh
database.

Noise: one timing of a kernel on a shared VM can be 10 % off, so a curve is not made of
the tuner's own timings. For every run and trial, the candidate the run holds as its best
(what ``kiln compile --db`` would apply) is noted; afterwards all these candidates of all
runs of a task are re-timed together in ``--retime-rounds`` interleaved rounds, and the
curve at trial i is the re-timed median of the run's best after i trials. The best
latency "any method found" is the fastest re-timed candidate. For every task the script
reports the trials each run needed to come within 95 % of it (latency <= best / 0.95),
the median over seeds per method, and the ratio of XGB's median to pure random search's
(the acceptance criterion asks for <= 0.25). The tuner's own timings are kept as
``raw`` curves. Writes ``OUT/curves.json``, ``OUT/curves.png`` and ``OUT/summary.md``.

Timing-sensitive: run it on a quiet machine (check the load average first).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "examples")]

from kiln.autotune.database import Database  # noqa: E402
from kiln.autotune.measure import MeasureOptions, Measurer  # noqa: E402
from kiln.autotune.space import apply_trace, canonical  # noqa: E402
from kiln.autotune.tasks import extract_tasks  # noqa: E402
from kiln.autotune.tuner import tune  # noqa: E402

# method -> (cost model, search, extra tune() arguments)
METHODS = {"xgb": ("xgb", "evolutionary", {}),
           "xgb-no-default": ("xgb", "evolutionary", {"default_first": False}),
           "random-model": ("random", "evolutionary", {}),
           "random-search": ("random", "random", {})}


def gemm_model(n: int):
    from onnx import helper

    from tests.util import make_model

    w = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    return make_model([helper.make_node("MatMul", ["x", "w"], ["y"])], [("x", np.float32, (n, n))],
                      [("y", np.float32, (n, n))], [("w", w)])


def resnet_conv_tasks(size: int):
    """ResNet-18's direct convolution tasks (``host:-winograd``: with Winograd its 3x3
    stride-1 convs become transform kernels around batched GEMMs, other tasks)."""
    from models import resnet_style

    return [t for t in extract_tasks(resnet_style(18, image=size), "host:-winograd") if "conv" in t.desc]


def workload_tasks(args):
    if args.workload == "gemm":
        return extract_tasks(gemm_model(args.size))
    return resnet_conv_tasks(args.size)[: args.tasks]


def pretraining_tasks(args, measured) -> list:
    """Tasks of the same kind as the measured ones, never one of them: other GEMM sizes, or
    the ResNet-18 convolutions after the measured ones."""
    keys = {t.key for t in measured}
    if args.workload == "gemm":
        sizes = [args.size // 2, args.size * 3 // 4]
        tasks = [t for n in sizes for t in extract_tasks(gemm_model(n))]
    else:
        tasks = resnet_conv_tasks(args.size)[args.tasks: args.tasks + 2]
    return [t for t in tasks if t.key not in keys]


def pretrain(args, measured, out: Path) -> Path:
    """An XGB model fitted on random-search records of other tasks, saved as OUT/pretrained.json."""
    others = pretraining_tasks(args, measured)
    if not others:
        raise SystemExit("no other tasks to pretrain on")
    with tempfile.TemporaryDirectory() as tmp:
        tune(None, trials=args.pretrain * len(others), db=tmp, cost_model="xgb", search="random", seed=1000,
             batch_size=args.batch_size, tasks=others, measure=MeasureOptions(repeats=args.repeats), verify_top=0)
        path = out / "pretrained.json"
        path.write_bytes((Path(tmp) / "cost_model.json").read_bytes())
    print(f"pretrained on {', '.join(t.name for t in others)} ({args.pretrain} trials each): {path}",
          file=sys.stderr)
    return path


def best_so_far(db_dir: Path, key: str) -> tuple[list[float], list[dict]]:
    """The run's own best latency after each trial, and the record it holds as best then."""
    records = Database(db_dir).records(key, "host")
    curve, holders, best, holder = [], [], float("inf"), None
    for r in sorted(records, key=lambda r: r.get("time", 0)):  # stable: a batch keeps its order
        if r["latency"] is not None and r["latency"] < best:
            best, holder = r["latency"], {"decisions": r["decisions"], "trace": r["trace"]}
        curve.append(best)
        holders.append(holder)
    return curve, holders


def trials_to_reach(curve: list[float], goal: float) -> int | None:
    return next((i + 1 for i, v in enumerate(curve) if v <= goal), None)


def retime_holders(task, runs_holders: list[list[dict | None]], rounds: int, repeats: int) -> dict[str, dict]:
    """Every candidate some run held as its best, timed together in interleaved rounds."""
    unique: dict[str, dict] = {}
    for holders in runs_holders:
        for h in holders:
            if h is not None:
                unique.setdefault(canonical(h["decisions"]), h)
    keys = list(unique)
    with Measurer(MeasureOptions(repeats=repeats)) as m:
        results = m.retime(task, [apply_trace(task.func, unique[k]["trace"]) for k in keys], rounds=rounds)
    return {k: {"latency": r.latency, "runs": r.runs, "error": r.error} for k, r in zip(keys, results)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workload", choices=["gemm", "resnet18"], default="gemm")
    p.add_argument("--size", type=int, default=None, help="GEMM size (default 1024), or ResNet image size (224)")
    p.add_argument("--tasks", type=int, default=4, help="ResNet-18: the heaviest N convolution tasks")
    p.add_argument("--trials", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--methods", default="xgb,random-model,random-search")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--retime-rounds", type=int, default=5,
                   help="interleaved rounds re-timing every run's best candidates (0: curves from the tuner's timings)")
    p.add_argument("--pretrain", type=int, default=0, metavar="TRIALS",
                   help="for method xgb-pretrained: random-search trials per other task to pretrain on")
    p.add_argument("--out", default=str(ROOT / "docs" / "benchmarks" / "cost_models"))
    args = p.parse_args(argv)
    if args.size is None:
        args.size = 1024 if args.workload == "gemm" else 224
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    methods = args.methods.split(",")
    started = time.time()
    load = os.getloadavg()[0]
    print(f"load average at start: {load:.2f}", file=sys.stderr)
    tasks = workload_tasks(args)
    methods_def = dict(METHODS)
    if "xgb-pretrained" in methods:
        if args.pretrain <= 0:
            raise SystemExit("method xgb-pretrained needs --pretrain TRIALS")
        methods_def["xgb-pretrained"] = (f"xgb:{pretrain(args, tasks, out)}", "evolutionary", {})
    raw: dict = {}
    curves: dict = {}
    retimed: dict = {}
    for task in tasks:
        raw[task.name], holders = {}, {}
        for method in methods:
            model, search, extra = methods_def.get(method, (method, "evolutionary", {}))
            runs, run_holders = [], []
            for seed in range(args.seeds):
                with tempfile.TemporaryDirectory() as tmp:
                    tune(None, trials=args.trials, db=tmp, cost_model=model, search=search, seed=seed,
                         batch_size=args.batch_size, tasks=[task], measure=MeasureOptions(repeats=args.repeats),
                         verify_top=0, **extra)  # the curve is the search's: no final re-timing
                    curve, held = best_so_far(Path(tmp), task.key)
                runs.append(curve)
                run_holders.append(held)
                print(f"{task.name} {method} seed {seed}: best {curve[-1] * 1e3:.4f} ms "
                      f"({time.time() - started:.0f} s)", file=sys.stderr)
            raw[task.name][method], holders[method] = runs, run_holders
        if args.retime_rounds > 0:
            times = retime_holders(task, [h for hs in holders.values() for h in hs], args.retime_rounds, args.repeats)
            retimed[task.name] = times
            lat = {k: v["latency"] if v["latency"] is not None else float("inf") for k, v in times.items()}
            curves[task.name] = {m: [[lat[canonical(h["decisions"])] if h else float("inf") for h in hs]
                                     for hs in run_holders] for m, run_holders in holders.items()}
            print(f"{task.name}: re-timed {len(times)} candidates ({time.time() - started:.0f} s)", file=sys.stderr)
        else:
            curves[task.name] = raw[task.name]
    summary, lines = summarize(curves, raw, args.trials)
    meta = {"args": vars(args), "load_at_start": load, "minutes": (time.time() - started) / 60,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started))}
    (out / "curves.json").write_text(json.dumps({**meta, "curves": curves, "raw_curves": raw, "retimed": retimed,
                                                 "summary": summary}))
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    plot(curves, out / "curves.png")
    print("\n".join(lines))


def summarize(curves: dict, raw: dict, trials: int) -> tuple[dict, list[str]]:
    """Per task and method: trials each seed needs to reach 95 % of the best any run found
    (re-timed), their median ("never" counts as twice the budget), and the ratio to random search."""
    lines = ["| task | method | trials to 95 % of best, per seed | median | ratio to random search "
             "| final best, median of seeds (ms) | (tuner's own timings: median trials) |",
             "|---|---|---|---:|---:|---:|---:|"]
    summary = {}
    for name, by_method in curves.items():
        best = min(min(c) for runs in by_method.values() for c in runs)
        raw_best = min(min(c) for runs in raw[name].values() for c in runs)
        med, per_seed = {}, {}
        for method, runs in by_method.items():
            reach = [trials_to_reach(c, best / 0.95) for c in runs]
            per_seed[method] = reach
            med[method] = statistics.median(r or trials * 2 for r in reach)  # never: 2x budget
        raw_med = {m: statistics.median(trials_to_reach(c, raw_best / 0.95) or trials * 2 for c in runs)
                   for m, runs in raw[name].items()}
        summary[name] = {"best": best, "median_trials": med, "per_seed": per_seed, "raw_best": raw_best,
                         "raw_median_trials": raw_med}
        for method, m in med.items():
            ratio = m / med["random-search"] if "random-search" in med else float("nan")
            seeds = ", ".join(str(r) if r else "never" for r in per_seed[method])
            final = statistics.median(c[-1] for c in by_method[method]) * 1e3
            lines.append(f"| {name} | {method} | {seeds} | {m:g} | {ratio:.2f} | {final:.3f} | {raw_med[method]:g} |")
        lines.append(f"| {name} | best of all runs (re-timed) | | | | {best * 1e3:.3f} | |")
    return summary, lines


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
        ax.set_ylabel("best latency (ms, re-timed), median of seeds")
        ax.set_yscale("log")  # the first random candidates are 40x slower than the best
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()

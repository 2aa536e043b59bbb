"""Offline cost-model evaluation on measured records: pairwise accuracy, Kendall tau, top-k, a-peak@k.

    python benchmarks/cost_models/offline_eval.py --db tuning/ --model resnet18 --split within-task
    python benchmarks/cost_models/offline_eval.py --dataset data.npz --models xgb,random,pkg.mod:Class

``--db`` directories must hold records of the named example models (``kiln tune``); the
script exports them (with features) to ``--export`` when given, then fits each cost model
on the train split and scores the test split. No timing happens here: the numbers depend
only on the records.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "examples")]

from kiln.autotune.cost_model import load_cost_model  # noqa: E402
from kiln.autotune.dataset import SPLITS, Dataset, evaluate  # noqa: E402


def example_model(name: str):
    import models

    builders = {"resnet18": lambda: models.resnet_style(18, image=224), "small_cnn": models.small_cnn,
                "mobilenetv2": lambda: models.mobilenetv2_style(image=224), "bert": models.bert_encoder,
                "gpt": models.gpt_decoder}
    return builders[name]()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--db", action="append", default=[], help="tuning database (repeatable)")
    p.add_argument("--model", action="append", default=[], help="example model the databases tuned (repeatable)")
    p.add_argument("--dataset", help="a dataset exported before (.npz)")
    p.add_argument("--export", help="write the dataset built from --db here (.npz)")
    p.add_argument("--split", choices=SPLITS, default="within-task")
    p.add_argument("--holdout", help="by-model split: the model to hold out")
    p.add_argument("--models", default="xgb,random")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.dataset:
        ds = Dataset.load(args.dataset)
    else:
        ds = Dataset.from_databases({m: example_model(m) for m in args.model}, args.db)
        if args.export:
            ds.export(args.export)
    train, test = ds.split(args.split, seed=args.seed, holdout=args.holdout)
    print(f"{len(ds)} candidates in {len(ds.tasks)} tasks; train {len(train)}, test {len(test)} ({args.split})")
    cols = ["pairwise_accuracy", "kendall_tau", "top1", "top5", "a-peak@1", "a-peak@5"]
    print("| model | " + " | ".join(cols) + " |\n|---|" + "---:|" * len(cols))
    for spec in args.models.split(","):
        scores = evaluate(load_cost_model(spec, seed=args.seed), train, test)
        print(f"| {spec} | " + " | ".join(f"{scores[c]:.3f}" for c in cols) + " |")


if __name__ == "__main__":
    main()

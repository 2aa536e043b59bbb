"""The research kit: datasets of measured schedules with features, splits and offline metrics.

A ``Dataset`` holds, for each task, its measured candidates (feature matrices, decisions,
traces) and their latencies (None: failed). Build one from tuning databases and the
models they were tuned for (``Dataset.from_databases``), save it as one ``.npz`` plus a
JSON header (``export`` / ``Dataset.load``: plain arrays, no pickle), split it the fixed
ways cost-model papers use, and score any ``CostModel`` offline:

- ``split("within-task")``: a seeded random 20 % of each task's candidates is the test set;
- ``split("by-task")``: whole tasks held out (chosen by their hash: stable across runs);
- ``split("by-model", holdout="resnet18")``: every task of one model held out.

Metrics, per test task, then averaged over tasks (TenSet and TLP define them alike):
- pairwise accuracy: the fraction of candidate pairs with different latencies that the
  predicted scores order correctly;
- Kendall's tau between scores and throughput;
- top-k score: best throughput among the k best-scored candidates / best throughput of the task;
- a-peak@k: the end-to-end version, sum of weight x best latency over sum of weight x
  latency of the best of the top k -- 1.0 means the model's k picks contain every task's peak.
"""
from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kiln.autotune.features import FEATURE_NAMES, FEATURE_VERSION
from kiln.errors import TuningError

SPLITS = ("within-task", "by-task", "by-model")


@dataclass
class TaskInfo:
    """What a cost model may know about a task offline."""

    key: str
    desc: str = ""
    flops: int = 0
    weight: int = 1
    model: str = ""

    @property
    def name(self) -> str:
        return f"{self.desc} [{self.key[:8]}]"


class FeatureCandidate:
    """A measured candidate as stored in a dataset: features, decisions, trace."""

    __slots__ = ("features", "decisions", "trace")

    def __init__(self, features: np.ndarray, decisions: dict, trace: list):
        self.features, self.decisions, self.trace = features, decisions, trace


@dataclass
class Dataset:
    tasks: list[TaskInfo] = field(default_factory=list)
    candidates: list[list[FeatureCandidate]] = field(default_factory=list)
    latencies: list[list[float | None]] = field(default_factory=list)

    def by_task(self):
        for t, c, lat in zip(self.tasks, self.candidates, self.latencies):
            yield t, c, lat

    def __len__(self) -> int:
        return sum(len(c) for c in self.candidates)

    # -- building -------------------------------------------------------------------------
    @classmethod
    def from_databases(cls, models: dict, databases, target: str = "host") -> "Dataset":
        """``models``: name -> model (what ``extract_tasks`` accepts); ``databases``: dirs."""
        from kiln.autotune.database import Database
        from kiln.autotune.space import Candidate, DesignSpace
        from kiln.autotune.tasks import extract_tasks

        dbs = [Database(d, create=False) for d in ([databases] if isinstance(databases, (str, Path)) else databases)]
        ds = cls()
        seen = set()
        for name, model in models.items():
            for task in extract_tasks(model, target):
                if task.key in seen:
                    continue
                seen.add(task.key)
                records = [r for db in dbs for r in db.records(task.key, task.target)]
                if not records:
                    continue
                space = DesignSpace(task.func, task.stages, task.caps)
                cands, lats = [], []
                for r in records:
                    try:
                        c = Candidate.of(space, r["decisions"])
                    except TuningError:
                        continue
                    cands.append(FeatureCandidate(c.features, r["decisions"], r["trace"]))
                    lats.append(r["latency"])
                ds.tasks.append(TaskInfo(task.key, task.desc, task.flops, task.weight, name))
                ds.candidates.append(cands)
                ds.latencies.append(lats)
        return ds

    # -- persistence ----------------------------------------------------------------------
    def export(self, path) -> Path:
        """``path``.npz (features, owners, latencies) and ``path``.json (tasks, decisions, traces)."""
        path = Path(path).with_suffix("")
        feats, owner, task_of, lat = [], [], [], []
        meta = {"feature_version": FEATURE_VERSION, "feature_names": FEATURE_NAMES, "tasks": [], "candidates": []}
        n = 0
        for ti, (t, cands, lats) in enumerate(self.by_task()):
            meta["tasks"].append(t.__dict__)
            for c, x in zip(cands, lats):
                feats.append(np.asarray(c.features, np.float32))
                owner += [n] * len(c.features)
                task_of.append(ti)
                lat.append(np.nan if x is None else x)
                meta["candidates"].append({"decisions": c.decisions, "trace": c.trace})
                n += 1
        np.savez_compressed(path.with_suffix(".npz"),
                            features=np.concatenate(feats) if feats else np.zeros((0, len(FEATURE_NAMES)), np.float32),
                            owner=np.asarray(owner, np.int64), task=np.asarray(task_of, np.int64),
                            latency=np.asarray(lat, np.float64))
        path.with_suffix(".json").write_text(json.dumps(meta))
        return path.with_suffix(".npz")

    @classmethod
    def load(cls, path) -> "Dataset":
        path = Path(path).with_suffix("")
        try:
            meta = json.loads(path.with_suffix(".json").read_text())
            arrays = np.load(path.with_suffix(".npz"), allow_pickle=False)
        except (OSError, ValueError) as e:
            raise TuningError(f"{path}.npz/.json is not a Kiln cost-model dataset: {e}") from None
        if meta.get("feature_version") != FEATURE_VERSION:
            raise TuningError(f"dataset features are {meta.get('feature_version')!r}; this Kiln extracts "
                              f"{FEATURE_VERSION!r}: export it again from the databases")
        ds = cls(tasks=[TaskInfo(**t) for t in meta["tasks"]])
        ds.candidates = [[] for _ in ds.tasks]
        ds.latencies = [[] for _ in ds.tasks]
        feats, owner = arrays["features"], arrays["owner"]
        bounds = np.searchsorted(owner, np.arange(len(arrays["task"]) + 1))
        for i, (ti, lat) in enumerate(zip(arrays["task"], arrays["latency"])):
            c = meta["candidates"][i]
            ds.candidates[ti].append(FeatureCandidate(feats[bounds[i]: bounds[i + 1]], c["decisions"], c["trace"]))
            ds.latencies[ti].append(None if np.isnan(lat) else float(lat))
        return ds

    # -- splits ---------------------------------------------------------------------------
    def split(self, kind: str = "within-task", seed: int = 0, test_fraction: float = 0.2,
              holdout: str | None = None) -> tuple["Dataset", "Dataset"]:
        if kind not in SPLITS:
            raise TuningError(f"unknown split {kind!r}; expected one of {', '.join(SPLITS)}")
        train, test = Dataset(), Dataset()
        if kind == "within-task":
            rng = random.Random(seed)
            for t, cands, lats in self.by_task():
                idx = list(range(len(cands)))
                rng.shuffle(idx)
                n_test = max(1, round(test_fraction * len(idx))) if len(idx) > 1 else 0
                for part, sel in ((test, idx[:n_test]), (train, idx[n_test:])):
                    if sel:
                        part.tasks.append(t)
                        part.candidates.append([cands[i] for i in sel])
                        part.latencies.append([lats[i] for i in sel])
            return train, test
        for t, cands, lats in self.by_task():
            if kind == "by-task":
                h = int(hashlib.sha256(f"{seed}:{t.key}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
                is_test = h < test_fraction
            else:
                if holdout is None:
                    raise TuningError("split('by-model') needs holdout=<model name>")
                is_test = t.model == holdout
            part = test if is_test else train
            part.tasks.append(t)
            part.candidates.append(cands)
            part.latencies.append(lats)
        return train, test


# -- metrics ---------------------------------------------------------------------------------

def pairwise_accuracy(scores, latencies) -> float:
    s, lat = _valid(scores, latencies)
    if len(s) < 2:
        return float("nan")
    i, j = np.triu_indices(len(s), 1)
    differ = lat[i] != lat[j]
    if not differ.any():
        return float("nan")
    right = (s[i] > s[j]) == (lat[i] < lat[j])
    return float(right[differ].mean())


def kendall_tau(scores, latencies) -> float:
    from scipy.stats import kendalltau

    s, lat = _valid(scores, latencies)
    if len(s) < 2:
        return float("nan")
    return float(kendalltau(s, -lat).statistic)


def top_k_score(scores, latencies, k: int) -> float:
    s, lat = _valid(scores, latencies)
    if not len(s):
        return float("nan")
    picks = np.argsort(-s)[:k]
    return float(lat.min() / lat[picks].min())


def _valid(scores, latencies):
    s = np.asarray(scores, np.float64)
    lat = np.array([np.nan if x is None else x for x in latencies], np.float64)
    ok = np.isfinite(lat)
    return s[ok], lat[ok]


def evaluate(model, train: Dataset, test: Dataset, ks=(1, 5)) -> dict:
    """Fit ``model`` on ``train`` (``fit``), score ``test``: the metrics averaged over test tasks."""
    if len(train):
        model.fit(train)
    rows = {"pairwise_accuracy": [], "kendall_tau": []}
    rows.update({f"top{k}": [] for k in ks})
    peak_num = {k: 0.0 for k in ks}
    peak_den = {k: 0.0 for k in ks}
    for t, cands, lats in test.by_task():
        scores = np.asarray(model.predict(t, cands), np.float64)
        rows["pairwise_accuracy"].append(pairwise_accuracy(scores, lats))
        rows["kendall_tau"].append(kendall_tau(scores, lats))
        s, lat = _valid(scores, lats)
        for k in ks:
            rows[f"top{k}"].append(top_k_score(scores, lats, k))
            if len(s):
                peak_num[k] += t.weight * lat.min()
                peak_den[k] += t.weight * lat[np.argsort(-s)[:k]].min()
    out = {name: float(np.nanmean(v)) if any(np.isfinite(v)) else float("nan") for name, v in rows.items()}
    out.update({f"a-peak@{k}": peak_num[k] / peak_den[k] if peak_den[k] else float("nan") for k in ks})
    out["test_tasks"] = len(test.tasks)
    out["test_candidates"] = len(test)
    return out


__all__ = ["Dataset", "TaskInfo", "FeatureCandidate", "evaluate", "pairwise_accuracy", "kendall_tau",
           "top_k_score", "SPLITS"]

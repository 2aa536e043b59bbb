"""Cost models: predict which candidates run fastest, learn from measurements.

The interface (DESIGN.md) every model implements, so that a researcher can replace the
tuner's model without touching anything else:

    predict(task, candidates) -> np.ndarray   # one score per candidate; higher is faster
    update(task, candidates, results)         # results: measured latencies in seconds (None: failed)
    save(path) / load(path)                   # JSON, never pickle
    fit(dataset)                              # optional offline training (dataset.Dataset)

A candidate (``space.Candidate``) offers ``.features`` (per-store matrix, ``features.py``),
``.decisions``, ``.trace`` and ``.func`` (its scheduled loop IR); a task offers ``.key``,
``.flops``, ``.func``. ``load_cost_model("pkg.mod:Class")`` instantiates any class
with a no-argument constructor.

``XGBModel`` follows MetaSchedule's XGBoost model: labels are throughputs normalized per
task (the task's best measured candidate is 1, a failed one 0); the model scores each
store and a candidate's score is the sum over its stores (pack-sum), trained with a
custom objective -- squared error of the packed sum, weighted by the label so that the
fast candidates, the ones search cares about, are fitted best. ``objective="rank"``
trains XGBoost's pairwise ranking objective within each task on the summed store features
instead. Saved models are XGBoost JSON with the feature version and settings as attributes.

Transfer: ``XGBModel(pretrained="other.json")`` (``--cost-model xgb:other.json``) starts
from a model trained on other tasks -- a database's ``cost_model.json``, or one fitted on
an exported dataset. It ranks candidates from the first batch on, and every retraining
continues boosting from it (new trees fit what the pretrained ones get wrong on this
task's measurements) instead of starting from nothing.
"""
from __future__ import annotations

import importlib
import json
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

from kiln.autotune.features import FEATURE_VERSION, N_FEATURES
from kiln.errors import TuningError


def latencies_of(results) -> list[float | None]:
    """Measured results (``measure.Result``) or plain seconds as a list of seconds or None."""
    out = []
    for r in results:
        lat = getattr(r, "latency", r)
        out.append(float(lat) if lat is not None and np.isfinite(lat) and lat > 0 else None)
    return out


def normalized_throughput(latencies: list[float | None]) -> np.ndarray:
    """Per-task labels: best measured candidate 1.0, slower ones their relative speed, failed 0."""
    thr = np.array([1.0 / x if x else 0.0 for x in latencies], dtype=np.float64)
    top = thr.max() if len(thr) else 0.0
    return thr / top if top > 0 else thr


class CostModel(ABC):
    """Base class of cost models; subclass it and implement ``predict`` and ``update``."""

    name = "custom"

    @property
    def trained(self) -> bool:
        """False while the model has learnt nothing (its scores are noise): the search then
        samples the space instead of ranking by it. Custom models are trusted by default."""
        return True

    @abstractmethod
    def predict(self, task, candidates) -> np.ndarray:
        ...

    @abstractmethod
    def update(self, task, candidates, results) -> None:
        ...

    def fit(self, dataset) -> None:
        """Offline training on a ``dataset.Dataset``; by default, one ``update`` per task."""
        for task, cands, lats in dataset.by_task():
            self.update(task, cands, lats)

    def save(self, path) -> None:
        Path(path).write_text(json.dumps({"model": type(self).__name__}))

    def load(self, path) -> None:
        pass


class RandomModel(CostModel):
    """Uniformly random scores: the search then explores blindly (a baseline for research)."""

    name = "random"

    def __init__(self, seed: int = 0):
        self.seed = seed
        self.rng = np.random.default_rng(seed)

    @property
    def trained(self) -> bool:
        return False

    def predict(self, task, candidates) -> np.ndarray:
        return self.rng.uniform(size=len(candidates))

    def update(self, task, candidates, results) -> None:
        pass

    def save(self, path) -> None:
        Path(path).write_text(json.dumps({"model": "random", "seed": self.seed}))

    def load(self, path) -> None:
        self.seed = int(json.loads(Path(path).read_text()).get("seed", 0))
        self.rng = np.random.default_rng(self.seed)


class XGBModel(CostModel):
    """XGBoost over per-store features with pack-sum and throughput-weighted squared error."""

    name = "xgb"

    def __init__(self, objective: str = "packsum", rounds: int = 60, max_depth: int = 8, eta: float = 0.2,
                 seed: int = 0, nthread: int = 2, pretrained=None):
        if objective not in ("packsum", "rank"):
            raise TuningError(f"XGBModel objective must be 'packsum' or 'rank', got {objective!r}")
        self.objective, self.rounds, self.max_depth, self.eta = objective, rounds, max_depth, eta
        self.seed, self.nthread = seed, nthread
        self.booster = None
        self.base = None   # the pretrained booster every retraining continues from
        self._data: dict[str, tuple[list[np.ndarray], list[float | None]]] = {}
        self._rng = np.random.default_rng(seed)
        if pretrained is not None:
            self.load(pretrained)
            self.base = self.booster

    @property
    def trained(self) -> bool:
        return self.booster is not None

    @staticmethod
    def _xgb():
        try:
            import xgboost
        except ImportError:
            raise TuningError("the xgb cost model needs xgboost: pip install xgboost-cpu "
                              "(or use --cost-model random)") from None
        return xgboost

    def _params(self) -> dict:
        p = {"max_depth": self.max_depth, "eta": self.eta, "min_child_weight": 0, "seed": self.seed,
             "nthread": self.nthread, "verbosity": 0}
        if self.objective == "rank":
            p["objective"] = "rank:pairwise"
        else:
            p["base_score"] = 0.0  # pack-sum: a candidate's score is the plain sum of its stores'
        return p

    # -- training --------------------------------------------------------------------------
    def update(self, task, candidates, results) -> None:
        feats, lats = self._data.setdefault(task.key, ([], []))
        for c, lat in zip(candidates, latencies_of(results)):
            feats.append(np.asarray(c.features, dtype=np.float32))
            lats.append(lat)
        self._train()

    def fit(self, dataset) -> None:
        for task, cands, lats in dataset.by_task():
            feats, ls = self._data.setdefault(task.key, ([], []))
            feats.extend(np.asarray(c.features, dtype=np.float32) for c in cands)
            ls.extend(latencies_of(lats))
        self._train()

    def _train(self) -> None:
        xgb = self._xgb()
        groups, labels, qids = [], [], []
        for q, (feats, lats) in enumerate(self._data.values()):
            y = normalized_throughput(lats)
            if not np.any(y > 0):
                continue
            groups.extend(feats)
            labels.extend(y)
            qids.extend([q] * len(feats))
        if len(groups) < 2:
            return
        labels = np.asarray(labels, dtype=np.float32)
        if self.objective == "rank":
            x = np.stack([g.sum(axis=0) for g in groups])
            order = np.argsort(np.asarray(qids), kind="stable")
            d = xgb.DMatrix(x[order], label=labels[order], qid=np.asarray(qids)[order])
            self.booster = xgb.train(self._params(), d, num_boost_round=self.rounds, xgb_model=self.base)
            return
        x = np.concatenate(groups)
        owner = np.repeat(np.arange(len(groups)), [len(g) for g in groups])
        weight = labels + 0.05  # throughput-weighted; failed candidates still count a little

        def packsum_squared_error(preds, _dtrain):
            packed = np.bincount(owner, weights=preds, minlength=len(groups))
            residual = packed - labels
            return (weight * residual)[owner], weight[owner]

        d = xgb.DMatrix(x, label=np.zeros(len(x), dtype=np.float32))
        self.booster = xgb.train(self._params(), d, num_boost_round=self.rounds, obj=packsum_squared_error,
                                 xgb_model=self.base)

    # -- prediction ---------------------------------------------------------------------------
    def predict(self, task, candidates) -> np.ndarray:
        if self.booster is None or not candidates:  # untrained: explore at random
            return self._rng.uniform(size=len(candidates))
        xgb = self._xgb()
        feats = [np.asarray(c.features, dtype=np.float32) for c in candidates]
        for f in feats:
            if f.shape[1] != N_FEATURES:
                raise TuningError(f"candidate features have {f.shape[1]} columns; this model expects "
                                  f"{N_FEATURES} ({FEATURE_VERSION})")
        if self.objective == "rank":
            return self.booster.predict(xgb.DMatrix(np.stack([f.sum(axis=0) for f in feats])))
        rows = self.booster.predict(xgb.DMatrix(np.concatenate(feats)))
        owner = np.repeat(np.arange(len(feats)), [len(f) for f in feats])
        return np.bincount(owner, weights=rows, minlength=len(feats))

    # -- persistence --------------------------------------------------------------------------
    def save(self, path) -> None:
        path = Path(path)
        if path.suffix != ".json":
            raise TuningError(f"XGBModel saves XGBoost JSON; name the file *.json (got {path.name})")
        if self.booster is None:
            raise TuningError("this XGBModel has not been trained yet: nothing to save")
        self.booster.set_attr(kiln_feature_version=FEATURE_VERSION, kiln_objective=self.objective)
        self.booster.save_model(str(path))

    def load(self, path) -> None:
        xgb = self._xgb()
        path = Path(path)
        if not path.is_file():
            raise TuningError(f"no saved cost model at {path}: expected an XGBoost JSON file written by "
                              "XGBModel.save (kiln tune leaves one in its database as cost_model.json)")
        booster = xgb.Booster()
        try:
            booster.load_model(str(path))
        except xgb.core.XGBoostError as e:
            raise TuningError(f"{path} is not an XGBoost JSON model (expected one written by XGBModel.save): "
                              f"{str(e).splitlines()[0]}") from None
        version = booster.attr("kiln_feature_version")
        if version != FEATURE_VERSION:
            raise TuningError(f"{path} was trained on features {version!r}; this Kiln extracts "
                              f"{FEATURE_VERSION!r} ({N_FEATURES} per store): retrain it")
        if booster.num_features() != N_FEATURES:
            raise TuningError(f"{path} takes {booster.num_features()} features per store; expected {N_FEATURES} "
                              f"({FEATURE_VERSION})")
        objective = booster.attr("kiln_objective") or "packsum"
        if objective not in ("packsum", "rank"):
            raise TuningError(f"{path} was trained with objective {objective!r}; expected 'packsum' or 'rank'")
        self.objective = objective
        self.booster = booster

    @classmethod
    def from_file(cls, path) -> "XGBModel":
        m = cls()
        m.load(path)
        return m


BUILTIN = {"xgb": XGBModel, "random": RandomModel}


def load_cost_model(spec="xgb", seed: int = 0) -> CostModel:
    """``xgb``, ``xgb:PATH`` (XGB starting from the model saved at PATH), ``random``,
    ``pkg.mod:Class``, or a CostModel instance (returned as is)."""
    if isinstance(spec, CostModel):
        return spec
    if not isinstance(spec, str):
        if hasattr(spec, "predict") and hasattr(spec, "update"):
            return spec
        raise TuningError(f"cost model must be 'xgb', 'random', 'pkg.mod:Class' or a CostModel; got {spec!r}")
    if spec in BUILTIN:
        return BUILTIN[spec](seed=seed)
    if spec.startswith("xgb:"):
        if not spec[4:]:
            raise TuningError("xgb: needs the path of a saved model after the colon (xgb:PATH.json)")
        return XGBModel(seed=seed, pretrained=spec[4:])
    if ":" not in spec:
        raise TuningError(f"unknown cost model {spec!r}; expected xgb, xgb:PATH.json, random or pkg.mod:Class")
    mod_name, _, cls_name = spec.partition(":")
    try:
        cls = getattr(importlib.import_module(mod_name), cls_name)
    except (ImportError, AttributeError) as e:
        raise TuningError(f"cannot load cost model {spec!r}: {e}") from None
    model = cls()
    if not (callable(getattr(model, "predict", None)) and callable(getattr(model, "update", None))):
        raise TuningError(f"{spec} is not a cost model: it needs predict(task, candidates) and "
                          "update(task, candidates, results) (subclass kiln.autotune.cost_model.CostModel)")
    return model


__all__ = ["CostModel", "XGBModel", "RandomModel", "load_cost_model", "normalized_throughput", "latencies_of"]

"""The tuning database: append-only JSON lines in a directory.

    DIR/workloads.jsonl   one line per task:       {"key", "target", "desc", "flops", "params", ...}
    DIR/records.jsonl     one line per measurement: {"key", "target", "decisions", "trace",
                                                     "latency" (s, or null), "error", "detail", ...}

Records are keyed by the task's structural hash and the target. Lines are only ever
appended; each batch of measurements is written and fsync'ed before the next batch is
measured, so ``kill -9`` loses at most the batch in flight. A line that does not parse
(a torn last line after a kill, a hand edit) is skipped with a ``TuningWarning``; the
next append starts on a fresh line. The compiler asks ``best_trace(key, target)``.

Besides the search's measurements a task has two kinds of marked records: the untuned
kernel's (``"untuned": true``, the default schedule as first measured) and verdicts
(``"verified": true``), written when the tuner re-timed the fastest records beside the
default at the end of a run; the newest verdict decides what the compiler applies.
"""
from __future__ import annotations

import json
import os
import time
import warnings
from pathlib import Path

from kiln.errors import TuningError, TuningWarning

FORMAT_VERSION = 1
RECORD_FIELDS = ("key", "target", "decisions", "trace", "latency", "error")


def _valid_record(r) -> bool:
    return (isinstance(r, dict) and all(f in r for f in RECORD_FIELDS) and isinstance(r["trace"], list)
            and isinstance(r["decisions"], dict)
            and (r["latency"] is None or (isinstance(r["latency"], (int, float)) and r["latency"] > 0))
            and (r["error"] is None) == (r["latency"] is not None))


def _measurement(r: dict) -> bool:
    """A record of one search trial (not the untuned reference nor a verdict)."""
    return not r.get("untuned") and not r.get("verified")


def _valid_workload(w) -> bool:
    return isinstance(w, dict) and isinstance(w.get("key"), str) and isinstance(w.get("target"), str)


class Database:
    """Workloads and measurement records of one directory, loaded once and appended to."""

    def __init__(self, directory, create: bool = True):
        self.dir = Path(directory)
        if self.dir.exists() and not self.dir.is_dir():
            raise TuningError(f"tuning database {self.dir} is a file; expected a directory")
        if not self.dir.exists():
            if not create:
                raise TuningError(f"tuning database {self.dir} does not exist; run `kiln tune` first "
                                  "or pass an existing directory")
            self.dir.mkdir(parents=True)
        self.workloads_path = self.dir / "workloads.jsonl"
        self.records_path = self.dir / "records.jsonl"
        self.workloads: dict[tuple[str, str], dict] = {}
        self._records: dict[tuple[str, str], list[dict]] = {}
        for w in self._read(self.workloads_path, _valid_workload):
            self.workloads.setdefault((w["key"], w["target"]), w)
        for r in self._read(self.records_path, _valid_record):
            self._records.setdefault((r["key"], r["target"]), []).append(r)

    @staticmethod
    def _read(path: Path, valid) -> list[dict]:
        if not path.exists():
            return []
        out = []
        with open(path, "rb") as f:
            for n, raw in enumerate(f, 1):
                if not raw.strip():
                    continue
                try:
                    item = json.loads(raw)
                except ValueError:
                    item = None
                if item is None or not valid(item):
                    warnings.warn(f"{path}:{n}: skipping a corrupt line ({raw[:60]!r}...)", TuningWarning,
                                  stacklevel=3)
                    continue
                out.append(item)
        return out

    @staticmethod
    def _append(path: Path, items: list[dict]) -> None:
        if not items:
            return
        text = "".join(json.dumps(i, separators=(",", ":")) + "\n" for i in items)
        with open(path, "a+b") as f:
            f.seek(0, os.SEEK_END)
            if f.tell() > 0:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":  # a torn line from a killed run: never glue onto it
                    text = "\n" + text
            f.write(text.encode())
            f.flush()
            os.fsync(f.fileno())

    # -- writing ------------------------------------------------------------------------------
    def commit_workload(self, task) -> None:
        if (task.key, task.target) in self.workloads:
            return
        w = task.workload()
        self._append(self.workloads_path, [w])
        self.workloads[(task.key, task.target)] = w

    def commit(self, records: list[dict]) -> None:
        """Append one batch of records durably."""
        stamped = []
        for r in records:
            r = dict(r, version=FORMAT_VERSION)
            r.setdefault("time", time.time())
            if not _valid_record(r):
                raise TuningError(f"refusing to write a malformed record: {r}")
            stamped.append(r)
        self._append(self.records_path, stamped)
        for r in stamped:
            self._records.setdefault((r["key"], r["target"]), []).append(r)

    # -- reading ------------------------------------------------------------------------------
    def records(self, key: str | None = None, target: str | None = None) -> list[dict]:
        """The search's measurements (not the untuned reference, see ``untuned``, nor the
        verdicts, see ``verdict``)."""
        if key is not None and target is not None:
            return [r for r in self._records.get((key, target), []) if _measurement(r)]
        return [r for (k, t), rs in self._records.items() for r in rs
                if (key is None or k == key) and (target is None or t == target) and _measurement(r)]

    def untuned(self, key: str, target: str) -> dict | None:
        """The record of the untuned kernel (the default schedule's trace and latency, measured
        by the same harness as the candidates), if the tuner wrote one."""
        return next((r for r in self._records.get((key, target), []) if r.get("untuned")), None)

    def verdict(self, key: str, target: str) -> dict | None:
        """The newest verdict of the tuner's verification (``tuner.verify``): the schedule that
        won when the fastest records were re-timed beside the default (``decisions`` {})."""
        return next((r for r in reversed(self._records.get((key, target), [])) if r.get("verified")), None)

    def best(self, key: str, target: str) -> dict | None:
        """The record the compiler applies: the newest verdict when the task was verified,
        else the fastest record, the untuned kernel included (a schedule the search found but
        that measured slower than the default is never applied)."""
        verdict = self.verdict(key, target)
        if verdict is not None:
            return verdict
        valid = [r for r in self._records.get((key, target), []) if r["error"] is None]
        return min(valid, key=lambda r: r["latency"]) if valid else None

    def best_trace(self, key: str, target: str) -> list | None:
        b = self.best(key, target)
        return b["trace"] if b else None

    def __len__(self) -> int:
        """Measurements of the search (the untuned references not counted)."""
        return sum(1 for v in self._records.values() for r in v if _measurement(r))


def tuned_schedules(directory, target: str):
    """A function ``func -> trace or None`` for the compiler: the best record of each kernel."""
    from kiln.autotune.tasks import task_key

    db = Database(directory, create=False)

    def lookup(func):
        return db.best_trace(task_key(func, target), target)

    return lookup


__all__ = ["Database", "tuned_schedules", "FORMAT_VERSION"]

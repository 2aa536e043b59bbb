"""Rule-generated design spaces: what the tuner may choose for one task.

The rule for a GEMM-like stage (a reduction with a ``tile`` hint: matmul, convolution,
pooling) is the default schedule with its constants opened up, in the manner of Ansor's
multi-level tiling:

    spatial loops ... row, col  ->  ... row_o_o, col_o_o | row_o_i, col_o_i | k.. k_o, k_i | row_i, col_i
                                     (parallel, fused)     (cache block)      (reduction)    (register tile)

Knobs (a *decision* is a value for each):
- ``row_tile``, ``col_tile``   the register tile (columns: divisors, no tail guards; rows: any
                               count up to 16, a tile's last run repeating the last row when
                               it does not divide them);
- ``row_block``, ``col_block`` the second tiling level, tiles per cache block;
- ``k_split``, ``unroll_k``    split the innermost reduction loop and unroll its inner part;
- ``unroll_rows``, ``vectorize`` unroll the tile rows, vectorize the tile columns;
- ``parallel``                 fuse outer loops until this many chunks run in parallel (0: serial);
- ``panel_outer``              the column-tile loop outside the row-tile loop (a packed B panel
                               stays in cache while the row tiles pass);
- ``col_blocks``               channel blocks per register tile, for a blocked conv whose column
                               tile is one whole block (1 elsewhere).

Other nests of the kernel (a convolution's padding, injective epilogues) keep the
default rule. Knobs depend on earlier ones (a block is a divisor of the tiles left), so
sampling picks them in order and a mutation re-picks the knobs it invalidated.
A candidate's schedule is a trace of ``Schedule`` primitives: ``apply_trace`` replays it
exactly as the compiler does when it applies a tuning record.
"""
from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass

from kiln.errors import TuningError
from kiln.ir.compute import Stage
from kiln.ir.loop import Func, Seq
from kiln.ir.schedule import Schedule
from kiln.passes import default_schedule as rules
from kiln.passes.capabilities import DEFAULT_CAPABILITIES, Capabilities
from kiln.passes.hoist_loads import cleanup_loops
from kiln.passes.injective_schedule import schedule_injective
from kiln.passes.loop_nests import nest_names, reduce_work, reduction_loops, shape_size
from kiln.passes.reduction_schedule import schedule_reduction, vectorize_scalar_reductions

KNOBS = ("row_tile", "col_tile", "row_block", "col_block", "k_split", "unroll_k",
         "unroll_rows", "vectorize", "parallel", "panel_outer", "col_blocks")
# knobs added after records were written: those records replay as they did, with these values
LEGACY_DECISIONS = {"panel_outer": False, "col_blocks": 1}
MAX_ROW_TILE, MAX_COL_TILE, MAX_BLOCK, MAX_K_SPLIT, MAX_COL_BLOCKS = 16, 64, 16, 16, 8
PARALLEL_CHOICES = (0, 2, 4, 16, 64)


def divisors(n: int, limit: int) -> tuple[int, ...]:
    return tuple(d for d in range(1, min(n, limit) + 1) if n % d == 0)


def _nests(func: Func):
    body = func.body
    return list(body.stmts) if isinstance(body, Seq) else [body]


def _tiled_stage(func: Func, stages: list[Stage]) -> int | None:
    """Index of the last GEMM-like stage when the kernel has the shape the rule needs."""
    nests = _nests(func)
    if len(nests) != len(stages):
        return None
    for i in reversed(range(len(stages))):
        st = stages[i]
        if st.has_reduce and "tile" in st.hints and all(isinstance(d, int) for d in st.shape):
            loops = nest_names(nests[i])
            if len(loops) >= len(st.shape) and all(isinstance(e, int) for _, e in loops):
                return i
    return None


def has_space(func: Func, stages: list[Stage]) -> bool:
    return _tiled_stage(func, stages) is not None


def canonical(decisions: dict) -> str:
    """One string per decision, for deduplication and database lookups."""
    return json.dumps({k: decisions[k] for k in sorted(decisions)}, sort_keys=True)


@dataclass
class DesignSpace:
    """The knobs of one task, with sampling, mutation and application."""

    func: Func
    stages: list[Stage]
    caps: Capabilities = DEFAULT_CAPABILITIES

    def __post_init__(self):
        idx = _tiled_stage(self.func, self.stages)
        if idx is None:
            raise TuningError("this kernel has no design space: it needs a static-shape reduction with "
                              "a tile hint (matmul, convolution or pooling)")
        self.index = idx
        st = self.stages[idx]
        loops = nest_names(_nests(self.func)[idx])
        self.spatial = loops[: len(st.shape)]
        row_ax, col_ax = st.hints["tile"]
        self.row_n, self.col_n = self.spatial[row_ax][1], self.spatial[col_ax][1]
        probe = Schedule(self.func)  # the reduction loop the rule splits, after the index split
        rules.split_reductions_at_index_divisors(probe, self.spatial[0][0])
        red = reduction_loops(probe, self.spatial[-1][0])
        self.k_n = red[-1][1] if red else 1
        self.block_ax = st.hints.get("col_block_axis")
        self.block_n = self.spatial[self.block_ax][1] if self.block_ax is not None else 1

    # -- the domain of each knob, given the knobs before it ----------------------------
    def domain(self, knob: str, d: dict) -> tuple:
        if knob == "row_tile":  # past the divisors, a tile's last run repeats the last row
            return tuple(range(1, min(self.row_n, MAX_ROW_TILE) + 1)) if isinstance(self.row_n, int) else (1,)
        if knob == "col_tile":
            return divisors(self.col_n, MAX_COL_TILE)
        if knob == "row_block":
            return divisors(-(-self.row_n // d["row_tile"]), MAX_BLOCK)
        if knob == "col_block":
            return divisors(self.col_n // d["col_tile"], MAX_BLOCK)
        if knob == "k_split":
            return divisors(self.k_n, MAX_K_SPLIT)
        if knob == "unroll_k":
            return (False, True) if d["k_split"] > 1 else (False,)
        if knob in ("unroll_rows", "vectorize"):
            return (False, True)
        if knob == "parallel":
            return PARALLEL_CHOICES
        if knob == "panel_outer":
            return (False, True)
        if knob == "col_blocks":
            if self.block_ax is not None and d["col_tile"] == self.col_n and d["col_block"] == 1:
                return divisors(self.block_n, MAX_COL_BLOCKS)
            return (1,)
        raise TuningError(f"unknown knob {knob!r}; the knobs are {', '.join(KNOBS)}")

    def size(self) -> int:
        """Number of distinct decisions (counted by enumerating the dependent domains)."""
        total = 0
        for rt in self.domain("row_tile", {}):
            for ct in self.domain("col_tile", {}):
                d = {"row_tile": rt, "col_tile": ct}
                n = len(self.domain("row_block", d)) * len(self.domain("col_block", d))
                n *= sum(len(self.domain("unroll_k", {"k_split": k})) for k in self.domain("k_split", d))
                blocks = len(self.domain("col_blocks", dict(d, col_block=1)))
                total += (n + blocks - 1) * 4 * len(PARALLEL_CHOICES) * 2
        return total

    def default(self) -> dict:
        """The decisions of the untuned rule (default_schedule.default_tiling)."""
        st = self.stages[self.index]
        work = shape_size(st.shape) * reduce_work(st)
        d = rules.default_tiling(self.spatial, st.hints, work, rules.tile_sizes(st, self.caps))
        if d["col_blocks"] not in self.domain("col_blocks", d):
            d["col_blocks"] = 1
        return d

    def coordinates(self, decisions: dict) -> list[float]:
        """The decisions as a point with every knob in [0, 1] (sizes on a log scale), for
        measuring how far apart two candidates are."""
        d = self.validate(decisions)
        limits = {"row_tile": MAX_ROW_TILE, "col_tile": MAX_COL_TILE, "row_block": MAX_BLOCK,
                  "col_block": MAX_BLOCK, "k_split": MAX_K_SPLIT, "col_blocks": MAX_COL_BLOCKS}
        point = []
        for knob in KNOBS:
            v = d[knob]
            if knob == "parallel":
                point.append(PARALLEL_CHOICES.index(v) / (len(PARALLEL_CHOICES) - 1))
            elif isinstance(v, bool):
                point.append(float(v))
            else:
                point.append(math.log2(v) / math.log2(limits[knob]))
        return point

    def sample(self, rng: random.Random) -> dict:
        d: dict = {}
        for knob in KNOBS:
            d[knob] = rng.choice(self.domain(knob, d))
        return d

    def mutate(self, decisions: dict, rng: random.Random) -> dict:
        """Change one knob to another value of its domain; re-pick later knobs it invalidated."""
        d = dict(decisions)
        options = [k for k in KNOBS if len(self.domain(k, d)) > 1]
        if not options:
            return d
        knob = rng.choice(options)
        d[knob] = rng.choice([v for v in self.domain(knob, d) if v != d[knob]])
        for later in KNOBS[KNOBS.index(knob) + 1:]:
            if d[later] not in self.domain(later, d):
                d[later] = rng.choice(self.domain(later, d))
        return d

    def validate(self, decisions: dict) -> dict:
        decisions = {**LEGACY_DECISIONS, **decisions}
        d: dict = {}
        for knob in KNOBS:
            if knob not in decisions or decisions[knob] not in self.domain(knob, d):
                raise TuningError(f"decision {knob}={decisions.get(knob)!r} is outside the design space "
                                  f"(expected one of {self.domain(knob, d)})")
            d[knob] = decisions[knob]
        return d

    # -- application ------------------------------------------------------------------------
    def apply(self, decisions: dict) -> Schedule:
        """Schedule the task with ``decisions``; the Schedule's trace is the tuning record."""
        d = self.validate(decisions)
        sch = Schedule(self.func)
        nests = _nests(self.func)
        pad = None  # an integer max pool's padded input, computed inside its loops as the default rule does
        if self.index > 0 and rules.pad_computed_inside(self.stages[self.index - 1], self.stages[self.index]):
            pad = (nest_names(nests[self.index - 1]), self.stages[self.index - 1])
        for i, nest in enumerate(nests):
            st = self.stages[i]
            loops = nest_names(nest)
            spatial = loops[: len(st.shape)]
            if not spatial or (pad is not None and i == self.index - 1):
                continue
            work = shape_size(st.shape) * reduce_work(st)
            if i == self.index:
                rules.apply_tiling(sch, spatial, st.hints, d, pad)
            elif st.has_reduce and "tile" in st.hints:
                rules.tile_reduction(sch, spatial, st.hints, work, rules.tile_sizes(st, self.caps))
            elif st.has_reduce:
                schedule_reduction(sch, spatial, work)
            else:
                schedule_injective(sch, spatial, st, work, self.caps)
        vectorize_scalar_reductions(sch)
        return sch


class Candidate:
    """One point of a design space: its decisions, its trace and (lazily) its loop IR and features."""

    __slots__ = ("decisions", "trace", "_func", "_features", "_base")

    def __init__(self, decisions: dict, trace: list, func: Func | None = None, base: Func | None = None):
        self.decisions, self.trace = decisions, trace
        self._func, self._features, self._base = func, None, base

    @classmethod
    def of(cls, space: "DesignSpace", decisions: dict) -> "Candidate":
        sch = space.apply(decisions)
        return cls(dict(decisions), sch.trace, cleanup_loops(sch.func))

    @property
    def key(self) -> str:
        return canonical(self.decisions)

    @property
    def func(self) -> Func:
        if self._func is None:
            if self._base is None:
                raise TuningError("a candidate made from a trace alone needs the task's loop IR (base=)")
            self._func = apply_trace(self._base, self.trace)
        return self._func

    @property
    def features(self):
        """Per-store feature matrix (``features.extract``), computed once."""
        if self._features is None:
            from kiln.autotune.features import extract

            self._features = extract(self.func)
        return self._features


def apply_trace(func: Func, trace) -> Func:
    """Replay a tuning record on a kernel's unscheduled loop IR, as the compiler does."""
    sch = Schedule.replay(func, trace)
    return cleanup_loops(sch.func)


__all__ = ["Candidate", "DesignSpace", "KNOBS", "apply_trace", "canonical", "divisors", "has_space"]

"""Choosing patch-based execution: which stage and which grid, from real memory plans.

Each candidate (a stage length from ``stage_ends`` and a grid) is rewritten by
``patch_graph``, fused, and planned by the target's own memory planner over the kernels'
footprints (the values each kernel reads and writes and its scratch tensors: the same
lists ``build_kernels`` makes, without lowering or scheduling). So the arena a candidate
is chosen by is exactly the arena the compiled model gets.

- ``patch=RxC`` forces a grid: the stage with the smallest arena is taken (the shorter
  stage on a tie: less recomputation).
- a budget alone patches only a model whose layer-by-layer arena exceeds it: the
  candidates are tried from the coarsest grid and the shortest stage up, and the first
  that fits is taken; when none fits, the error lists every one tried with its arena.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from kiln.errors import KilnError
from kiln.ir.graph import Graph, TensorType
from kiln.passes.patch_execution import PatchReport, patch_graph, stage_chain, stage_ends

GRIDS = ((2, 2), (3, 3), (4, 4), (5, 5), (6, 6), (8, 8))


class PatchBudgetError(KilnError):
    """No patch-based execution that was tried brings the arena within the budget."""


@dataclass
class Footprint:
    """What the memory planner reads of a kernel."""
    inputs: list[str]
    outputs: list[str]
    temps: list[tuple[str, TensorType]]


def footprints(graph: Graph) -> list[Footprint]:
    """The kernels' values and scratch tensors, as ``build_kernels`` would make them."""
    from kiln.codegen.kernels import group_stages
    from kiln.ir.lower import inline_stages
    from kiln.ir.symbolic import shape_dims
    from kiln.passes.fuse import fuse
    from kiln.passes.padded_storage import storage_borders

    types, borders = graph.value_types(), storage_borders(graph)
    out = []
    for i, group in enumerate(fuse(graph)):
        stages, inputs, outputs, cname = group_stages(group, graph, types, borders)
        keep = {cname[n] for n in outputs}
        stages = inline_stages(stages, keep=keep)
        temps = [(f"kernel_{i}.{s.name}", TensorType(shape_dims(s.shape), s.dtype))
                 for s in stages if s.name not in keep]
        out.append(Footprint(inputs, outputs, temps))
    return out


Planner = Callable[[Graph, list], object]   # (graph, kernels) -> MemoryPlan


def choose_patching(graph: Graph, planner: Planner, budget: int | None = None,
                    grid: tuple[int, int] | None = None,
                    finish: Callable[[Graph], Graph] = lambda g: g) -> tuple[Graph, PatchReport | None]:
    """The graph to compile and what patching it got (None: layer by layer).

    ``planner``: the target's ``plan_memory`` without its budget check. ``grid`` forces
    patching with that grid; otherwise the graph is patched only when its arena exceeds
    ``budget``. ``finish``: the target's graph rewrites after patching (Cortex-M: its
    channels-last layout, ``kiln/passes/integer_layout.py``), applied to every candidate
    before it is planned and to the graph returned."""
    def plan(g: Graph):
        return planner(g, footprints(g))

    if grid is None and budget is None:
        return finish(graph), None
    unpatched = finish(graph)
    base = plan(unpatched)
    if grid is None and base.arena_size <= budget:
        return unpatched, None
    chain = stage_chain(graph)
    ends = stage_ends(chain)
    if not ends:
        what = "patch-based execution" if grid else f"an arena of {base.arena_size} bytes, over the budget"
        raise PatchBudgetError(
            f"model {graph.name!r} needs {what} but has no stage to patch: expected its 4-D input to feed "
            f"a chain of conv/qconv/pool and elementwise ops (lower bound layer by layer {base.lower_bound})")
    tried: list[tuple[str, int]] = []
    best = None
    grids = [grid] if grid else list(GRIDS)
    for g in grids:
        for end in ends:
            out = chain[end - 1].outputs[0].shape
            if g[0] > out[2] or g[1] > out[3]:
                continue
            patched, report = patch_graph(graph, end, g)
            patched = finish(patched)
            mem = plan(patched)
            tried.append((f"{g[0]}x{g[1]} over {end} ops", mem.arena_size))
            if grid is not None:
                if best is None or mem.arena_size < best[2].arena_size:
                    best = (patched, report, mem)
            elif mem.arena_size <= budget:
                best = (patched, report, mem)
                break
        if best is not None and grid is None:
            break
    if best is None and grid is not None:
        from kiln.passes.patch_execution import PatchError

        shapes = ", ".join(f"{chain[e - 1].outputs[0].name} {list(chain[e - 1].outputs[0].shape[2:])}" for e in ends)
        raise PatchError(f"patch grid {grid[0]}x{grid[1]} is finer than every stage output of model "
                         f"{graph.name!r} ({shapes}); expected a coarser grid")
    if best is None:
        listing = _best_per_grid(tried) or "nothing (every grid is finer than the stage outputs)"
        raise PatchBudgetError(
            f"model {graph.name!r} needs an arena of {base.arena_size} bytes layer by layer (lower bound "
            f"{base.lower_bound}), more than the SRAM budget of {budget} bytes, and no patch-based execution "
            f"fits either; tried: {listing}. Use a larger budget, a smaller "
            "input or a narrower model")
    patched, report, _ = best
    report.arena_without, report.lower_bound_without = base.arena_size, base.lower_bound
    report.tried = tried
    return patched, report


def _best_per_grid(tried: list[tuple[str, int]]) -> str:
    """``2x2: 58496 bytes at best (over 4 ops), 9 stages; ...``: the error stays readable."""
    best: dict[str, tuple[int, str, int]] = {}
    for name, arena in tried:
        grid, stage = name.split(" over ")
        n = best.get(grid, (arena, stage, 0))[2] + 1
        if grid not in best or arena < best[grid][0]:
            best[grid] = (arena, stage, n)
        else:
            best[grid] = best[grid][:2] + (n,)
    return "; ".join(f"{g} patches: {a} bytes at best (over {st}), {n} stage(s)" for g, (a, st, n) in best.items())

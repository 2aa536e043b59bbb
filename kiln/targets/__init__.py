"""Targets: parse target strings and find the target implementation.

Names are stable once released (see DESIGN.md). Targets not yet implemented are
known by name so that the error says so instead of calling the name invalid.
"""
from __future__ import annotations

from dataclasses import dataclass

from kiln.errors import TargetError

IMPLEMENTED = ("host",)
PLANNED = ("arm64", "cuda", "webgpu", "cortex-m4", "cortex-m7", "cortex-m55")


@dataclass(frozen=True)
class TargetSpec:
    name: str
    options: tuple[str, ...] = ()

    def __str__(self) -> str:
        return self.name + (":" + ",".join(self.options) if self.options else "")


def parse_target(target: str) -> TargetSpec:
    if not isinstance(target, str) or not target:
        raise TargetError(f"target must be a non-empty string such as 'host'; got {target!r}")
    name, _, opts = target.partition(":")
    options = tuple(o for o in opts.split(",") if o) if opts else ()
    if name in IMPLEMENTED:
        if options:
            raise TargetError(f"target {name!r} takes no options; got {opts!r}")
        return TargetSpec(name, options)
    if name in PLANNED:
        raise TargetError(f"target {name!r} is not implemented in this version of Kiln; "
                          f"available: {', '.join(IMPLEMENTED)}")
    raise TargetError(f"unknown target {target!r}; expected one of {', '.join(IMPLEMENTED + PLANNED)}")

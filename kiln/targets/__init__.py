"""Targets: parse target strings and find the target implementation.

Names are stable once released (see DESIGN.md). Each name maps to the module that
implements it and the :class:`~kiln.targets.base.Target` subclass there; a name whose
module does not exist yet is known as planned, so that the error says so instead of
calling the name invalid.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass

from kiln.errors import TargetError
from kiln.targets.base import ModelSource, Target

# name -> (module, class). Order is the order `kiln --help` lists them in.
REGISTRY: dict[str, tuple[str, str]] = {
    "host": ("kiln.targets.host", "HostTarget"),
    "arm64": ("kiln.targets.arm", "Arm64Target"),
    "cuda": ("kiln.targets.cuda", "CudaTarget"),
    "webgpu": ("kiln.targets.webgpu", "WebGPUTarget"),
    "cortex-m4": ("kiln.targets.cortex_m", "CortexM4Target"),
    "cortex-m7": ("kiln.targets.cortex_m", "CortexM7Target"),
    "cortex-m55": ("kiln.targets.cortex_m", "CortexM55Target"),
}


def _target_class(name: str):
    module_name, class_name = REGISTRY[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name != module_name:
            raise
        return None
    return getattr(module, class_name, None)


def implemented() -> list[str]:
    return [n for n in REGISTRY if _target_class(n) is not None]


def planned() -> list[str]:
    return [n for n in REGISTRY if _target_class(n) is None]


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
    if name not in REGISTRY:
        raise TargetError(f"unknown target {target!r}; expected one of {', '.join(REGISTRY)}")
    if _target_class(name) is None:
        raise TargetError(f"target {name!r} is not implemented in this version of Kiln; "
                          f"available: {', '.join(implemented())}")
    return TargetSpec(name, options)


def get_target(target: "str | Target") -> Target:
    """The target object for a name such as ``host`` or ``arm64:+dotprod,+fp16``."""
    if isinstance(target, Target):
        return target
    spec = parse_target(target)
    return _target_class(spec.name)(spec.options)


__all__ = ["ModelSource", "REGISTRY", "Target", "TargetSpec", "get_target", "implemented", "parse_target",
           "planned"]

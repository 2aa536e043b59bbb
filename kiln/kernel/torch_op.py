"""A kernel library as a PyTorch custom operator (``torch.library.custom_op``).

The real implementation is the DLPack callable (zero-copy on CPU tensors, checked inputs);
the fake implementation only states the output shapes and dtypes, which is what
``torch.compile`` (FakeTensor tracing, AOTAutograd, inductor) needs to put the operator in a
graph without running it. The schema is written out from the library's inputs and outputs
(``kiln::NAME(Tensor A, Tensor B) -> Tensor``), so any number of tensors works.
"""
from __future__ import annotations

from kiln.errors import InputError, KilnError

# qualname -> (library path, op): registering twice in one process is an error in torch
_REGISTERED: dict[str, tuple[str, object]] = {}


def _torch_dtype(torch, name: str):
    return getattr(torch, name)


def register(library, qualname: str | None = None):
    """Register ``library`` (a KernelLibrary) as ``qualname`` (default ``kiln::<name>``); returns
    the op, callable as ``op(*inputs)`` or ``torch.ops.kiln.<name>(*inputs)``."""
    import torch

    qualname = qualname or f"kiln::{library.name}"
    path = str(library.library_path())
    if qualname in _REGISTERED:
        known, op = _REGISTERED[qualname]
        if known == path:
            return op
        raise KilnError(f"a different kernel is already registered as {qualname!r} in this process; "
                        f"pass torch_op(qualname='namespace::other_name')")
    call = library.callable()
    ins, outs = library.inputs, library.outputs
    params = ", ".join(f"Tensor {t['cname']}" for t in ins)
    returns = "Tensor" if len(outs) == 1 else "(" + ", ".join("Tensor" for _ in outs) + ")"
    schema = f"({params}) -> {returns}"

    def implementation(*tensors):
        result = call(*tensors)
        return result

    op = torch.library.custom_op(qualname, implementation, mutates_args=(), schema=schema)

    @op.register_fake
    def _fake(*tensors):
        _check_meta(library.name, tensors, ins)
        device = tensors[0].device if tensors else torch.device("cpu")
        made = [torch.empty(t["shape"], dtype=_torch_dtype(torch, t["dtype"]), device=device) for t in outs]
        return made[0] if len(made) == 1 else tuple(made)

    _REGISTERED[qualname] = (path, op)
    return op


def _check_meta(name: str, tensors, specs) -> None:
    """Shape and dtype checks the fake implementation can make (no data is read)."""
    if len(tensors) != len(specs):
        raise InputError(f"{name} takes {len(specs)} input tensor(s); got {len(tensors)}")
    for t, spec in zip(tensors, specs):
        dtype = str(t.dtype).removeprefix("torch.")
        if dtype != spec["dtype"]:
            raise InputError(f"{name}: input {spec['name']!r} has dtype {dtype}; expected {spec['dtype']}")
        if tuple(t.shape) != tuple(spec["shape"]):
            raise InputError(f"{name}: input {spec['name']!r} has shape {tuple(t.shape)}; "
                             f"expected {tuple(spec['shape'])}")

"""jinja2 loader for the file skeletons in ``codegen/templates/`` (StrictUndefined)."""
from __future__ import annotations

import functools

import jinja2


@functools.lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("kiln.codegen", "templates"),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render(template_name: str, /, **context) -> str:
    return environment().get_template(template_name).render(**context)


def numbered(source: str) -> str:
    """Source with line numbers, for showing code a toolchain rejected."""
    lines = source.splitlines()
    width = len(str(len(lines)))
    return "\n".join(f"{i + 1:>{width}} | {line}" for i, line in enumerate(lines))

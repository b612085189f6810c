"""Griffe extension of the documentation build: render Sphinx cross-reference roles as code.

The docstrings of this project are Google style but cite other objects with Sphinx roles
(``:class:`~irreptensor_ml.data.IrrepNormalizer```, ``:func:`fit```...). mkdocstrings does not
interpret roles, so the API pages would show them literally. This extension rewrites each role to
inline code of the object's name (the last dotted component when the target starts with ``~``),
before the docstring is parsed. Registered in ``mkdocs.yml`` under the python handler's
``extensions``.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|data|attr|exc|obj|const|type):`([~!]?)([^`<]+?)(?:\s*<([^>]+)>)?`")


def replace_roles(text: str) -> str:
    """``:class:`~a.b.C``` -> ```C```, ``:func:`a.f``` -> ```a.f```, ``:mod:`x <a.b>``` -> ```x```."""

    def repl(m: re.Match[str]) -> str:
        prefix, target, _explicit = m.groups()
        name = target.strip()
        if prefix == "~":
            name = name.split(".")[-1]
        return f"`{name}`"

    return ROLE.sub(repl, text)


class RstRoles(griffe.Extension):
    """Rewrite Sphinx roles in every docstring (see the module doc)."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:  # noqa: D102
        if obj.docstring is not None:
            obj.docstring.value = replace_roles(obj.docstring.value)

"""A Griffe extension for the API reference: colabsession's docstrings, written for ``help()``
and doctest, rendered as Markdown by mkdocstrings.

The docstrings are prose in reStructuredText habits that Markdown reads otherwise:

- ``>>>`` examples (Markdown sees nested block quotes) become ``pycon`` code blocks, without
  their ``# doctest:`` flags;
- a paragraph ending in ``::`` and the indented block after it (a literal block) becomes the
  paragraph ending in ``:`` and a ``python`` code block (``text`` when it is not Python);
- Sphinx roles (:func:`stage`, :class:`~colabsession.Checkpointer`) become links where the name
  is public and rendered in the reference, else code.

The docstrings themselves stay as they are. mkdocs.yml loads this file through the Python
handler's ``extensions`` option; nothing in the package imports it.
"""

from __future__ import annotations

import ast
import re
import textwrap
from collections.abc import Iterator
from typing import Any

from griffe import Alias, Extension, Module, NameResolutionError, Object

PACKAGE = "colabsession"
# The public modules, in the order that decides where a name documented twice links to
# (cs.mount is colabsession.drive.mount).
PUBLIC_MODULES = ("drive", "env", "data", "torch", "hf", "keras", "")

_ROLE = re.compile(r":(?:func|class|meth|attr|mod|exc|data|obj|const):`(~?)([^`]+)`")
_FLAGS = re.compile(r"\s*# doctest:.*$")
_FENCE = re.compile(r"^\s*(```|~~~)")


class Docstrings(Extension):
    """Rewrite every docstring of the colabsession package once Griffe has loaded it."""

    def on_package(self, *, pkg: Module, **kwargs: Any) -> None:
        if pkg.name != PACKAGE:
            return
        public = public_paths(pkg)
        for obj in _objects(pkg):
            if obj.docstring is not None:
                obj.docstring.value = to_markdown(
                    obj.docstring.value, lambda name, obj=obj: _link(name, obj, public)
                )


if not hasattr(Extension, "on_package"):  # Griffe before 1.14 names the event otherwise
    Docstrings.on_package_loaded = Docstrings.on_package  # type: ignore[attr-defined]


def public_paths(pkg: Module) -> dict[str, str]:
    """Map the path where each public object is defined (and each of its public members) to
    the public path under which the reference renders it."""
    paths: dict[str, str] = {}
    for name in PUBLIC_MODULES:
        module = pkg.get_member(name) if name else pkg
        paths.setdefault(module.path, module.path)
        for export in module.exports or ():
            if not isinstance(export, str) or export not in module.members:
                continue
            member = module.members[export]
            target = member.final_target if isinstance(member, Alias) else member
            public = f"{module.path}.{export}"
            paths.setdefault(target.path, public)
            paths.setdefault(public, paths[target.path])
            if target.is_class:  # the members that the reference shows: documented ones
                for child, value in target.members.items():
                    if not child.startswith("_") and value.docstring is not None:
                        paths.setdefault(f"{target.path}.{child}", f"{paths[target.path]}.{child}")
                        paths.setdefault(f"{public}.{child}", f"{paths[target.path]}.{child}")
    return paths


def _objects(obj: Object) -> Iterator[Object]:
    yield obj
    for member in obj.members.values():
        if not isinstance(member, Alias):
            yield from _objects(member)


def _link(name: str, scope: Object, public: dict[str, str]) -> str | None:
    """The public path that the role's *name* refers to, seen from *scope*; None if it is not
    rendered in the reference."""
    if name.startswith("cs."):
        name = f"{PACKAGE}.{name[3:]}"
    if name.startswith(f"{PACKAGE}.") or name == PACKAGE:
        return public.get(name)
    if name.startswith("."):
        return None  # a private module, by its relative name
    head, _, rest = name.partition(".")
    try:
        resolved = scope.resolve(head)
    except NameResolutionError:
        return None
    return public.get(f"{resolved}.{rest}" if rest else resolved)


def to_markdown(text: str, link: Any = lambda name: None) -> str:
    """The docstring *text* in Markdown; *link* maps a role's target to an identifier, or None.

    >>> to_markdown("See :func:`stage`, :mod:`._walk`.", {"stage": "colabsession.data.stage"}.get)
    'See [`stage`][colabsession.data.stage], `._walk`.'
    """
    out: list[str] = []
    lines = text.splitlines()
    i = 0
    fenced = False
    while i < len(lines):
        line = lines[i]
        if _FENCE.match(line):
            fenced = not fenced
        if fenced:
            out.append(line)
            i += 1
            continue
        indent = len(line) - len(line.lstrip())
        if line.lstrip().startswith(">>>"):
            block, i = _take(lines, i, lambda s, indent=indent: _indent(s) >= indent and bool(s))
            out.extend(_fence(block, indent, "pycon"))
            continue
        if line.rstrip().endswith("::"):
            head = line.rstrip()[:-2].rstrip()
            if head.strip():
                out.append(_roles(f"{head}:", link))
            j = i + 1
            while j < len(lines) and not lines[j].strip():
                j += 1
            if j < len(lines) and _indent(lines[j]) > indent:
                block, i = _take(lines, j, lambda s, indent=indent: not s or _indent(s) > indent)
                while block and not block[-1].strip():
                    block.pop()
                out.extend(_fence(block, indent, None))
            else:
                i += 1
            continue
        out.append(_roles(line, link))
        i += 1
    return "\n".join(_single_blanks(out))


def _single_blanks(lines: list[str]) -> Iterator[str]:
    """*lines* without the runs of blank lines that fencing leaves, outside code blocks."""
    fenced = False
    previous = None
    for line in lines:
        if _FENCE.match(line):
            fenced = not fenced
        if fenced or line.strip() or (previous is not None and previous.strip()):
            yield line
        previous = line


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _take(lines: list[str], start: int, keep: Any) -> tuple[list[str], int]:
    end = start
    while end < len(lines) and keep(lines[end]):
        end += 1
    return lines[start:end], end


def _fence(block: list[str], indent: int, language: str | None) -> list[str]:
    code = textwrap.dedent("\n".join(block))
    if language is None:
        language = "pycon" if code.lstrip().startswith(">>>") else _language(code)
    if language == "pycon":
        code = "\n".join(_FLAGS.sub("", line) for line in code.splitlines())
    pad = " " * indent
    body = [f"{pad}{line}" if line else "" for line in code.splitlines()]
    return ["", f"{pad}```{language}", *body, f"{pad}```", ""]


def _language(code: str) -> str:
    try:
        ast.parse(code)
    except SyntaxError:
        return "text"
    return "python"


def _roles(line: str, link: Any) -> str:
    def replace(match: re.Match[str]) -> str:
        short, name = match.group(1), match.group(2)
        shown = name.rsplit(".", 1)[-1] if short else name
        target = link(name)
        return f"[`{shown}`][{target}]" if target else f"`{shown}`"

    return _ROLE.sub(replace, line)

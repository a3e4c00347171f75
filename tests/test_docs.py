"""The documentation site: its API reference names every public name, and ``mkdocs build
--strict`` passes (where mkdocs and mkdocstrings are installed: ``colabsession[docs]``)."""

from __future__ import annotations

import ast
import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from colabsession._core.optional import installed

ROOT = Path(__file__).resolve().parent.parent
API = ROOT / "docs" / "api"
PUBLIC_MODULES = ("drive", "env", "data", "torch", "hf", "keras", "cache", "lightning")
CAN_BUILD = all(installed(m) for m in ("mkdocs", "mkdocstrings", "mkdocstrings_handlers.python"))
needs_mkdocs = pytest.mark.skipif(not CAN_BUILD, reason="needs colabsession[docs]")
needs_griffe = pytest.mark.skipif(not installed("griffe"), reason="needs colabsession[docs]")


def _literal(path: Path, name: str) -> Any:
    """The value of the module-level assignment to *name* in *path*, read without importing
    it (colabsession.torch imports torch)."""
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        else:
            continue
        if any(isinstance(t, ast.Name) and t.id == name for t in targets):
            return ast.literal_eval(value)
    raise AssertionError(f"{path} assigns no {name}")


def _documented() -> set[str]:
    """The objects that the API reference's pages render (``::: colabsession.x``)."""
    found: set[str] = set()
    for page in API.glob("*.md"):
        found |= set(re.findall(r"^::: (\S+)", page.read_text(), re.MULTILINE))
    return found


def test_api_reference_renders_every_public_name() -> None:
    """A name added to an ``__all__`` gets its section in docs/api/ (where the strict build
    then checks that it resolves)."""
    package = ROOT / "colabsession" / "__init__.py"
    lazy = _literal(package, "_LAZY")
    expected = set()
    for name in _literal(package, "__all__"):
        module = lazy.get(name, "")
        if module.lstrip(".") in PUBLIC_MODULES and module != f".{name}":
            # Re-exported from a public module (cs.mount): documented there, once.
            expected.add(f"colabsession{module}.{name}")
        else:
            expected.add(f"colabsession.{name}")
    for module in PUBLIC_MODULES:
        names = _literal(ROOT / "colabsession" / f"{module}.py", "__all__")
        expected |= {f"colabsession.{module}.{name}" for name in names}
    missing = sorted(expected - _documented())
    assert not missing, f"add a `::: name` section to a page of docs/api/ for {missing}"


@needs_mkdocs
def test_site_builds_strict(tmp_path: Path) -> None:
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", "mkdocs.yml", "-d", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    reference = site / "api" / "colabsession" / "index.html"
    assert 'id="colabsession.Checkpointer"' in reference.read_text()
    for page in (site / "api").rglob("*.html"):
        html = page.read_text()
        # The docstrings' doctest examples are code blocks, not block quotes, and their Sphinx
        # roles are links or code.
        assert "<blockquote>" not in html, page
        assert not re.search(r":(func|class|meth|attr|mod):", html), page
    assert "Unreleased" in (site / "changelog" / "index.html").read_text()


def _extension() -> ModuleType:
    path = ROOT / "docs" / "_ext" / "docstrings.py"
    spec = importlib.util.spec_from_file_location("colabsession_docs_docstrings", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@needs_griffe
def test_docstrings_become_markdown() -> None:
    to_markdown = _extension().to_markdown
    links = {"stage": "colabsession.data.stage"}
    text = (
        "Stage it with :func:`stage`, not :func:`_helper`::\n"
        "\n"
        "    path = cs.data.stage('x')\n"
        "\n"
        "Then:\n"
        "\n"
        ">>> len(list(path.iterdir()))  # doctest: +SKIP\n"
        "3\n"
        "\n"
        "The layout::\n"
        "\n"
        "    run/\n"
        "      ckpt-1.ckpt\n"
    )
    assert to_markdown(text, links.get).splitlines() == [
        "Stage it with [`stage`][colabsession.data.stage], not `_helper`:",
        "",
        "```python",
        "path = cs.data.stage('x')",
        "```",
        "",
        "Then:",
        "",
        "```pycon",
        ">>> len(list(path.iterdir()))",
        "3",
        "```",
        "",
        "The layout:",
        "",
        "```text",
        "run/",
        "  ckpt-1.ckpt",
        "```",
    ]

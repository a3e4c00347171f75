from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import colabsession as cs

HEAVY = ("tensorflow", "keras", "jax", "torch", "numpy", "pydrive2", "googleapiclient", "psutil")


def test_all_is_sorted_and_resolves() -> None:
    """cs.keras imports Keras, and so TensorFlow: test_fit.py resolves it, in TensorFlow's
    process; the other framework modules say which extra they need where it is missing."""
    assert cs.__all__ == sorted(cs.__all__)
    for name in cs.__all__:
        if name == "keras":
            continue
        try:
            assert getattr(cs, name) is not None, name
        except cs.MissingDependencyError:
            assert name in ("hf", "torch"), name
    assert set(cs.__all__) <= set(dir(cs))


def test_unknown_attribute() -> None:
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        cs.nope  # noqa: B018


def test_errors_share_one_root() -> None:
    assert issubclass(cs.ConfigError, cs.ColabSessionError)
    assert issubclass(cs.ConfigError, ValueError)


def test_import_is_light() -> None:
    code = f"import sys, colabsession\nprint([m for m in {HEAVY!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_py_typed_marker() -> None:
    from importlib.resources import files

    assert files("colabsession").joinpath("py.typed").is_file()


def test_install_instructions_agree() -> None:
    """colabsession is not on the package index: the notebook's install cell, the README, the
    install page and the error messages all install from the repository named in pyproject."""
    import json
    import re
    from pathlib import Path

    from colabsession._version import INSTALL_URL

    root = Path(__file__).parents[1]
    source = re.search(r'^Source = "(.+)"$', (root / "pyproject.toml").read_text(), re.M)
    assert source is not None
    assert f"git+{source.group(1)}" == INSTALL_URL
    notebook = json.loads((root / "examples/colab_quickstart.ipynb").read_text())
    first = "".join(next(c for c in notebook["cells"] if c["cell_type"] == "code")["source"])
    install = next(line for line in first.splitlines() if line.startswith("%pip install"))
    assert install == f'%pip install -q "colabsession @ {INSTALL_URL}"'
    for doc in ("README.md", "docs/install.md"):
        text = (root / doc).read_text()
        assert install in text, doc
        assert "pip install colabsession" not in text, doc  # no such package on the index
        for line in text.splitlines():
            if "pip install" in line and "colabsession[" in line:
                assert re.search(r"colabsession\[[a-z,]+\] @ git\+", line), (doc, line)


def test_a_package_installed_without_its_extra_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Colab ships PyDrive2 without its fsspec extra: `import pydrive2.fs` fails on funcy, and
    the message must name funcy, not claim PyDrive2 is missing."""
    from colabsession._core.optional import require

    package = tmp_path / "cs_fake_pydrive"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "fs.py").write_text("import cs_missing_funcy\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(
        cs.MissingDependencyError, match=r"needs cs_missing_funcy .* installed, but without"
    ) as info:
        require("cs_fake_pydrive.fs", extra="drive", purpose="the Drive API", package="pydrive2")
    assert "colabsession[drive]" in str(info.value)
    assert (info.value.package, info.value.extra) == ("cs_missing_funcy", "drive")
    with pytest.raises(cs.MissingDependencyError, match="needs cs_absent, which is not installed"):
        require("cs_absent.fs", extra="drive", purpose="the Drive API")


FRAMEWORK_EXTRAS = ("torch", "hf", "jax")


def test_framework_extras_keep_what_colab_ships() -> None:
    """Colab's torch comes from PyTorch's own index (a +cu128 or +cpu build), which a dry run
    cannot fetch: benchmarks/colab_installs.py checks the other extras by installing; these are
    checked here, offline, against the published freezes: every requirement of the extras that an
    image ships is met by the image's own version, so pip keeps it."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
    from packaging.version import Version

    root = Path(__file__).parents[1]
    freezes = sorted((root.parent / "shared" / "colab-runtime").glob("*pip-freeze*.txt"))
    if not freezes:
        pytest.skip("Colab's pip freezes are not beside this checkout")
    extras = tomllib.loads((root / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    checked = 0
    for freeze in freezes:
        shipped = {}
        for line in freeze.read_text().splitlines():
            name, sep, version = line.partition("==")
            if not sep:
                name, sep, url = line.partition(" @ ")
                match = sep and re.search(r"-(\d+(?:\.\d+)+)(?:%2B|\+|-)", url)
                if not match:
                    continue
                version = match.group(1)
            shipped[canonicalize_name(name.strip())] = Version(version.strip()).public
        for extra in FRAMEWORK_EXTRAS:
            for line in extras[extra]:
                requirement = Requirement(line)
                have = shipped.get(canonicalize_name(requirement.name))
                if requirement.name == "colabsession" or have is None:
                    continue
                assert requirement.specifier.contains(have, prereleases=True), (
                    f"{freeze.name}: colabsession[{extra}] wants {requirement}, "
                    f"the image has {have}"
                )
                checked += 1
    assert checked >= len(freezes) * 4  # torch, transformers, accelerate, jax on every image

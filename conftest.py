"""Every ``>>>`` example in the package runs as a test (the package's modules only: the scripts in
tests/ import TensorFlow, which must stay out of the main test process; see tests/isolation.py).

A module that needs an optional dependency that is not installed is skipped. The modules whose
import brings TensorFlow in (the Keras integration) are not collected: their examples need a
Keras model and are skipped anyway. A module that starts to import TensorFlow fails the
collection, naming itself, so that it is added to them.

Each example runs in a fresh temporary folder, with colabsession's home in it (so ``drive:`` is
the local folder that stands in for Drive outside Colab, empty but for a small
``drive:datasets/flowers``), outside any notebook runtime, and with ``cs`` (the package) in its
namespace, as a user's notebook has it (and ``w``, ``train_step`` and ``total``, the
training loop's weights, step function and number of steps, for Checkpointer's example).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path

import pytest
from _pytest.doctest import DoctestItem, DoctestModule

from colabsession._core.errors import MissingDependencyError

PACKAGE = Path(__file__).parent / "colabsession"
# Relative to the package: importing them imports Keras and TensorFlow.
TENSORFLOW_MODULES = {"keras.py", "_training/keras.py"}


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    if file_path.suffix != ".py" or PACKAGE not in file_path.parents:
        return None
    if file_path.name == "__main__.py" or parent.config.option.doctestmodules:
        return None  # a module that runs on import; or pytest collects the doctests itself
    if file_path.relative_to(PACKAGE).as_posix() in TENSORFLOW_MODULES:
        return None
    module: pytest.Collector = PackageDoctests.from_parent(parent, path=file_path)
    return module


class PackageDoctests(DoctestModule):
    """The examples of one of the package's modules, imported without TensorFlow."""

    def collect(self) -> Iterable[DoctestItem]:
        before = "tensorflow" in sys.modules
        try:
            module = self.obj
        except self.CollectError as exc:  # an optional dependency missing: no examples to run
            if isinstance(exc.__cause__, MissingDependencyError):
                pytest.skip(str(exc.__cause__))
            raise
        lazy = module.__dict__.get("__dir__")  # the package lists its lazy names (cs.keras, ...)
        if lazy is not None:
            # pytest looks for fixtures by getattr on each name dir() gives: the names already
            # there, not every lazy one imported (Keras, and TensorFlow with it).
            module.__dir__ = lambda: list(module.__dict__)
        try:
            items = list(super().collect())
        finally:
            if lazy is not None:
                module.__dir__ = lazy
        if not before and "tensorflow" in sys.modules:
            raise pytest.UsageError(
                f"importing {self.path} for its doctests imported TensorFlow into the main test "
                "process: add it to TENSORFLOW_MODULES in conftest.py"
            )
        return items


@pytest.fixture(autouse=True)
def doctest_sandbox(request: pytest.FixtureRequest) -> None:
    if not isinstance(request.node, DoctestItem):
        return
    import colabsession
    from tests.sandbox import isolate

    tmp_path: Path = request.getfixturevalue("tmp_path")
    monkeypatch: pytest.MonkeyPatch = request.getfixturevalue("monkeypatch")
    isolate(tmp_path, monkeypatch)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    namespace = request.getfixturevalue("doctest_namespace")
    namespace["cs"] = colabsession
    # What a notebook's training loop has (Checkpointer's example): weights, a step, a length.
    namespace.update(w=[0.0, 1.0], train_step=lambda: 0.5, total=3)
    flowers = Path(colabsession.drive.resolve("drive:datasets/flowers").path)
    for kind in ("roses", "tulips"):
        (flowers / kind).mkdir(parents=True)
        for i in range(3):
            (flowers / kind / f"{i}.jpg").write_bytes(bytes(100 * (i + 1)))

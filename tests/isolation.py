"""TensorFlow's tests in a process of their own, apart from PyTorch's.

TensorFlow and PyTorch in one process is fragile: with TensorFlow 2.21 imported first, creating a
torch optimizer segfaults under torch 2.14.1 (a CUDA build with triton 3.8), which is what a plain
``pip install -e ".[all,test]"`` picks today. A user's notebook imports one of the two; the test
suite imports both. So a ``python -m pytest`` that selects tests of both kinds runs the modules
marked ``tensorflow`` in a child pytest after the others, and replays the child's reports here, as
pytest-xdist does: one progress line, one summary, one exit status. The child's own output goes
to a log that is shown if it dies.

While the child's tests are set aside, importing TensorFlow in this process is an error that
names the marker, so a test that forgot it fails clearly instead of crashing the run later.

>>> # a module of tests that import TensorFlow in-process:
>>> pytestmark = pytest.mark.tensorflow  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Generator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

MARKER = "tensorflow"
GROUP_VAR = "COLABSESSION_TEST_GROUP"
REPORTS_VAR = "COLABSESSION_TEST_REPORTS"


def in_child() -> bool:
    return os.environ.get(GROUP_VAR) == MARKER


def configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{MARKER}: imports TensorFlow in the test process (run apart from PyTorch's tests)",
    )
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up lines
    if in_child():
        set_up_tensorflow()
        writer = ReportWriter(config, Path(os.environ[REPORTS_VAR]))
        config.pluginmanager.register(writer, "cs-reports")
    else:
        config.pluginmanager.register(Isolation(config), "cs-isolation")


class ReportWriter:
    """In the child: each report as a JSON line, for the parent to replay."""

    def __init__(self, config: pytest.Config, path: Path) -> None:
        self.config = config
        self.file = path.open("a", encoding="utf-8")

    def _write(self, record: dict[str, Any]) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()

    @pytest.hookimpl
    def pytest_runtest_logstart(self, nodeid: str, location: tuple[str, int | None, str]) -> None:
        self._write({"event": "logstart", "nodeid": nodeid, "location": list(location)})

    @pytest.hookimpl
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        data = self.config.hook.pytest_report_to_serializable(config=self.config, report=report)
        self._write({"event": "report", "data": data})

    @pytest.hookimpl
    def pytest_runtest_logfinish(self, nodeid: str, location: tuple[str, int | None, str]) -> None:
        self._write({"event": "logfinish", "nodeid": nodeid, "location": list(location)})

    @pytest.hookimpl
    def pytest_unconfigure(self) -> None:
        self.file.close()


class Isolation:
    """In the parent: set the marked tests aside, then run them in a child and replay them."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.deferred: list[pytest.Item] = []

    @pytest.hookimpl(trylast=True)  # after -k, -m and the other deselections
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        marked = [item for item in items if item.get_closest_marker(MARKER) is not None]
        if not marked:
            return
        apart = (
            len(marked) < len(items)
            and not self.config.option.collectonly
            and importlib.util.find_spec(MARKER) is not None
        )
        if not apart:
            set_up_tensorflow()  # they run here: set TensorFlow up before it starts
            return
        self.deferred = marked
        items[:] = [item for item in items if item.get_closest_marker(MARKER) is None]
        sys.meta_path.insert(0, _Refuse())

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtestloop(self, session: pytest.Session) -> Generator[None, Any, None]:
        session.testscollected += len(self.deferred)  # the progress counts them
        yield
        if not self.deferred or session.shouldfail or session.shouldstop:
            return
        self._run_child(session)

    def _run_child(self, session: pytest.Session) -> None:
        hook = self.config.hook
        work = Path(tempfile.mkdtemp(prefix="cs-tf-tests-"))
        reports, log = work / "reports.jsonl", work / "output.log"
        reports.touch()
        args = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q"]
        maxfail = self.config.option.maxfail
        if maxfail:
            args.append(f"--maxfail={max(1, maxfail - session.testsfailed)}")
        args += [item.nodeid for item in self.deferred]
        env = {**os.environ, GROUP_VAR: MARKER, REPORTS_VAR: str(reports)}
        started: dict[str, tuple[str, int | None, str]] = {}
        finished: set[str] = set()
        with log.open("w") as out, reports.open(encoding="utf-8") as feed:
            child = subprocess.Popen(
                args, cwd=self.config.rootpath, env=env, stdout=out, stderr=subprocess.STDOUT
            )
            try:
                while True:
                    line = feed.readline()
                    if not line.endswith("\n"):  # nothing new (or half a line): wait
                        if line:
                            feed.seek(feed.tell() - len(line.encode()))
                        if child.poll() is not None and not feed.readline():
                            break
                        time.sleep(0.05)
                        continue
                    record = json.loads(line)
                    if record["event"] == "report":
                        data = record["data"]
                        if isinstance(data.get("longrepr"), list):  # a skip's (path, line, why)
                            data["longrepr"] = tuple(data["longrepr"])
                        report = hook.pytest_report_from_serializable(config=self.config, data=data)
                        hook.pytest_runtest_logreport(report=report)
                        continue
                    nodeid, location = record["nodeid"], tuple(record["location"])
                    if record["event"] == "logstart":
                        started[nodeid] = location
                        hook.pytest_runtest_logstart(nodeid=nodeid, location=location)
                    else:
                        finished.add(nodeid)
                        hook.pytest_runtest_logfinish(nodeid=nodeid, location=location)
            except BaseException:
                child.kill()
                child.wait()
                raise
        if child.returncode in (0, 1, 2, 5) and set(started) <= finished:
            return
        # The child died (a segfault, say): what it was running fails, with its output.
        tail = log.read_text(errors="replace")[-6000:]
        why = f"the TensorFlow test process ended with status {child.returncode}:\n{tail}"
        for item in self.deferred:
            if item.nodeid in finished:
                continue
            location = started.get(item.nodeid, item.location)
            if item.nodeid not in started:
                hook.pytest_runtest_logstart(nodeid=item.nodeid, location=location)
            report = pytest.TestReport(
                item.nodeid, location, {}, "failed", why, "call", [], user_properties=[]
            )
            hook.pytest_runtest_logreport(report=report)
            hook.pytest_runtest_logfinish(nodeid=item.nodeid, location=location)
            why = "not run: the TensorFlow test process had died"


class _Refuse(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Refuses ``import tensorflow`` in the process that runs PyTorch's tests. ``find_spec``
    still answers (colabsession asks it whether TensorFlow is installed); importing fails."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != MARKER:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> None:
        return None

    def exec_module(self, module: ModuleType) -> None:
        raise ImportError(
            "this test imports TensorFlow in the process that runs PyTorch's tests: mark its "
            f"module with `pytestmark = pytest.mark.{MARKER}` (see tests/isolation.py)",
            name=MARKER,
        )


def set_up_tensorflow() -> None:
    """Two logical CPUs for the MirroredStrategy test: TensorFlow takes this only before it
    starts."""
    try:
        import tensorflow as tf
    except ImportError:
        return
    (cpu,) = tf.config.list_physical_devices("CPU")[:1]
    with contextlib.suppress(RuntimeError):  # already started (a second session in a process)
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
        )

"""``cs.session()``: the first cell of every session brings back the environment, the datasets,
the caches and the run at once, and reports what each part did.

Each part runs in a daemon thread of its own (a handful: one per part), so their Drive reads
overlap; the call waits for them all, at most *timeout*, with one progress bar. A part that
fails is reported with what to do while the others go on. Parts done once in this process are
remembered: the same call again returns at once. Meanwhile one more thread imports the
framework the run's checkpoint needs (CPU work, while the parts mostly wait on Drive).
"""

from __future__ import annotations

import importlib
import logging
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from colabsession._core.errors import ColabSessionError, ConfigError
from colabsession._core.progress import bar
from colabsession._core.say import quiet, say
from colabsession._core.units import Duration, format_duration, parse_duration
from colabsession._runtime.runtime import home_dir
from colabsession._session.parts import (
    DEFAULT_ENV,
    CachePart,
    DataPart,
    EnvPart,
    Part,
    RunPart,
    Source,
    key_of,
)
from colabsession._storage.checkpointer import Checkpointer, CheckpointInfo, RunLike

logger = logging.getLogger(__name__)
TICK = 0.5  # seconds between two updates of the progress bar's list of running parts

_done: dict[
    tuple[str, Hashable], PartReport
] = {}  # what this process brought back already, by part
_lock = threading.Lock()


@dataclass(frozen=True)
class PartReport:
    """What one part of :func:`session` did: its ``name`` (``"env"``, ``"data:flowers"``,
    ``"cache"``, ``"run"``), whether it succeeded (``ok``), a one-line ``summary`` of what it
    brought back, the ``seconds`` it took, and when it failed the ``error``: what happened and
    what to do (the message of the :class:`ColabSessionError` it raised, kept in
    ``exception``). ``result`` is what it brought back (the :class:`cs.env.EnvInfo`, the staged
    folder's ``Path``, the caches' reports, the run's :class:`CheckpointInfo` or None);
    ``again`` says it was done by an earlier call in this process and not run again.

    >>> report["run"].ok, report["run"].summary          # doctest: +SKIP
    (True, 'step 1200 of drive:checkpoints/my-run (48.0 MiB) brought to the local disk')
    """

    name: str
    ok: bool
    summary: str
    seconds: float
    error: str | None = None
    result: Any = field(default=None, repr=False)
    again: bool = False
    exception: BaseException | None = field(default=None, repr=False, compare=False)

    def __str__(self) -> str:
        state = "ok" if self.ok else "FAILED"
        took = "earlier" if self.again else format_duration(self.seconds, precise=True)
        return f"{self.name}: {state} ({took}): {self.summary if self.ok else self.error}"


@dataclass(frozen=True)
class SessionReport:
    """What :func:`session` did: one :class:`PartReport` per part, in the order asked, the
    ``seconds`` the call took, and ``paths``: where each dataset is on the local disk, by its
    source as given. ``report["env"]`` is one part's record.

    >>> report = cs.session(run="my-run", data="drive:datasets/flowers")  # doctest: +SKIP
    >>> report.ok, [p.name for p in report.failed]      # doctest: +SKIP
    (True, [])
    >>> report.paths["drive:datasets/flowers"]          # doctest: +SKIP
    PosixPath('/content/.colabsession/datasets/flowers-1a2b3c4d')
    """

    parts: tuple[PartReport, ...]
    seconds: float
    paths: dict[str, Path] = field(default_factory=dict)
    """Where each dataset staged is on the local disk, by its source as given."""
    imported: tuple[str, ...] = ()
    """The modules this call imported while the parts ran (see *imports*)."""

    @property
    def ok(self) -> bool:
        """Whether every part succeeded."""
        return all(p.ok for p in self.parts)

    @property
    def failed(self) -> list[PartReport]:
        """The parts that failed, each with its ``error``."""
        return [p for p in self.parts if not p.ok]

    @property
    def checkpoint(self) -> CheckpointInfo | None:
        """The run's newest valid checkpoint, now on the local disk; None when the run has
        none (or no run was asked for)."""
        for part in self.parts:
            if part.name == "run" and isinstance(part.result, CheckpointInfo):
                return part.result
        return None

    def __getitem__(self, name: str) -> PartReport:
        for part in self.parts:
            if part.name == name:
                return part
        raise KeyError(f"no part {name!r}; the parts are {[p.name for p in self.parts]}")

    def __str__(self) -> str:
        lines = [f"session ready in {format_duration(self.seconds, precise=True)}"]
        if self.failed:
            lines[0] += f"; {len(self.failed)} of {len(self.parts)} part(s) FAILED"
        lines += [f"  {p}" for p in self.parts]
        if self.imported:
            lines.append(f"  imported meanwhile: {', '.join(self.imported)}")
        return "\n".join(lines)


def session(
    *,
    run: RunLike | Checkpointer | None = None,
    data: Source | Sequence[Source] = (),
    caches: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] = (),
    env: str | None = DEFAULT_ENV,
    env_location: Source | None = None,
    cache_location: Source | None = None,
    timeout: Duration = "30min",
    strict: bool = False,
    imports: str | Sequence[str] | None = "auto",
    _parts: Sequence[Part] = (),
) -> SessionReport:
    """Bring everything back at the start of a session, all at once, in one call: the
    environment (:func:`cs.env.restore`), the datasets (:func:`cs.data.stage`), the framework
    caches (``cs.cache.restore``) and the run (its newest valid checkpoint, read from Drive,
    verified and put on the local disk, so that ``ckpt.restore()`` then reads it there). The
    parts run at the same time, so their Drive reads overlap, under one progress bar; the
    report says what each brought back and how long it took.

    Run it before importing what the environment holds or what reads the caches (torch,
    transformers, ...): the environment goes ahead of the base on ``sys.path`` and a cache's
    variable (``HF_HOME``, ...) is read when its library is imported::

        import colabsession as cs
        report = cs.session(
            run="my-run", data="drive:datasets/flowers", caches=["huggingface"]
        )
        import torch, transformers  # after: from the environment, reading the caches

    While the parts run, the framework the run's checkpoint needs (torch for a PyTorch run) is
    imported in a thread of its own once the environment is active and the datasets staged,
    so that ``import torch`` afterwards finds it done: importing is CPU work, the copies of the
    caches and the checkpoint mostly wait on Drive.

    A part that fails is reported with what to do, and the others go on: the call raises
    nothing for it unless *strict* (then the first failed part's error, after the others
    finished). A second call in the same process returns at once: what succeeded is not done
    again (what failed is tried again).

    Args:
        run: the run (a name, a location, or a :class:`Checkpointer`) whose newest checkpoint
            is brought to the local disk; None: no run.
        data: a dataset or a list of them, each what :func:`cs.data.stage` takes; each is
            staged at the folder ``cs.data.stage`` gives it (``report.paths``, or the same
            ``cs.data.stage(source)`` again, which returns at once).
        caches: the caches to restore (``"huggingface"``, ``"torch"``, ``"keras"``,
            ``"datasets"`` or a folder), as ``cs.cache.restore`` takes them.
        env: the environment to restore; the default, ``"my_env"``, only when it was saved.
            None: no environment.
        env_location: where environments are kept (``cs.env``'s default when None).
        cache_location: where caches are kept (``cs.cache``'s default when None).
        timeout: the longest the call waits for its parts; a part still running then is
            reported as failed (it goes on in the background).
        strict: raise the first failed part's error instead of only reporting it.
        imports: modules to import meanwhile (the call waits for them too, at most
            *timeout*): ``"auto"``, the frameworks whose arrays the run's newest checkpoint
            holds (``torch``, ``jax``: its restore imports them anyway); a module's name or a
            list of them (``["torch", "transformers"]``); None: none. A module that fails to
            import is left alone: the call says nothing of it (its log does, at debug level)
            and your own ``import`` raises as it would have. Modules that must be imported
            in the main thread (those that set signal handlers) are not for this.
    """
    seconds = parse_duration(timeout, name="timeout")
    modules = _modules(imports)
    started = time.monotonic()
    sources = _listed(data)
    asked: list[tuple[str, Callable[[], Part]]] = []
    if env is not None:
        asked.append(("env", partial(EnvPart, env, env_location)))
    data_at: dict[str, int] = {}  # where each dataset's report will be
    for source in sources:
        data_at[str(source)] = len(asked)
        asked.append((f"data:{source}", partial(DataPart, source)))
    cache_names = _listed(caches)
    if cache_names:
        asked.append(("cache", partial(CachePart, cache_names, cache_location)))
    if run is not None:
        asked.append(("run", partial(RunPart, run)))
    home = str(home_dir())
    reports: list[PartReport | None] = []
    todo: list[tuple[int, Part, tuple[str, Hashable]]] = []
    parts: list[Part] = []
    # Built here, one after another: resolving their locations mounts Drive once.
    for name, build in asked:
        try:
            parts.append(build())
        except Exception as exc:  # reported as that part's failure, like one while it runs
            parts.append(_Failed(name, exc))
    parts.extend(_parts)
    for index, part in enumerate(parts):
        key = (home, key_of(part))
        with _lock:
            earlier = _done.get(key)
        reports.append(earlier and _again(earlier))
        if earlier is None:
            todo.append((index, part, key))
    importer = _importer(modules, [p for _, p, _ in todo])
    if todo or importer is not None:
        finished = _run_all([p for _, p, _ in todo], seconds, importer)
        for (index, _, key), outcome in zip(todo, finished, strict=True):
            reports[index] = outcome
            if outcome.ok:
                with _lock:
                    _done[key] = outcome
    done = tuple(r for r in reports if r is not None)
    paths = {s: done[i].result for s, i in data_at.items() if isinstance(done[i].result, Path)}
    imported = tuple(importer.imported) if importer is not None else ()
    report = SessionReport(done, time.monotonic() - started, paths, imported)
    if todo or imported:
        for line in str(report).splitlines():
            say(line)
    if strict and report.failed:
        first = report.failed[0]
        raise first.exception or ColabSessionError(first.error or f"{first.name} failed")
    return report


class _Importer:
    """Imports modules in a thread of its own while the parts run: once the events *after* are
    set, the modules *names* gives then, skipping those imported already. The session waits
    for it: a user's ``import torch.nn`` does not wait for a ``torch`` that another thread is
    still importing (only ``import torch`` does), and would meet it half-initialised."""

    def __init__(self, names: Callable[[], Sequence[str]], after: Sequence[threading.Event]):
        self.names, self.after = names, after
        self.imported: list[str] = []
        self.current: str | None = None

    def run(self, deadline: float) -> None:
        for event in self.after:
            event.wait(max(0.0, deadline - time.monotonic()))
        for name in self.names():
            if name in sys.modules or time.monotonic() >= deadline:
                continue
            self.current = name
            try:
                importlib.import_module(name)
            except BaseException:  # the user's own import raises it again
                logger.debug("colabsession: importing %s ahead failed", name, exc_info=True)
            else:
                self.imported.append(name)
        self.current = None


def _modules(imports: str | Sequence[str] | None) -> str | tuple[str, ...]:
    """*imports* checked: ``"auto"`` or the module names."""
    if imports is None:
        return ()
    names = (imports,) if isinstance(imports, str) else tuple(imports)
    for name in names:
        if not isinstance(name, str) or not all(p.isidentifier() for p in name.split(".")):
            raise ConfigError(
                f"imports: {name!r} is not a module's name: give names such as 'torch', "
                "'auto' (the run's framework) or None",
                name="imports",
            )
    return "auto" if names == ("auto",) else names


def _importer(modules: str | tuple[str, ...], parts: Sequence[Part]) -> _Importer | None:
    """The importer for *modules* (``"auto"``: the run part's frameworks) beside *parts*, or
    None when there is nothing to import.

    It waits for the environment (its packages go ahead on ``sys.path``) and for the datasets:
    importing, like unpacking many small files, runs Python code and takes the GIL between
    short system calls, and two such threads slow each other down several times (each waits
    for the other's switch interval after every call). The caches' and the run's copies, big
    reads hashed in C without the GIL, are what it overlaps."""
    after = [p.finished for p in parts if isinstance(p, (EnvPart, DataPart))]
    if modules == "auto":
        run = next((p for p in parts if isinstance(p, RunPart)), None)
        if run is None:
            return None
        after.append(run.found)
        return _Importer(lambda: run.frameworks, after)
    names = tuple(n for n in modules if n not in sys.modules)
    return _Importer(lambda: names, after) if names else None


class _Failed:
    """A part that could not even be built (a malformed argument, Drive not mounted)."""

    def __init__(self, name: str, error: Exception) -> None:
        self.name, self.error = name, error
        self.key = ("failed", name, id(self))

    def run(self) -> str:
        raise self.error


def _listed(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, (str, os.PathLike)) or not isinstance(value, Sequence):
        return [value]
    return list(value)


def _again(report: PartReport) -> PartReport:
    return PartReport(
        report.name, report.ok, report.summary, report.seconds, report.error, report.result, True
    )


def _run_all(
    parts: Sequence[Part], timeout: float, importer: _Importer | None = None
) -> list[PartReport]:
    """Run *parts* at once, each in a daemon thread, under one bar and :func:`quiet`; their
    reports in their order. A part still running after *timeout* seconds is reported as failed
    and left to finish alone; so is *importer*, which runs beside them."""
    results: queue.Queue[tuple[int, PartReport | None]] = queue.Queue()
    reports: dict[int, PartReport] = {}
    importing = importer is not None
    # The bar is made before quiet() begins, which hides the parts' own bars and messages.
    with bar(len(parts), "colabsession: session", unit="part") as shown, quiet():
        began = time.monotonic()
        for index, part in enumerate(parts):
            threading.Thread(
                target=_work,
                args=(index, part, results),
                name=f"colabsession-session-{part.name}",
                daemon=True,
            ).start()
        if importer is not None:
            threading.Thread(
                target=_import,
                args=(importer, began + timeout, results),
                name="colabsession-session-import",
                daemon=True,
            ).start()
        while len(reports) < len(parts) or importing:
            left = began + timeout - time.monotonic()
            if left <= 0:
                break
            try:
                index, report = results.get(timeout=min(TICK, left))
            except queue.Empty:
                pass
            else:
                if report is None:  # the importer is done
                    importing = False
                else:
                    reports[index] = report
                    shown.update(1)
            running = [p.name for i, p in enumerate(parts) if i not in reports]
            if importing and importer is not None and importer.current:
                running.append(f"importing {importer.current}")
            shown.set_postfix_str(", ".join(running), refresh=False)
    waited = time.monotonic() - began
    for index, part in enumerate(parts):
        if index not in reports:
            reports[index] = PartReport(
                part.name,
                False,
                "",
                waited,
                error=(
                    f"{part.name} did not finish within {format_duration(timeout)}; it goes on "
                    "in the background: run cs.session() again later (what it copied is kept), "
                    "or give a longer timeout"
                ),
            )
    return [reports[i] for i in range(len(parts))]


def _import(
    importer: _Importer, deadline: float, results: queue.Queue[tuple[int, PartReport | None]]
) -> None:
    try:
        importer.run(deadline)
    finally:
        results.put((-1, None))


def _work(index: int, part: Part, results: queue.Queue[tuple[int, PartReport | None]]) -> None:
    started = time.monotonic()
    try:
        summary = part.run()
    except ColabSessionError as exc:
        took = time.monotonic() - started
        results.put((index, PartReport(part.name, False, "", took, str(exc), exception=exc)))
    except BaseException as exc:  # a part's bug (even a SystemExit) must not hide the report
        took = time.monotonic() - started
        logger.warning("colabsession: %s failed", part.name, exc_info=True)
        error = f"{type(exc).__name__}: {exc} (unexpected: please report it with the traceback)"
        results.put((index, PartReport(part.name, False, "", took, error, exception=exc)))
    else:
        took = time.monotonic() - started
        result = getattr(part, "result", None)
        results.put((index, PartReport(part.name, True, summary, took, result=result)))

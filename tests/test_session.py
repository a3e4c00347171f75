"""cs.session: the environment, the datasets, the caches and the run brought back in one call, a
local folder standing in for Drive (and memory:// for a run's location, which needs a mirror)."""

from __future__ import annotations

import functools
import logging
import shutil
import sys
import threading
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fsspec.implementations.memory import MemoryFileSystem

import colabsession as cs
from colabsession._core.say import say
from colabsession._data.stage import staged_record

pytestmark = pytest.mark.usefixtures("clean_interpreter")


class Counting:
    """A part that counts its runs; it fails with *error* when given one."""

    def __init__(self, name: str, error: BaseException | None = None) -> None:
        self.name, self.error, self.runs = name, error, 0
        self.result = f"{name}-result"

    def run(self) -> str:
        self.runs += 1
        if self.error is not None:
            raise self.error
        return f"{self.name} done"


def save_run(location: str, steps: tuple[int, ...]) -> None:
    with cs.Checkpointer(location, every=None) as ckpt:
        for step in steps:
            ckpt.save(step, {"w": np.full(1000, step, np.float32)}, metrics={"loss": 1.0 / step})


def test_one_call_brings_back_env_data_and_run(
    isolated: Path, tmp_path: Path, pip_args: list[str]
) -> None:
    cs.env.install("cs-demo-a", pip_args=pip_args)
    folder = isolated / "drive" / "datasets" / "flowers"
    for index in range(20):
        (folder / f"class{index % 2}").mkdir(parents=True, exist_ok=True)
        (folder / f"class{index % 2}" / f"img{index}.jpg").write_bytes(bytes([index]) * 100)
    cs.data.pack("drive:datasets/flowers")
    run = f"memory://{tmp_path.name}/run"
    save_run(run, (1, 2))
    # A new runtime: nothing on the local disk.
    for local in ("envs", "checkpoints", "datasets"):
        shutil.rmtree(isolated / local, ignore_errors=True)
    sys.modules.pop("cs_demo_a", None)

    report = cs.session(run=run, data="drive:datasets/flowers")

    assert report.ok, report
    assert [p.name for p in report.parts] == ["env", "data:flowers", "run"]
    env, data, restored = report.parts
    assert isinstance(env.result, cs.env.EnvInfo)
    assert "'my_env' active" in env.summary
    import cs_demo_a  # type: ignore[import-not-found]

    assert cs_demo_a.VERSION == "1.0"
    path = report.paths["drive:datasets/flowers"]
    assert data.result == path
    record = staged_record(path)
    assert record is not None
    assert record.files == 22  # and the two class folders
    assert len(list(path.rglob("*.jpg"))) == 20
    assert "22 files" in data.summary
    assert cs.data.stage("drive:datasets/flowers") == path  # the same folder, staged already
    info = report.checkpoint
    assert info is not None
    assert info.step == 2
    assert Path(info.where).is_file()  # in the run's local mirror
    assert restored.result == info
    assert "step 2" in restored.summary
    assert "3.9 KiB" in restored.summary
    # The Checkpointer reads the newest checkpoint from the local disk now.
    ckpt = cs.Checkpointer(run, every=None)
    checkpoint = ckpt.restore()
    assert checkpoint is not None
    assert checkpoint.step == 2
    assert checkpoint.where == info.where
    assert (checkpoint.state["w"] == 2).all()
    ckpt.save(3, {"w": np.full(1000, 3, np.float32)})
    ckpt.close()  # the copy brought back is the location's own: nothing sent twice or set aside
    names = [
        p.rsplit("/", 1)[-1] for p in MemoryFileSystem().ls(f"/{tmp_path.name}/run", detail=False)
    ]
    assert sorted(n[:17] for n in names if n.startswith("ckpt-")) == [
        f"ckpt-{step:012d}" for step in (1, 2, 3)
    ]
    assert not [n for n in names if n.startswith("parked-")]
    assert all(p.seconds >= 0 and p.error is None for p in report.parts)


def test_run_part_skips_a_damaged_checkpoint(
    tmp_path: Path, isolated: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run = f"memory://{tmp_path.name}/run"
    save_run(run, (1, 2))
    shutil.rmtree(isolated / "checkpoints")
    fs = MemoryFileSystem()
    files = fs.ls(f"/{tmp_path.name}/run", detail=False)
    (newest,) = [p for p in files if p.rsplit("/", 1)[-1].startswith("ckpt-000000000002.")]
    data = bytearray(fs.cat_file(newest))
    data[10] ^= 0xFF  # an array's byte: the trailer still reads, the checksum does not match
    fs.pipe_file(newest, bytes(data))
    with caplog.at_level(logging.WARNING):
        report = cs.session(run=run, env=None)
    assert report.ok
    assert report.checkpoint is not None
    assert report.checkpoint.step == 1
    assert "skipping checkpoint step 2" in caplog.text
    mirror = Path(report.checkpoint.where).parent
    assert [p.name for p in mirror.iterdir() if "ckpt-" in p.name] == [
        Path(report.checkpoint.where).name
    ]  # the damaged copy was not kept, nor its temporary file


def test_run_part_brings_a_checkpoints_parts_first(tmp_path: Path, isolated: Path) -> None:
    from colabsession._drive.location import Location
    from colabsession._storage import layout
    from colabsession._storage.serialize import crc32c
    from colabsession._storage.store import Store

    fs = MemoryFileSystem()
    store = Store(Location(fs, f"/{tmp_path.name}/run", "memory-run"), timeout=30)
    store.makedirs()
    shards = [b"rank 0's shards", b"rank 1's"]
    parts = [layout.Part(layout.part_name(7), len(d), crc32c(d)) for d in shards]
    for part, data in zip(parts, shards, strict=True):
        store.write(part.file, data)
    store.commit(
        layout.file_name(7),
        lambda f: layout.write(
            f, [], step=7, time=1.0, session="s", metrics={}, tree={}, parts=parts
        ),
    )
    report = cs.session(run=f"memory://{tmp_path.name}/run", env=None)
    assert report.checkpoint is not None
    assert report.checkpoint.step == 7
    mirror = Path(report.checkpoint.where).parent
    for part, data in zip(parts, shards, strict=True):
        assert (mirror / part.file).read_bytes() == data


@pytest.mark.parametrize("harm", ["damaged", "missing", "cut short"])
def test_run_part_skips_a_checkpoint_whose_part_is_harmed(
    tmp_path: Path, isolated: Path, caplog: pytest.LogCaptureFixture, harm: str
) -> None:
    """Each part is checked as it arrives: a checkpoint with a damaged, missing or cut-short
    part is skipped for the one before, and nothing of it stays in the local mirror."""
    from colabsession._drive.location import Location
    from colabsession._storage import layout
    from colabsession._storage.serialize import crc32c
    from colabsession._storage.store import Store

    fs = MemoryFileSystem()
    store = Store(Location(fs, f"/{tmp_path.name}/run", "memory-run"), timeout=30)
    store.makedirs()
    written: dict[int, list[layout.Part]] = {}
    names: dict[int, str] = {}

    def write(f: Any, *, step: int, parts: list[layout.Part]) -> Any:
        return layout.write(
            f, [], step=step, time=1.0, session="s", metrics={}, tree={}, parts=parts
        )

    for step in (6, 7):
        shards = [b"rank 0's shards %d" % step, b"rank 1's %d" % step]
        parts = [layout.Part(layout.part_name(step), len(d), crc32c(d)) for d in shards]
        for part, data in zip(parts, shards, strict=True):
            store.write(part.file, data)
        names[step] = layout.file_name(step)
        store.commit(names[step], functools.partial(write, step=step, parts=parts))
        written[step] = parts
    harmed = written[7][1].file
    path = f"/{tmp_path.name}/run/{harmed}"
    if harm == "damaged":
        fs.pipe_file(path, b"rank 1's 8")  # the same size, another checksum
    elif harm == "missing":
        fs.rm_file(path)
    else:
        fs.pipe_file(path, b"rank 1")
    with caplog.at_level(logging.WARNING):
        report = cs.session(run=f"memory://{tmp_path.name}/run", env=None)
    assert report.ok
    assert report.checkpoint is not None
    assert report.checkpoint.step == 6
    assert "skipping checkpoint step 7" in caplog.text
    assert harmed in caplog.text
    mirror = Path(report.checkpoint.where).parent
    here = {p.name for p in mirror.iterdir()}
    assert here >= {p.file for p in written[6]}
    assert not here & {harmed, names[7]}
    assert not [n for n in here if n.endswith(".tmp")]


def test_a_run_with_nothing_saved_is_a_new_run(tmp_path: Path) -> None:
    report = cs.session(run=f"memory://{tmp_path.name}/new", env=None)
    assert report.ok
    assert report.checkpoint is None
    assert "nothing saved" in report["run"].summary


def test_a_failing_part_is_reported_with_its_fix_while_others_proceed(
    capsys: pytest.CaptureFixture[str],
) -> None:
    failing = Counting("flaky", cs.DataError("the shard is damaged: run cs.data.pack() again"))
    buggy = Counting("buggy", RuntimeError("oops"))
    fine = Counting("fine")
    report = cs.session(env=None, _parts=[failing, fine, buggy])
    assert not report.ok
    assert [p.name for p in report.failed] == ["flaky", "buggy"]
    assert report["flaky"].error == "the shard is damaged: run cs.data.pack() again"
    assert isinstance(report["flaky"].exception, cs.DataError)
    assert report["flaky"].summary == ""
    assert report["buggy"].error is not None
    assert "RuntimeError: oops" in report["buggy"].error
    assert report["fine"].ok
    assert report["fine"].summary == "fine done"
    assert report["fine"].result == "fine-result"
    assert fine.runs == 1
    out = capsys.readouterr().out
    assert "2 of 3 part(s) FAILED" in out
    assert "flaky: FAILED" in out
    assert "run cs.data.pack() again" in out
    # strict: the first failed part's own error, once the others are done
    again = Counting("flaky", cs.DataError("still damaged"))
    with pytest.raises(cs.DataError, match="still damaged"):
        cs.session(env=None, strict=True, _parts=[again])


def test_a_part_that_cannot_be_built_is_reported(isolated: Path) -> None:
    report = cs.session(run="exp/../v2", env=None, _parts=[Counting("fine")])
    assert [p.name for p in report.failed] == ["run"]
    assert "not a run name" in (report["run"].error or "")
    assert report["fine"].ok


def test_parts_run_at_the_same_time() -> None:
    both = threading.Barrier(2, timeout=30)  # broken if one part had to end before the other

    class Meets:
        def __init__(self, name: str) -> None:
            self.name = name

        def run(self) -> str:
            both.wait()
            return "met"

    report = cs.session(env=None, _parts=[Meets("a"), Meets("b")])
    assert report.ok, report


def test_parts_say_nothing_themselves(capsys: pytest.CaptureFixture[str]) -> None:
    class Talks:
        name = "talks"

        def run(self) -> str:
            say("a line of the part's own")
            return "said"

    cs.session(env=None, _parts=[Talks()])
    out = capsys.readouterr().out
    assert "a line of the part's own" not in out  # held back: the report says it once
    assert "talks: ok" in out
    say("after the session")
    assert "after the session" in capsys.readouterr().out


def test_second_call_returns_at_once() -> None:
    done, failing = Counting("done"), Counting("failing", cs.EnvError("try again"))
    first = cs.session(env=None, _parts=[done, failing])
    assert [p.again for p in first.parts] == [False, False]
    second = cs.session(env=None, _parts=[done, failing])
    assert done.runs == 1  # remembered: not run again
    assert failing.runs == 2  # what failed is tried again
    assert second["done"].again
    assert second["done"].summary == "done done"
    assert not second["failing"].again
    assert "earlier" in str(second["done"])


def test_a_part_past_the_timeout_is_reported_and_left_running() -> None:
    release = threading.Event()

    class Stuck:
        name = "stuck"

        def run(self) -> str:
            release.wait(30)
            return "late"

    try:
        report = cs.session(env=None, timeout="0.1s", _parts=[Stuck(), Counting("fine")])
        assert report["fine"].ok
        assert not report["stuck"].ok
        assert "did not finish within" in (report["stuck"].error or "")
    finally:
        release.set()


def test_caches_go_to_cs_cache(monkeypatch: pytest.MonkeyPatch, isolated: Path) -> None:
    calls: list[tuple[Any, ...]] = []

    def restore(*caches: Any, location: Any = None) -> list[Any]:
        calls.append((caches, location))
        return [types.SimpleNamespace(summary=f"{c}: 2 files") for c in caches]

    fake = types.ModuleType("colabsession.cache")
    fake.restore = restore  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "colabsession.cache", fake)
    where = isolated / "caches"
    report = cs.session(env=None, caches=["huggingface", "torch"], cache_location=where)
    assert calls == [(("huggingface", "torch"), where)]
    assert report["cache"].summary == "huggingface: 2 files; torch: 2 files"
    assert len(report["cache"].result) == 2


def test_a_real_cache_is_summed_up_in_a_few_words(isolated: Path) -> None:
    # The part once put the CacheReport's repr, every field of it, in its summary.
    folder = isolated / "my-cache"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "weights.bin").write_bytes(b"w" * 5000)
    (folder / "config.json").write_text("{}")
    cs.cache.save(folder, location=isolated / "caches")
    shutil.rmtree(folder)
    report = cs.session(env=None, caches=[folder], cache_location=isolated / "caches")
    summary = report["cache"].summary
    assert report["cache"].ok, report["cache"].error
    assert summary.endswith(": 2 files, 4.9 KiB"), summary
    assert "CacheReport" not in summary
    assert (folder / "sub" / "weights.bin").read_bytes() == b"w" * 5000


def test_report_records() -> None:
    part = cs.PartReport("env", True, "environment 'my_env' active", 1.25)
    failed = cs.PartReport("run", False, "", 0.5, error="cannot list it: run it again")
    report = cs.SessionReport((part, failed), 2.0)
    assert not report.ok
    assert report.failed == [failed]
    assert report["env"] is part
    with pytest.raises(KeyError, match="the parts are"):
        report["data"]
    assert report.paths == {}
    assert report.checkpoint is None
    text = str(report)
    assert "1 of 2 part(s) FAILED" in text
    assert "env: ok" in text
    assert "run: FAILED" in text
    assert "cannot list it: run it again" in text


def test_run_may_be_a_checkpointer_with_its_own_local_folder(tmp_path: Path) -> None:
    run = f"memory://{tmp_path.name}/run"
    save_run(run, (1,))
    ckpt = cs.Checkpointer(run, every=None, local_dir=tmp_path / "mine")
    report = cs.session(run=ckpt, env=None)
    assert report.checkpoint is not None
    assert Path(report.checkpoint.where).parent == tmp_path / "mine"
    restored = ckpt.restore()
    assert restored is not None
    assert restored.where == report.checkpoint.where
    ckpt.close()

"""A checkpoint's part files (a sharded save's DCP files, issue 26) at the location: retention
takes them with their checkpoint however the checkpoint was sent, and parts no checkpoint names
(a save killed while they uploaded) do not stay there for ever."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import colabsession as cs
from colabsession._storage import layout
from colabsession._storage.replicate import ORPHAN_PARTS_AGE
from colabsession._storage.serialize import crc32c

from .fake_drive_api import FakeDrive
from .test_drive_confirm import linked, run_on_mount  # noqa: F401 (a fixture)


def save_with_parts(ckpt: cs.Checkpointer, step: int) -> list[str]:
    """Save *step* as the distributed path does: part files written in the local mirror, then
    the checkpoint that names them. The part files' names."""

    def later() -> tuple[dict[str, Any], list[layout.Part]]:
        parts = []
        for data in (b"rank 0 shard %d" % step, b"rank 1 shard %d" % step):
            part = layout.Part(layout.part_name(step), len(data), crc32c(data))
            (Path(ckpt.local_dir) / part.file).write_bytes(data)
            parts.append(part)
        return {"step": step}, parts

    ckpt.save(step, None, _later=later)
    ckpt.wait()
    (entry,) = [e for e in ckpt.local.entries() if e.step == step]
    return [p.file for p in entry.manifest.parts or []]


def test_parts_no_checkpoint_names_leave_the_location_after_a_while(tmp_path: Path) -> None:
    run = tmp_path / "drive" / "run"
    run.mkdir(parents=True)
    # A save killed on another runtime while its parts uploaded: the checkpoint file, sent
    # last, never came.
    orphans = [layout.part_name(1), layout.part_name(1)]
    for name in orphans:
        (run / name).write_bytes(b"half a shard")
    now = [0.0]
    ckpt = cs.Checkpointer(
        run, every=None, keep_last=1, local_dir=tmp_path / "vm", _monotonic=lambda: now[0]
    )
    assert ckpt.restore() is None
    kept = save_with_parts(ckpt, 2)
    assert ckpt.sync(30) == []
    # Not at once: a writer that took the run over could be uploading these.
    assert all((run / name).exists() for name in orphans)
    now[0] = ORPHAN_PARTS_AGE + 1
    newest = save_with_parts(ckpt, 3)
    assert ckpt.sync(30) == []
    ckpt.close()
    left = {p.name for p in run.iterdir() if layout.is_part_name(p.name)}
    assert left == set(newest)  # the orphans gone; step 2's parts went with step 2
    assert not set(kept) & left
    restored = cs.Checkpointer(run, every=None, local_dir=tmp_path / "vm2").restore()
    assert restored is not None
    assert restored.step == 3


def test_parts_a_checkpoint_names_stay_however_old(tmp_path: Path) -> None:
    run = tmp_path / "drive" / "run"
    now = [0.0]
    ckpt = cs.Checkpointer(
        run, every=None, keep_last=2, local_dir=tmp_path / "vm", _monotonic=lambda: now[0]
    )
    first = save_with_parts(ckpt, 1)
    assert ckpt.sync(30) == []
    for step in (2, 3):
        now[0] += 2 * ORPHAN_PARTS_AGE
        save_with_parts(ckpt, step)
        assert ckpt.sync(30) == []
    ckpt.close()
    left = {p.name for p in run.iterdir() if layout.is_part_name(p.name)}
    assert len(left) == 4  # steps 2 and 3, kept
    assert not set(first) & left


def on_drive(fake_drive: FakeDrive, names: list[str]) -> list[str]:
    """Which of *names* Drive holds, in the Trash or not (the Trash counts against quota)."""
    with fake_drive.state.lock:
        titles = {f["title"] for f in fake_drive.state.files.values()}
    return [n for n in names if n in titles]


@pytest.mark.parametrize("mount", ["down", "up"])
def test_retention_through_the_api_deletes_the_parts_for_good(
    linked: Any,  # noqa: F811
    fake_drive: FakeDrive,
    tmp_path: Path,
    mount: str,
) -> None:
    """The mount down, the API carries the checkpoints and retention deletes what it sent; the
    mount up, Drive confirms them and retention deletes them through the API. Either way the
    parts go with their checkpoint, for good: deleted on the mount they would sit in Drive's
    Trash, counting against the quota; left alone they stayed for ever."""
    ckpt = cs.Checkpointer(
        run_on_mount(linked), every=None, local_dir=tmp_path / "vm1", keep_last=1
    )
    ckpt.restore()
    if mount == "down":
        linked.drop()  # "Transport endpoint is not connected"
    parts = {}
    for step in (1, 2, 3):
        parts[step] = save_with_parts(ckpt, step)
        assert ckpt.sync(30) == []  # on Drive, parts and all
    ckpt.close()
    assert on_drive(fake_drive, parts[3]) == parts[3]
    assert on_drive(fake_drive, parts[1] + parts[2]) == []
    assert fake_drive.used()[1] == 0  # nothing in the Trash

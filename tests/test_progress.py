"""Long transfers report progress: one helper, a bar only for large and slow ones."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import colabsession as cs
from colabsession._core.progress import DELAY, LARGE, transfer


class Recorder:
    """A progress factory that keeps what each transfer reported."""

    def __init__(self) -> None:
        self.transfers: list[tuple[int, str, list[int]]] = []

    def __call__(self, total: int, desc: str) -> Recorder.Bar:
        updates: list[int] = []
        self.transfers.append((total, desc, updates))
        return Recorder.Bar(updates)

    class Bar:
        def __init__(self, updates: list[int]) -> None:
            self.updates = updates

        def update(self, n: float | None = 1) -> bool | None:
            self.updates.append(int(n or 0))
            return None

        def __enter__(self) -> Recorder.Bar:
            return self

        def __exit__(self, *exc: object) -> None:
            return None

    def named(self, prefix: str) -> list[tuple[int, str, list[int]]]:
        return [t for t in self.transfers if t[1].startswith(prefix)]


def test_copying_and_restoring_a_large_checkpoint_report_progress(tmp_path: Path) -> None:
    location = f"memory://{tmp_path.name}/run"
    state = {"w": np.arange(3 << 20, dtype=np.float64)}  # 24 MiB: three chunks of 8 MiB
    saved = Recorder()
    with cs.Checkpointer(location, every=None, local_dir=tmp_path / "vm1", _progress=saved) as ck:
        ck.save(1, state)
    ((total, _, updates),) = saved.named("copying step 1")
    assert total > state["w"].nbytes  # with its manifest
    assert sum(updates) == total
    assert len(updates) > 1  # as it goes, not once at the end

    restored = Recorder()
    fresh = cs.Checkpointer(location, every=None, local_dir=tmp_path / "vm2", _progress=restored)
    found = fresh.restore()
    assert found is not None
    assert np.array_equal(found.state["w"], state["w"])
    ((total, _, updates),) = restored.named("restoring step 1")
    assert total >= state["w"].nbytes
    assert sum(updates) == total
    assert len(updates) > 1


def test_the_bar_shows_only_for_large_slow_transfers(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("tqdm")
    with transfer(LARGE - 1, "small") as bar:
        bar.update(LARGE - 1)
        assert bar.disable
    with transfer(LARGE, "large") as bar:
        shown: Any = bar
        assert not shown.disable
        assert shown.delay == DELAY  # nothing for a transfer done sooner
        bar.update(1)
    assert capsys.readouterr().err == ""

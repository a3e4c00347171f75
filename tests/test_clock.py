from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import psutil
import pytest
from pytest_mock import MockerFixture

import colabsession as cs


class FakeTime:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_defaults_twelve_hours_and_ninety_minutes() -> None:
    clock = cs.SessionClock(started=1000.0, _now=FakeTime(1000.0))
    assert clock.max_session == 12 * 3600
    assert clock.idle_limit == 90 * 60
    assert clock.elapsed == 0
    assert clock.remaining == 12 * 3600


def test_elapsed_remaining_deadline() -> None:
    fake = FakeTime(0.0)
    clock = cs.SessionClock(started=0.0, max_session="2h", _now=fake)
    fake.now = 1800.0
    assert clock.elapsed == 1800
    assert clock.remaining == 5400
    assert clock.deadline == datetime.fromtimestamp(7200, timezone.utc)
    fake.now = 10_000.0
    assert clock.remaining == 0  # never negative


def test_should_stop_with_margin() -> None:
    fake = FakeTime(0.0)
    clock = cs.SessionClock(started=0.0, max_session="1h", _now=fake)
    assert not clock.should_stop("10min")
    fake.now = 3000.0  # 10 min left
    assert clock.should_stop("10min")
    assert not clock.should_stop(60)
    assert clock.should_stop()  # default margin: 10 min


def test_started_as_datetime() -> None:
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    clock = cs.SessionClock(started=start, _now=FakeTime(start.timestamp() + 60))
    assert clock.elapsed == 60


def test_limits_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLABSESSION_MAX_SESSION", "24h")
    monkeypatch.setenv("COLABSESSION_IDLE_LIMIT", "30min")
    clock = cs.clock(started=0.0, _now=FakeTime(0.0))
    assert clock.max_session == 24 * 3600
    assert clock.idle_limit == 30 * 60
    assert cs.clock(started=0.0, max_session=3600).max_session == 3600  # argument wins


def test_malformed_environment_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLABSESSION_MAX_SESSION", "twelve hours")
    with pytest.raises(cs.ConfigError, match="COLABSESSION_MAX_SESSION"):
        cs.clock()


def test_started_from_pid1_on_colab(fake_colab: object, mocker: MockerFixture) -> None:
    process = mocker.patch.object(psutil, "Process")
    process.return_value.create_time.return_value = 123.0
    assert cs.clock().started == 123.0
    process.assert_called_with(1)


def test_started_from_interpreter_when_local(mocker: MockerFixture) -> None:
    process = mocker.patch.object(psutil, "Process")
    process.return_value.create_time.return_value = 456.0
    assert cs.clock().started == 456.0
    process.assert_called_with()


@pytest.mark.parametrize("marker", ["/.dockerenv", "/run/.containerenv", "KUBERNETES_SERVICE_HOST"])
def test_a_local_container_older_than_the_limit_does_not_end_the_session(
    marker: str, monkeypatch: pytest.MonkeyPatch, mocker: MockerFixture, tmp_path: Path
) -> None:
    """A dev container or CI runner up for two days: its PID 1 is no session start (the suite
    itself stopped every run at step 0 on a host up for more than 12 h)."""
    if marker.startswith("/"):
        real_exists = Path.exists
        mocker.patch.object(Path, "exists", lambda self: str(self) == marker or real_exists(self))
    else:
        monkeypatch.setenv(marker, "10.0.0.1")
    now = 1_000_000.0
    pid1 = mocker.Mock(create_time=mocker.Mock(return_value=now - 2 * 86400))
    own = mocker.Mock(create_time=mocker.Mock(return_value=now - 60))
    mocker.patch.object(psutil, "Process", side_effect=lambda pid=None: pid1 if pid == 1 else own)
    clock = cs.clock(_now=FakeTime(now))
    assert clock.started == now - 60
    assert not clock.should_stop()
    assert clock.remaining == pytest.approx(12 * 3600 - 60)


def test_pid1_hidden_falls_back_to_interpreter(
    monkeypatch: pytest.MonkeyPatch, mocker: MockerFixture
) -> None:
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Batch")
    real = psutil.Process

    def process(pid: int | None = None) -> psutil.Process:
        if pid == 1:
            raise psutil.AccessDenied(1)
        return real()

    mocker.patch.object(psutil, "Process", side_effect=process)
    assert cs.clock().started == real().create_time()


def test_real_clock_is_sane() -> None:
    clock = cs.clock()
    assert 0 <= clock.elapsed < 10 * 365 * 86400
    assert "remaining=" in repr(clock)
    assert set(clock.to_dict()) == {
        "started",
        "max_session",
        "idle_limit",
        "elapsed",
        "remaining",
        "deadline",
    }

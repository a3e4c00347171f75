"""How long this runtime has been up and how long it has left before Colab reclaims it."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from colabsession._core.deprecation import renamed_arguments
from colabsession._core.units import Duration, format_duration, parse_duration
from colabsession._runtime.runtime import RuntimeKind, detect_kind

ENV_MAX_SESSION = "COLABSESSION_MAX_SESSION"
ENV_IDLE_LIMIT = "COLABSESSION_IDLE_LIMIT"
DEFAULT_MAX_SESSION = 12 * 3600.0  # free Colab; paid tiers get up to 24 h, never guaranteed
KAGGLE_MAX_SESSION = 12 * 3600.0  # a Kaggle session on CPU or GPU, by Kaggle's own figures
KAGGLE_TPU_MAX_SESSION = 9 * 3600.0  # a Kaggle session on a TPU
DEFAULT_IDLE_LIMIT = 90 * 60.0  # the commonly quoted figure, not an official one
DEFAULT_MARGIN = 10 * 60.0


class SessionClock:
    """The session's start, its limit, and the time left.

    On Colab and Kaggle the session starts with PID 1, which survives kernel restarts just as
    their session limit does; elsewhere (containers included) the clock starts with this
    interpreter. Both can be overridden.

    The idle limit is only recorded: the kernel cannot see whether the browser tab is idle, so
    nothing here can tell how close an idle runtime is to being recycled.

    >>> clock = SessionClock(max_session="24h")
    >>> clock.should_stop(margin="15min")
    False

    Args:
        started: when the session began (a datetime, or seconds since the epoch).
        max_session: the session limit; default ``$COLABSESSION_MAX_SESSION``, else 12 h
            (Colab's free tier; Kaggle's sessions on CPU and GPU), 9 h on a Kaggle TPU.
        idle_limit: how long an idle runtime lives; default ``$COLABSESSION_IDLE_LIMIT``,
            else 90 min.
    """

    @renamed_arguments("cs.SessionClock", now="_now")
    def __init__(
        self,
        *,
        started: datetime | float | None = None,
        max_session: Duration | None = None,
        idle_limit: Duration | None = None,
        _now: Callable[[], float] = time.time,  # a test seam: seconds since the epoch
    ) -> None:
        self._now = _now
        if isinstance(started, datetime):
            self.started = started.timestamp()
        else:
            self.started = float(started) if started is not None else session_start()
        self.max_session = (
            parse_duration(max_session, name="max_session")
            if max_session is not None
            else _setting(None, ENV_MAX_SESSION, default_max_session(), "max_session")
        )
        self.idle_limit = _setting(idle_limit, ENV_IDLE_LIMIT, DEFAULT_IDLE_LIMIT, "idle_limit")

    @property
    def elapsed(self) -> float:
        """Seconds since the session started."""
        return max(0.0, self._now() - self.started)

    @property
    def remaining(self) -> float:
        """Seconds left before the session limit (never negative)."""
        return max(0.0, self.started + self.max_session - self._now())

    @property
    def deadline(self) -> datetime:
        """When the session limit is reached, in local time."""
        return datetime.fromtimestamp(self.started + self.max_session, timezone.utc).astimezone()

    def should_stop(self, margin: Duration = DEFAULT_MARGIN) -> bool:
        """True once no more than *margin* is left before the session limit."""
        return self.remaining <= parse_duration(margin, name="margin")

    def to_dict(self) -> dict[str, Any]:
        return {
            "started": datetime.fromtimestamp(self.started, timezone.utc)
            .astimezone()
            .isoformat(timespec="seconds"),
            "max_session": self.max_session,
            "idle_limit": self.idle_limit,
            "elapsed": self.elapsed,
            "remaining": self.remaining,
            "deadline": self.deadline.isoformat(timespec="seconds"),
        }

    def __repr__(self) -> str:
        return (
            f"SessionClock(elapsed={format_duration(self.elapsed)}, "
            f"remaining={format_duration(self.remaining)}, "
            f"deadline={self.deadline:%Y-%m-%d %H:%M %Z}, "
            f"max_session={format_duration(self.max_session)})"
        )


def clock(**kwargs: Any) -> SessionClock:
    """This session's clock; keyword arguments as for :class:`SessionClock`.

    >>> import colabsession as cs
    >>> cs.clock().remaining > 0
    True
    """
    return SessionClock(**kwargs)


def default_max_session(kind: RuntimeKind | None = None) -> float:
    """The session limit of this runtime when none is configured: Kaggle's 9 h on a TPU, else
    12 h (Kaggle on CPU or GPU, free Colab)."""
    if (kind or detect_kind()) == "kaggle":
        from colabsession._runtime.probe import tpu_attached

        return KAGGLE_TPU_MAX_SESSION if tpu_attached() else KAGGLE_MAX_SESSION
    return DEFAULT_MAX_SESSION


def session_start(kind: RuntimeKind | None = None) -> float:
    """When this session started, in seconds since the epoch: PID 1's start on a hosted runtime
    (Colab, Kaggle), whose limit counts from the VM's start and survives kernel restarts; this
    interpreter's start anywhere else.

    A local container is "anywhere else": its PID 1 can be days old (a dev container, a CI
    runner), and no platform limit counts from it, so taking it would put every deadline in the
    past and stop each run at its first step.
    """
    import psutil

    if (kind or detect_kind()) != "local":
        try:
            return psutil.Process(1).create_time()
        except (psutil.Error, OSError):  # PID 1 hidden (some sandboxes): use our own start
            pass
    return psutil.Process().create_time()


def _setting(value: Duration | None, env: str, default: float, name: str) -> float:
    if value is not None:
        return parse_duration(value, name=name)
    if raw := os.environ.get(env):
        return parse_duration(raw, name=env)
    return default

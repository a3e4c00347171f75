"""Progress bars (``tqdm.auto``: a widget in a notebook, text in a terminal), one helper for
every transfer colabsession makes: staging and packing data, restoring environments, restoring
and copying checkpoints, writing a Trainer's folder back.

A transfer that may be quick gets a bar only when it is large *and* slow: :func:`transfer`
shows nothing below :data:`LARGE` bytes, and nothing for the first :data:`DELAY` seconds, so a
small checkpoint (and every test) prints nothing, and a multi-GB one restored from Drive shows
how far it is.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from colabsession._core.say import is_quiet

LARGE = 256 << 20  # bytes: smaller checkpoints move in a second or two, without a bar
DELAY = 2.0  # seconds before a bar appears: a transfer done sooner shows none


class Progress(Protocol):
    """What a transfer reports to: a context manager with ``update(n)``, as a tqdm bar."""

    def update(self, n: float | None = 1) -> bool | None: ...

    def __enter__(self) -> Progress: ...

    def __exit__(self, *exc: object) -> None: ...


ProgressFactory = Callable[[int, str], Progress]
"""Makes a :class:`Progress` for a transfer of (total bytes, description); the seam through
which tests see what a transfer reports."""


def bar(
    total: int | None,
    desc: str,
    initial: int = 0,
    *,
    unit: str = "B",
    large: int = 0,
    delay: float = 0.0,
) -> Any:
    """A tqdm bar of *total* (bytes, or files with ``unit="files"``), removed when done; shown
    only when *total* is at least *large*, and only after *delay* seconds.

    >>> with bar(10 << 20, "copying shards") as shown:     # doctest: +SKIP
    ...     shown.update(4 << 20)
    """
    import warnings

    from tqdm.std import TqdmExperimentalWarning

    with warnings.catch_warnings():
        # tqdm.auto's choice without its asyncio mixin (nothing here iterates asynchronously):
        # importing asyncio is a third of a restore's fixed cost in a bare interpreter.
        warnings.simplefilter("ignore", category=TqdmExperimentalWarning)
        from tqdm.autonotebook import tqdm

    in_bytes = unit == "B"
    return tqdm(
        total=total,
        initial=initial,
        unit=unit,
        unit_scale=in_bytes,
        unit_divisor=1024 if in_bytes else 1000,
        desc=desc,
        leave=False,
        delay=delay,
        # Inside quiet() (cs.session runs its parts so, under one bar of its own) nothing shows.
        disable=is_quiet() or (total is not None and total < large),
    )


def transfer(total: int, desc: str) -> Any:
    """The bar of a transfer that may be quick (a checkpoint restored or copied): shown only
    when it is :data:`LARGE` and takes longer than :data:`DELAY` seconds.

    >>> with transfer(4 << 30, "restoring step 1200") as shown:     # doctest: +SKIP
    ...     shown.update(1 << 30)
    """
    return bar(total, desc, large=LARGE, delay=DELAY)

"""Renamed public names keep working for one release, with a DeprecationWarning that names the
new one."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


def warn_renamed(old: str, new: str, *, stacklevel: int = 3) -> None:
    """Say that *old* is deprecated in favour of *new* (both as the user writes them)."""
    warnings.warn(
        f"{old} is deprecated and will be removed in the next release: use {new}",
        DeprecationWarning,
        stacklevel=stacklevel,
    )


def renamed_arguments(what: str, /, **old_to_new: str) -> Callable[[F], F]:
    """Accept each old keyword argument as its new name, with a DeprecationWarning; both at
    once is a TypeError. *what* is the callable as users write it (``cs.Checkpointer``).

    >>> @renamed_arguments("f", location="run")
    ... def f(run: str) -> str:
    ...     return run
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     f(location="my-run")
    'my-run'
    >>> str(caught[0].message)
    'f(location=...) is deprecated and will be removed in the next release: use run='
    """

    def decorate(func: F) -> F:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            for old, new in old_to_new.items():
                if old not in kwargs:
                    continue
                if new in kwargs:
                    raise TypeError(f"{what}() got both {old}= and {new}=: give only {new}=")
                warn_renamed(f"{what}({old}=...)", f"{new}=")
                kwargs[new] = kwargs.pop(old)
            return func(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate

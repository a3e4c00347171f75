"""One exception hierarchy: every error colabsession raises on purpose is a ColabSessionError.

Each error carries, besides its message, what code needs to act on it, as keyword attributes
that are None where the raise site did not know them (``LeaseError.holder``,
``RunNotFoundError.runs``, ``DriveQuotaError.reason``, ...). Every error pickles: a round trip
gives the same message and attributes (a worker process can hand one to its parent).
"""

from __future__ import annotations


class ColabSessionError(Exception):
    """Base class of every error colabsession raises on purpose.

    The message always says what went wrong and what to do about it, so catching this one class
    and printing it is a complete error report::

        try:
            cs.require_accelerator("gpu")
        except cs.ColabSessionError as exc:
            print(exc)
    """


class ConfigError(ColabSessionError, ValueError):
    """A malformed argument or environment variable (a duration, a size, a location, ...).

    Attributes:
        name: the argument or variable that held the value, where known.
    """

    def __init__(self, *args: object, name: str | None = None) -> None:
        super().__init__(*args)
        self.name = name


class MissingDependencyError(ColabSessionError, ImportError):
    """An optional dependency is not installed; the message names the extra that brings it.

    Attributes:
        package: the PyPI package to install (``"matplotlib"``), where known.
        extra: the colabsession extra that brings it (``"plot"`` for ``colabsession[plot]``).
        name: the module that could not be imported, as for any ImportError.

    >>> try:
    ...     cs.plot_history("my-run")
    ... except cs.MissingDependencyError as exc:
    ...     print(exc.package, exc.extra)               # doctest: +SKIP
    matplotlib plot
    """

    def __init__(
        self,
        *args: object,
        package: str | None = None,
        extra: str | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(*args, name=name)
        self.package = package
        self.extra = extra


class AcceleratorNotFoundError(ColabSessionError):
    """The GPU or TPU that the code asks for is not attached to this runtime.

    Attributes:
        wanted: the accelerator asked for (``"gpu"`` or ``"tpu"``).
        found: the accelerator the runtime has instead (``"cpu"``, ``"tpu"``, ...), where known.
    """

    def __init__(self, *args: object, wanted: str | None = None, found: str | None = None) -> None:
        super().__init__(*args)
        self.wanted = wanted
        self.found = found


class DriveError(ColabSessionError):
    """Google Drive could not be reached, mounted or used.

    Attributes:
        path: the path on Drive (or the mountpoint) concerned, where known.
    """

    def __init__(self, *args: object, path: str | None = None) -> None:
        super().__init__(*args)
        self.path = path


class MountError(DriveError):
    """Colab's Drive mount failed; the message says how to fix it. ``path`` is the mountpoint."""


class MountTimeoutError(MountError, TimeoutError):
    """Drive did not answer in time while mounting, even after retries.

    Attributes:
        timeout: the seconds waited, where known.
    """

    def __init__(
        self, *args: object, path: str | None = None, timeout: float | None = None
    ) -> None:
        super().__init__(*args, path=path)
        self.timeout = timeout


class DriveAuthError(DriveError):
    """No usable Google credentials for the Drive API."""


class DriveAPIError(DriveError, OSError):
    """The Drive API refused a request for good (not a transient 5xx or rate limit).

    Attributes:
        status: the HTTP status of the refusal (403, 404, ...), where known.
        path: the path on Drive the request was for, where known.
    """

    def __init__(self, *args: object, path: str | None = None, status: int | None = None) -> None:
        super().__init__(*args, path=path)
        self.status = status


class DriveQuotaError(DriveAPIError):
    """Drive takes no more uploads from these credentials for now: the daily upload cap, a full
    Drive, or a service account (which owns no storage). Retrying soon does not help; the
    message says what does.

    Attributes:
        reason: the quota that was hit, as Drive names it (``"storageQuotaExceeded"``,
            ``"uploadLimitExceeded"``, ...), where known.
    """

    def __init__(
        self,
        *args: object,
        path: str | None = None,
        status: int | None = None,
        reason: str | None = None,
    ) -> None:
        super().__init__(*args, path=path, status=status)
        self.reason = reason


class CheckpointError(ColabSessionError):
    """A checkpoint cannot be saved or restored.

    Attributes:
        path: the checkpoint file or the run's folder concerned, where known.
    """

    def __init__(self, *args: object, path: str | None = None) -> None:
        super().__init__(*args)
        self.path = path


class RunNotFoundError(CheckpointError):
    """No run (no checkpoint and no history) at the location named; the message lists the runs
    that exist.

    Attributes:
        run: the run asked for, as given.
        runs: the runs that exist where it was looked for (a tuple of names), where known.

    >>> try:
    ...     cs.history("digits-cn")
    ... except cs.RunNotFoundError as exc:
    ...     print(exc.run, exc.runs)                    # doctest: +SKIP
    digits-cn ('digits-cnn',)
    """

    def __init__(
        self,
        *args: object,
        path: str | None = None,
        run: str | None = None,
        runs: tuple[str, ...] | None = None,
    ) -> None:
        super().__init__(*args, path=path)
        self.run = run
        self.runs = runs


class LeaseError(CheckpointError):
    """Another notebook holds the run's lease: two writers would overwrite each other.

    Attributes:
        holder: who holds the lease, as ``"host HOST, pid PID"``, where known.
        run: the run (its location) whose lease it is, where known.
    """

    def __init__(
        self,
        *args: object,
        path: str | None = None,
        holder: str | None = None,
        run: str | None = None,
    ) -> None:
        super().__init__(*args, path=path)
        self.holder = holder
        self.run = run


class EnvError(ColabSessionError):
    """A persistent environment cannot be built, saved or restored.

    Attributes:
        path: the environment's file or folder concerned, where known.
    """

    def __init__(self, *args: object, path: str | None = None) -> None:
        super().__init__(*args)
        self.path = path


class DataError(ColabSessionError):
    """A dataset cannot be packed or staged.

    Attributes:
        path: the file or folder concerned, where known.
    """

    def __init__(self, *args: object, path: str | None = None) -> None:
        super().__init__(*args)
        self.path = path


class CacheError(DataError):
    """A framework cache (Hugging Face, torch, Keras, ``datasets``, a folder) cannot be saved to
    Drive or restored from it.

    Attributes:
        cache: the cache's name (``"huggingface"``, or a folder's name and digest), where known.
        path: the file or folder concerned, where known.

    >>> try:
    ...     cs.cache.save("hugingface")
    ... except cs.CacheError as exc:
    ...     print(exc.cache)
    hugingface
    """

    def __init__(self, *args: object, path: str | None = None, cache: str | None = None) -> None:
        super().__init__(*args, path=path)
        self.cache = cache

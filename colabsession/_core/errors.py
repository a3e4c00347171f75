"""One exception hierarchy: every error colabsession raises on purpose is a ColabSessionError."""

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
    """A malformed argument or environment variable (a duration, a size, a location, ...)."""


class MissingDependencyError(ColabSessionError, ImportError):
    """An optional dependency is not installed; the message names the extra that brings it."""


class AcceleratorNotFoundError(ColabSessionError):
    """The GPU or TPU that the code asks for is not attached to this runtime."""


class DriveError(ColabSessionError):
    """Google Drive could not be reached, mounted or used."""


class MountError(DriveError):
    """Colab's Drive mount failed; the message says how to fix it."""


class MountTimeoutError(MountError, TimeoutError):
    """Drive did not answer in time while mounting, even after retries."""


class DriveAuthError(DriveError):
    """No usable Google credentials for the Drive API."""


class DriveAPIError(DriveError, OSError):
    """The Drive API refused a request for good (not a transient 5xx or rate limit)."""


class DriveQuotaError(DriveAPIError):
    """Drive takes no more uploads from these credentials for now: the daily upload cap, a full
    Drive, or a service account (which owns no storage). Retrying soon does not help; the
    message says what does."""


class CheckpointError(ColabSessionError):
    """A checkpoint cannot be saved or restored."""


class RunNotFoundError(CheckpointError):
    """No run (no checkpoint and no history) at the location named; the message lists the runs
    that exist."""


class LeaseError(CheckpointError):
    """Another notebook holds the run's lease: two writers would overwrite each other."""


class EnvError(ColabSessionError):
    """A persistent environment cannot be built, saved or restored."""


class DataError(ColabSessionError):
    """A dataset cannot be packed or staged."""

"""The one record of a mixed-precision choice, for Keras (``cs.precision()``) and PyTorch
(``cs.torch.precision()``) alike."""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from typing import Any, Literal

from colabsession._core.errors import ConfigError
from colabsession._core.optional import require

Policy = Literal["float32", "mixed_float16", "mixed_bfloat16"]
POLICIES: tuple[Policy, ...] = ("float32", "mixed_float16", "mixed_bfloat16")


@dataclass(frozen=True, eq=False)
class Precision:
    """The mixed precision chosen for this runtime, and why: ``policy`` is Keras' name for it
    (``"float32"``, ``"mixed_float16"`` or ``"mixed_bfloat16"``), ``why`` says what it was chosen
    for, and ``device`` is the ``torch.device`` to train on (None from ``cs.precision()``, which
    sets Keras' global policy). ``str()`` of it is the policy.

    >>> p = cs.torch.precision()                         # doctest: +SKIP
    >>> p.policy, p.device                               # doctest: +SKIP
    ('mixed_float16', device(type='cuda'))
    >>> scaler = p.scaler()                              # doctest: +SKIP
    >>> with p.autocast():                               # doctest: +SKIP
    ...     loss = loss_fn(model(x.to(p.device)), y.to(p.device))
    """

    policy: Policy
    why: str
    device: Any = None

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ConfigError(
                f"unknown precision policy {self.policy!r}: use float32, mixed_float16 or "
                "mixed_bfloat16",
                name="policy",
            )

    @property
    def dtype(self) -> Any:
        """The torch dtype of autocast: ``torch.bfloat16``, ``torch.float16``, or None for
        float32 (imports torch only for a mixed policy)."""
        if self.policy == "float32":
            return None
        torch = require("torch", extra="torch", purpose="Precision.dtype")
        return torch.bfloat16 if self.policy == "mixed_bfloat16" else torch.float16

    def autocast(self) -> Any:
        """``torch.autocast`` for the device and dtype (a no-op context for float32)."""
        if self.policy == "float32":
            return contextlib.nullcontext()
        torch = require("torch", extra="torch", purpose="Precision.autocast()")
        return torch.autocast(self._device_type(), dtype=self.dtype)

    def scaler(self) -> Any:
        """A GradScaler, enabled only for float16 (bfloat16 needs none)."""
        torch = require("torch", extra="torch", purpose="Precision.scaler()")
        enabled = self.policy == "mixed_float16"
        return torch.amp.GradScaler(self._device_type() if enabled else "cpu", enabled=enabled)

    def _device_type(self) -> str:
        if self.device is None:
            raise ConfigError(
                "this Precision is Keras' policy (from cs.precision()) and names no device: "
                "for PyTorch take cs.torch.precision()"
            )
        return str(self.device.type)

    def __str__(self) -> str:
        return self.policy

    def __eq__(self, other: object) -> bool:
        if isinstance(other, str):
            warnings.warn(
                "comparing a Precision with a string is deprecated: compare its .policy "
                f"(cs.precision().policy == {other!r})",
                DeprecationWarning,
                stacklevel=2,
            )
            return self.policy == other
        if isinstance(other, Precision):
            return (self.policy, self.why, str(self.device)) == (
                other.policy,
                other.why,
                str(other.device),
            )
        return NotImplemented

    def __hash__(self) -> int:
        return hash((self.policy, self.why, str(self.device)))

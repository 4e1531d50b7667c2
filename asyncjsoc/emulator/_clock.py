"""The emulator's clock: wall time, sped up by a scale factor and movable by hand."""

from __future__ import annotations

import time
from datetime import UTC, datetime

__all__ = ["Clock"]


class Clock:
    """Emulator time in epoch seconds.

    It starts at the wall time, runs ``scale`` times faster than the wall clock and can be moved
    forward with :meth:`advance` (e.g. to expire a 7-day-old export instantly).

    Parameters
    ----------
    scale : float
        Emulator seconds per wall second.
    """

    def __init__(self, scale: float = 1.0) -> None:
        self._anchor_real = time.monotonic()
        self._anchor_emu = time.time()
        self._scale = float(scale)

    @property
    def scale(self) -> float:
        """Emulator seconds per wall second."""
        return self._scale

    @scale.setter
    def scale(self, value: float) -> None:
        """Change the speed from now on without a jump in emulator time."""
        self._anchor_emu = self.now()
        self._anchor_real = time.monotonic()
        self._scale = float(value)

    def now(self) -> float:
        """Current emulator time (epoch seconds)."""
        return self._anchor_emu + (time.monotonic() - self._anchor_real) * self._scale

    def advance(self, seconds: float) -> None:
        """Move emulator time forward by ``seconds``."""
        if seconds < 0:
            raise ValueError("the clock only moves forward")
        self._anchor_emu += seconds

    def utcnow(self) -> datetime:
        """Current emulator time as an aware UTC datetime."""
        return datetime.fromtimestamp(self.now(), UTC)

    def wall_seconds(self, emulator_seconds: float) -> float:
        """How many wall seconds ``emulator_seconds`` take at the current scale."""
        return emulator_seconds / self._scale if self._scale > 0 else float("inf")

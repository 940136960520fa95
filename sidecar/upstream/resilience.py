"""Per-endpoint protection: a circuit breaker that fails fast after repeated failures, and an in-flight cap."""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass
class CircuitBreaker:
    """Opens after `threshold` consecutive failures; after `open_seconds` lets one trial request through."""

    threshold: int
    open_seconds: float
    state: BreakerState = BreakerState.CLOSED
    failures: int = 0
    opened_at: float = 0.0
    _trial_in_flight: bool = field(default=False, repr=False)

    def allow(self) -> bool:
        """Whether a request may go upstream now; a half-open breaker admits a single trial."""
        if self.state is BreakerState.CLOSED:
            return True
        if self.state is BreakerState.OPEN and time.monotonic() - self.opened_at >= self.open_seconds:
            self.state = BreakerState.HALF_OPEN
            self._trial_in_flight = False
        if self.state is BreakerState.HALF_OPEN and not self._trial_in_flight:
            self._trial_in_flight = True
            return True
        return False

    def retry_after_seconds(self) -> float:
        return max(0.0, self.open_seconds - (time.monotonic() - self.opened_at))

    def record_success(self) -> None:
        self.state = BreakerState.CLOSED
        self.failures = 0
        self._trial_in_flight = False

    def record_failure(self) -> None:
        self.failures += 1
        if self.state is BreakerState.HALF_OPEN or self.failures >= self.threshold:
            self.state = BreakerState.OPEN
            self.opened_at = time.monotonic()
            self._trial_in_flight = False

    def release_trial(self) -> None:
        """A half-open trial ended without a verdict (for example the caller cancelled)."""
        self._trial_in_flight = False


@dataclass
class InFlightLimit:
    """A cap on concurrent upstream requests: beyond it callers are refused, never queued."""

    limit: int
    in_flight: int = 0

    def try_acquire(self) -> bool:
        if self.in_flight >= self.limit:
            return False
        self.in_flight += 1
        return True

    def release(self) -> None:
        self.in_flight -= 1

"""Progress and cancellation plumbing shared by the CLI (progress bars) and the service (stage + percent)."""

from __future__ import annotations

from collections.abc import Callable

from twossp_core.errors import Cancelled

# (stage name, fraction of that stage done in [0, 1])
ProgressFn = Callable[[str, float], None]
# returns True when the run should stop at the next safe point
CancelFn = Callable[[], bool]


class Reporter:
    """Forwards stage progress to a callback and raises Cancelled at safe points when asked to stop."""

    def __init__(self, progress: ProgressFn | None = None, should_cancel: CancelFn | None = None) -> None:
        self._progress = progress
        self._should_cancel = should_cancel

    def update(self, stage: str, fraction: float) -> None:
        if self._progress is not None:
            self._progress(stage, min(max(fraction, 0.0), 1.0))

    def checkpoint(self) -> None:
        if self._should_cancel is not None and self._should_cancel():
            raise Cancelled("cancelled by request")

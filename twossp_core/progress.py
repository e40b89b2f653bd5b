"""Progress and cancellation plumbing shared by the CLI (progress bars) and the service (stage + percent)."""

from __future__ import annotations

import inspect
from collections.abc import Callable

from twossp_core.errors import Cancelled

# (stage name, fraction of that stage done in [0, 1]); a callback may take a third argument, `detail`, a short
# text about the current step (the heal sends "step 12/200 loss 1.2345"), which is passed when there is one
ProgressFn = Callable[..., None]
# returns True when the run should stop at the next safe point
CancelFn = Callable[[], bool]


def takes_detail(fn: Callable[..., None]) -> bool:
    """Whether a progress callback accepts a third positional argument (the detail text)."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return False
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params):
        return True
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 3


class Reporter:
    """Forwards stage progress to a callback and raises Cancelled at safe points when asked to stop."""

    def __init__(self, progress: ProgressFn | None = None, should_cancel: CancelFn | None = None) -> None:
        self._progress = progress
        self._should_cancel = should_cancel
        self._with_detail = progress is not None and takes_detail(progress)

    def update(self, stage: str, fraction: float, detail: str | None = None) -> None:
        if self._progress is not None:
            fraction = min(max(fraction, 0.0), 1.0)
            if detail is not None and self._with_detail:
                self._progress(stage, fraction, detail)
            else:
                self._progress(stage, fraction)

    def checkpoint(self) -> None:
        if self._should_cancel is not None and self._should_cancel():
            raise Cancelled("cancelled by request")


class PrefixReporter(Reporter):
    """Names a part of a job's stages `<prefix>/<stage>` (a sweep's run, the heal's control) and shares the
    parent's callback and cancellation."""

    def __init__(self, parent: Reporter, prefix: str) -> None:
        super().__init__()
        self.parent, self.prefix = parent, prefix

    def update(self, stage: str, fraction: float, detail: str | None = None) -> None:
        self.parent.update(f"{self.prefix}/{stage}", fraction, detail)

    def checkpoint(self) -> None:
        self.parent.checkpoint()

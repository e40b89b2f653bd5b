"""Turning pipeline stage callbacks into an overall percent and per-stage timings."""

from __future__ import annotations

import time

# share of the whole job per stage, in pipeline order; unknown stages keep the last known position
STAGE_WEIGHTS: dict[str, float] = {
    "load": 5,
    "calibration": 5,
    "evaluate_dense": 15,
    "stage1": 25,
    "stage2": 25,
    "evaluate_pruned": 15,
    "export": 5,
    "upload": 5,
}
_TOTAL = sum(STAGE_WEIGHTS.values())
_START: dict[str, float] = {}
_acc = 0.0
for _name, _weight in STAGE_WEIGHTS.items():
    _START[_name] = _acc
    _acc += _weight


class ProgressTracker:
    """Thread-safe enough for one writer (the pipeline) and one reader (the heartbeat)."""

    def __init__(self) -> None:
        self.stage: str | None = None
        self.percent = 0.0
        self.timings: dict[str, float] = {}
        self._stage_started = time.monotonic()

    def update(self, stage: str, fraction: float) -> None:
        now = time.monotonic()
        if stage != self.stage:
            if self.stage is not None:
                self.timings[self.stage] = round(self.timings.get(self.stage, 0.0) + now - self._stage_started, 3)
            self.stage = stage
            self._stage_started = now
        if stage in STAGE_WEIGHTS:
            done = _START[stage] + STAGE_WEIGHTS[stage] * min(max(fraction, 0.0), 1.0)
            self.percent = max(self.percent, 100.0 * done / _TOTAL)

    def finish(self) -> None:
        if self.stage is not None:
            now = time.monotonic()
            self.timings[self.stage] = round(self.timings.get(self.stage, 0.0) + now - self._stage_started, 3)
            self._stage_started = now

    def snapshot(self) -> tuple[str | None, float, dict[str, float]]:
        timings = dict(self.timings)
        return self.stage, round(self.percent, 2), timings

"""Turning pipeline stage callbacks into an overall percent and per-stage timings."""

from __future__ import annotations

import time
from collections.abc import Sequence

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

# a sweep: the shared setup (load, calibration, evaluate_dense) as for one job, then equal shares per run
SWEEP_SETUP = ("load", "calibration", "evaluate_dense")
_SETUP_PCT = 100.0 * sum(STAGE_WEIGHTS[s] for s in SWEEP_SETUP) / _TOTAL
_TAIL_PCT = {"comparison": (95.0, 2.5), "upload": (97.5, 2.5)}  # stage: (start, share) in percent
_RUNS_PCT = 95.0 - _SETUP_PCT
# within one run: the method's own stages, then evaluate_pruned; 2SSP's stage1/stage2 have their own slots
_RUN_SLOTS = {"stage1": (0.0, 25.0), "stage2": (25.0, 50.0), "evaluate_pruned": (50.0, 65.0)}
_RUN_OTHER = (0.0, 50.0)
_RUN_TOTAL = 65.0
STAGE_MAX_CHARS = 50  # jobs.stage column


def sweep_run_names(methods: Sequence[str], sparsities: Sequence[float]) -> list[str]:
    """Stage prefixes of a sweep's runs, in the order the sweep runs them (`method@sparsity`)."""
    return [f"{m}@{s:g}" for m in methods for s in sparsities]


class ProgressTracker:
    """Thread-safe enough for one writer (the pipeline) and one reader (the heartbeat)."""

    def __init__(self, runs: Sequence[str] = ()) -> None:
        """`runs`: for a sweep, the run prefixes its stage names carry (see sweep_run_names)."""
        self.runs = {name: i for i, name in enumerate(runs)}
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
        fraction = min(max(fraction, 0.0), 1.0)
        percent = self._sweep_percent(stage, fraction) if self.runs else None
        if percent is None and stage in STAGE_WEIGHTS:
            percent = 100.0 * (_START[stage] + STAGE_WEIGHTS[stage] * fraction) / _TOTAL
        if percent is not None:
            self.percent = max(self.percent, percent)

    def _sweep_percent(self, stage: str, fraction: float) -> float | None:
        if stage in SWEEP_SETUP:
            return 100.0 * (_START[stage] + STAGE_WEIGHTS[stage] * fraction) / _TOTAL
        if stage in _TAIL_PCT:
            start, share = _TAIL_PCT[stage]
            return start + share * fraction
        run, _, sub = stage.partition("/")
        if run not in self.runs:
            return None
        lo, hi = _RUN_SLOTS.get(sub, _RUN_OTHER)
        within = (lo + (hi - lo) * fraction) / _RUN_TOTAL
        return _SETUP_PCT + _RUNS_PCT * (self.runs[run] + within) / len(self.runs)

    def finish(self) -> None:
        if self.stage is not None:
            now = time.monotonic()
            self.timings[self.stage] = round(self.timings.get(self.stage, 0.0) + now - self._stage_started, 3)
            self._stage_started = now

    def snapshot(self) -> tuple[str | None, float, dict[str, float]]:
        timings = dict(self.timings)
        stage = None if self.stage is None else self.stage[:STAGE_MAX_CHARS]
        return stage, round(self.percent, 2), timings

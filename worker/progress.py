"""Turning pipeline stage callbacks into an overall percent and per-stage timings."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime

from service.records import StageMark

# share of the whole job per stage, in pipeline order; unknown stages keep the last known position; the heal
# stages count only in jobs that heal (see ProgressTracker)
STAGE_WEIGHTS: dict[str, float] = {
    "load": 5,
    "calibration": 5,
    "evaluate_dense": 15,
    "stage1": 25,
    "stage2": 25,
    "evaluate_pruned": 15,
    "heal_data": 2,
    "heal": 60,
    "evaluate_healed": 15,
    "export": 5,
    "upload": 5,
}
HEAL_STAGES = ("heal_data", "heal", "evaluate_healed")


def _starts(weights: dict[str, float]) -> dict[str, float]:
    starts, acc = {}, 0.0
    for name, weight in weights.items():
        starts[name] = acc
        acc += weight
    return starts


_TOTAL = sum(w for s, w in STAGE_WEIGHTS.items() if s not in HEAL_STAGES)
_START = _starts({s: w for s, w in STAGE_WEIGHTS.items() if s not in HEAL_STAGES})
_HEAL_TOTAL = sum(STAGE_WEIGHTS.values())
_HEAL_START = _starts(STAGE_WEIGHTS)

# a sweep: the shared setup (load, calibration, evaluate_dense) as for one job, then equal shares per run
SWEEP_SETUP = ("load", "calibration", "evaluate_dense")
_SETUP_PCT = 100.0 * sum(STAGE_WEIGHTS[s] for s in SWEEP_SETUP) / _TOTAL
_TAIL_PCT = {"comparison": (95.0, 2.5), "upload": (97.5, 2.5)}  # stage: (start, share) in percent
_RUNS_PCT = 95.0 - _SETUP_PCT
# within one run: the method's own stages, then evaluate_pruned (then the heal, when the sweep heals);
# 2SSP's stage1/stage2 have their own slots
_RUN_SLOTS = {"stage1": (0.0, 25.0), "stage2": (25.0, 50.0), "evaluate_pruned": (50.0, 65.0),
              "heal_data": (65.0, 67.0), "heal": (67.0, 127.0), "evaluate_healed": (127.0, 142.0)}
_RUN_OTHER = (0.0, 50.0)
_RUN_TOTAL = 65.0
_RUN_HEAL_TOTAL = 142.0
STAGE_MAX_CHARS = 50  # jobs.stage column


def sweep_run_names(methods: Sequence[str], sparsities: Sequence[float]) -> list[str]:
    """Stage prefixes of a sweep's runs, in the order the sweep runs them (`method@sparsity`)."""
    return [f"{m}@{s:g}" for m in methods for s in sparsities]


class ProgressTracker:
    """Thread-safe enough for one writer (the pipeline) and one reader (the heartbeat)."""

    def __init__(self, runs: Sequence[str] = (), *, heal: bool = False) -> None:
        """`runs`: for a sweep, the run prefixes its stage names carry (see sweep_run_names); `heal`: whether
        the job heals its models (the heal stages then take their share of the job)."""
        self.runs = {name: i for i, name in enumerate(runs)}
        self.heal = heal
        self._total, self._start = (_HEAL_TOTAL, _HEAL_START) if heal else (_TOTAL, _START)
        self.stage: str | None = None
        self.detail: str | None = None
        self.percent = 0.0
        self.timings: dict[str, float] = {}
        self.marks: list[StageMark] = []  # every stage start and end, in order (appended only)
        self._stage_started = time.monotonic()
        self._finished = False

    def _close_stage(self, now: float) -> None:
        if self.stage is not None:
            spent = now - self._stage_started
            self.timings[self.stage] = round(self.timings.get(self.stage, 0.0) + spent, 3)
            self.marks.append(StageMark("stage_finished", self.stage, datetime.now(UTC), spent))

    def update(self, stage: str, fraction: float, detail: str | None = None) -> None:
        """`detail`: what the stage is doing now (the heal's step and loss), shown after the stage name."""
        now = time.monotonic()
        self.detail = detail
        if stage != self.stage:
            self._close_stage(now)
            self.stage = stage
            self._stage_started = now
            self.marks.append(StageMark("stage_started", stage, datetime.now(UTC)))
        fraction = min(max(fraction, 0.0), 1.0)
        percent = self._sweep_percent(stage, fraction) if self.runs else None
        if percent is None and stage in self._start:
            percent = 100.0 * (self._start[stage] + STAGE_WEIGHTS[stage] * fraction) / self._total
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
        within = (lo + (hi - lo) * fraction) / (_RUN_HEAL_TOTAL if self.heal else _RUN_TOTAL)
        return _SETUP_PCT + _RUNS_PCT * (self.runs[run] + within) / len(self.runs)

    def finish(self) -> None:
        """Close the current stage (the job is over); it stays the reported stage."""
        if not self._finished:
            self._finished = True
            self._close_stage(time.monotonic())

    def snapshot(self) -> tuple[str | None, float, dict[str, float]]:
        timings = dict(self.timings)
        stage = self.stage if self.stage is None or self.detail is None else f"{self.stage} ({self.detail})"
        stage = None if stage is None else stage[:STAGE_MAX_CHARS]
        return stage, round(self.percent, 2), timings

"""Turning pipeline stage callbacks into an overall percent, per-stage timings and stage marks.

The stages and their weights come from the core (`twossp_core.plan.stages`: the pipeline's own, each method's from
the method registry); the service adds its upload. Percent only ever grows: a stage the plan does not know
(an older plan, a method that reports more than it declared) keeps the percent where it was.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from datetime import UTC, datetime

from service.records import StageMark
from twossp_core.plan.declarations import Stage
from twossp_core.plan.spec import PruneSpec, SweepSpec

log = logging.getLogger(__name__)

UPLOAD = Stage("upload", 5)  # the service's own last stage: the output to the artifact store


def job_stages(spec: PruneSpec | SweepSpec) -> list[Stage]:
    """The stage plan of a job (its parsed spec), upload included."""
    from twossp_core.plan.stages import prune_stages, sweep_stages

    if isinstance(spec, SweepSpec):
        return [*sweep_stages(spec), UPLOAD]
    return [*prune_stages(spec), UPLOAD]


class StagePlan:
    """Where each stage starts and how much of the whole it is, in percent. A name may come back later in the
    plan (a method that refits again after its second stage): its n-th entry takes its n-th slot."""

    def __init__(self, stages: Sequence[Stage]) -> None:
        total = sum(s.weight for s in stages) or 1.0
        self.slots: dict[str, list[tuple[float, float]]] = {}
        start = 0.0
        for stage in stages:
            share = 100.0 * stage.weight / total
            self.slots.setdefault(stage.name, []).append((start, share))
            start += share

    def percent(self, stage: str, fraction: float, entry: int = 0) -> float | None:
        slots = self.slots.get(stage)
        if not slots:
            return None
        start, share = slots[min(entry, len(slots) - 1)]
        return min(100.0, start + share * fraction)


class ProgressTracker:
    """Thread-safe enough for one writer (the pipeline) and one reader (the heartbeat)."""

    def __init__(self, stages: Sequence[Stage] = ()) -> None:
        self.plan = StagePlan(stages)
        self.stage: str | None = None
        self.detail: str | None = None  # what the stage is doing now (the heal's step and loss)
        self.percent = 0.0
        self.timings: dict[str, float] = {}
        self.marks: list[StageMark] = []  # every stage start and end, in order (appended only)
        self._stage_started = time.monotonic()
        self._finished = False
        self._unknown: set[str] = set()
        self._entries: dict[str, int] = {}  # how many times each stage was entered

    def _close_stage(self, now: float) -> None:
        if self.stage is not None:
            spent = now - self._stage_started
            self.timings[self.stage] = round(self.timings.get(self.stage, 0.0) + spent, 3)
            self.marks.append(StageMark("stage_finished", self.stage, datetime.now(UTC), spent, self.percent))

    def update(self, stage: str, fraction: float, detail: str | None = None) -> None:
        """`detail`: what the stage is doing now, shown after the stage name on the job (not in its events)."""
        now = time.monotonic()
        self.detail = detail
        fraction = min(max(fraction, 0.0), 1.0)
        if stage != self.stage:
            self._close_stage(now)
            self.stage = stage
            self._stage_started = now
            self._entries[stage] = self._entries.get(stage, 0) + 1
            start = self.plan.percent(stage, 0.0, self._entries[stage] - 1)
            self.percent = max(self.percent, start if start is not None else 0.0)
            self.marks.append(StageMark("stage_started", stage, datetime.now(UTC), None, self.percent))
        percent = self.plan.percent(stage, fraction, self._entries[stage] - 1)
        if percent is None and stage not in self._unknown:
            self._unknown.add(stage)
            log.warning("stage %r is not in the job's stage plan; progress holds at %.1f %%", stage, self.percent)
        if percent is not None:
            self.percent = max(self.percent, percent)

    def finish(self) -> None:
        """Close the current stage (the job is over); it stays the reported stage."""
        if not self._finished:
            self._finished = True
            self._close_stage(time.monotonic())

    def snapshot(self) -> tuple[str | None, float, dict[str, float]]:
        timings = dict(self.timings)
        stage = self.stage if self.stage is None or self.detail is None else f"{self.stage} ({self.detail})"
        return stage, round(self.percent, 2), timings

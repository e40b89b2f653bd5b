"""Routing a job to a worker class by memory (torch-free: the API routes with it).

A worker class is one Celery queue and what its workers advertise: the device their jobs compute on and the
memory they offer (`service/workers.py`). A job goes to the smallest class whose memory holds the job's plan
(`twossp_core.plan.memory.spec_plan`: the mode the job will run in given its budgets, so a budgeted job that runs
block by block needs far less than the same model in memory). With `device: auto` GPU classes come first.
When no class holds the job as it asks and it leaves its budgets unset (`execution: auto`), the smallest class
where it fits block by block takes it, with that class's memory written into the job as its budgets (so the
worker runs it block by block instead of running out of memory). A model whose config the API cannot read (a hub
id) goes to the largest class. A GPU class whose workers see several GPUs offers `memory` on each: a job that
no GPU of it holds in memory may be planned spread over them (multi-device execution), and classes are ordered by
their total GPU memory. The worker lowers the budgets a job sets above its class's memory to that memory
(`capped_budgets`, worker/runner.py), so a job that asks for more than the machine has is planned for what it has;
routing plans each class the same way (the smaller of the job's budget and the class's memory), so a job whose
budgets exceed every class goes where it fits within the class's memory (block by block, if need be).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from twossp_core.errors import InvalidSpec
from twossp_core.plan.memory import MemoryPlan, spec_plan
from twossp_core.plan.sizes import format_size


@dataclass(frozen=True)
class WorkerClass:
    queue: str
    device: str  # "cuda" or "cpu"
    memory: int  # bytes offered to a job: the GPU's (cuda; each GPU's) or the host's (cpu)
    host_memory: int  # bytes of host memory offered to a job
    workers: int = 1
    gpus: int = 1  # GPUs a job may spread over (cuda)

    def describe(self) -> str:
        if self.device == "cuda":
            each = f"{self.gpus} x {format_size(self.memory)}" if self.gpus > 1 else format_size(self.memory)
            return f"'{self.queue}' (cuda, {each} device, {format_size(self.host_memory)} host)"
        return f"'{self.queue}' (cpu, {format_size(self.memory)} host)"

    def devices(self) -> list[tuple[str, int]] | None:
        """The GPUs a job may spread over, for the plan (None: one)."""
        if self.device != "cuda" or self.gpus < 2:
            return None
        return [(f"cuda:{i}", self.memory) for i in range(self.gpus)]


@dataclass(frozen=True)
class Route:
    queue: str
    plan: MemoryPlan | None  # None: the model's config is unknown here (a hub id)
    budgets: dict[str, int] = field(default_factory=dict)  # budget fields to set on the job (the class's memory)


class NoWorkerFits(Exception):
    """No advertised worker class can hold the job; the message states the need and the largest capacity."""


def _size_key(cls: WorkerClass) -> tuple[int, int, int, str]:
    return cls.memory * cls.gpus, cls.memory, cls.host_memory, cls.queue


def job_device(spec: Any, cls: WorkerClass) -> str | None:
    """The device the job would compute on in this class; None when the class cannot give it what it asks."""
    if spec.device == "auto":
        return cls.device
    if spec.device == "cuda" and cls.device != "cuda":
        return None
    return spec.device


def shortfall(plan: MemoryPlan, cls: WorkerClass) -> str | None:
    """Why the plan does not fit the class (None when it fits)."""
    if plan.device != "cpu" and plan.device_peak > cls.memory:
        return f"device {format_size(plan.device_peak)} > {format_size(cls.memory)}"
    host = cls.memory if cls.device == "cpu" else cls.host_memory
    if plan.host_peak > host:
        return f"host {format_size(plan.host_peak)} > {format_size(host)}"
    return None


def choose_queue(spec: Any, cfg: dict[str, Any] | None, classes: list[WorkerClass]) -> Route:
    """The class a job goes to: the smallest that holds its plan (GPU classes first for `device: auto`).

    `cfg` is the model's config.json (None for a hub id: the largest class that can give the job its device).
    Raises NoWorkerFits when no class can take the job."""
    if not classes:
        raise ValueError("no worker classes to choose from")
    usable = [c for c in classes if job_device(spec, c) is not None]
    if not usable:
        raise NoWorkerFits(
            f"no worker class can take this job: it asks for device {spec.device!r} and the worker classes are "
            + ", ".join(c.describe() for c in sorted(classes, key=_size_key))
        )
    if cfg is None:
        return Route(max(usable, key=_size_key).queue, None)
    plans: dict[Any, MemoryPlan | InvalidSpec] = {}
    fitting: list[tuple[WorkerClass, MemoryPlan, dict[str, int]]] = []
    misses: list[str] = []

    def class_plan(cls: WorkerClass) -> MemoryPlan | InvalidSpec:
        """The job's plan on a worker of the class: with the budgets it sets above the class's memory lowered to
        that memory, as the worker runs it (`capped_budgets`)."""
        device = job_device(spec, cls)
        assert device is not None
        devices = cls.devices() if device == "cuda" else None
        capped = capped_budgets(spec, cls)
        key = (device, tuple(devices or ()), tuple(sorted(capped.items())))
        if key not in plans:
            try:
                plans[key] = spec_plan(spec.model_copy(update=capped), cfg, device=device, devices=devices)
            except InvalidSpec as exc:
                plans[key] = exc
        return plans[key]

    for cls in sorted(usable, key=_size_key):
        plan = class_plan(cls)
        if isinstance(plan, InvalidSpec):
            misses.append(f"'{cls.queue}': {plan}")
            continue
        reason = shortfall(plan, cls)
        if reason is None:
            fitting.append((cls, plan, {}))
        else:
            misses.append(f"'{cls.queue}' {reason}")
    if not fitting:
        fitting, block_misses = _block_by_block_fits(spec, cfg, usable)
        misses += block_misses
    if fitting:
        gpu_first = spec.device == "auto"
        cls, plan, budgets = min(
            fitting, key=lambda item: (gpu_first and item[0].device != "cuda", *_size_key(item[0]))
        )
        return Route(cls.queue, plan, budgets)
    largest = max(usable, key=_size_key)
    plan = class_plan(largest)
    need = str(plan) if isinstance(plan, InvalidSpec) else _need(plan)
    raise NoWorkerFits(
        f"no worker class has the memory for this job: it needs {need}; the largest worker class is "
        f"{largest.describe()}; short: {', '.join(misses)}. Set max_device_memory / max_host_memory so that it runs "
        "block by block, or add a worker class with more memory"
    )


def class_budgets(spec: Any, cls: WorkerClass) -> dict[str, int]:
    """The budgets a class imposes where the job sets none: the host memory it offers and, for a job on its GPU,
    the GPU's memory."""
    budgets: dict[str, int] = {}
    if spec.max_host_memory is None:
        budgets["max_host_memory"] = cls.memory if cls.device == "cpu" else cls.host_memory
    if spec.max_device_memory is None and job_device(spec, cls) == "cuda":
        budgets["max_device_memory"] = cls.memory
    return budgets


def capped_budgets(spec: Any, cls: WorkerClass) -> dict[str, int]:
    """The budgets the job sets above what the class offers, lowered to the class's memory (the smaller of the
    two): what a worker of the class runs the job with, so its plan and mode follow the machine's memory."""
    offered = class_budgets(spec.model_copy(update={"max_host_memory": None, "max_device_memory": None}), cls)
    return {name: size for name, size in offered.items()
            if getattr(spec, name) is not None and getattr(spec, name) > size}


def _block_by_block_fits(
    spec: Any, cfg: dict[str, Any], classes: list[WorkerClass]
) -> tuple[list[tuple[WorkerClass, MemoryPlan, dict[str, int]]], list[str]]:
    """Classes that hold the job with their memory as the budgets it leaves unset (block by block, for a job whose
    `execution` is `auto`), and why the others do not."""
    fitting: list[tuple[WorkerClass, MemoryPlan, dict[str, int]]] = []
    misses: list[str] = []
    if spec.execution != "auto":
        return fitting, misses
    for cls in sorted(classes, key=_size_key):
        budgets = class_budgets(spec, cls)
        if not budgets:
            continue
        capped = capped_budgets(spec, cls)
        try:
            plan = spec_plan(spec.model_copy(update={**capped, **budgets}), cfg, device=job_device(spec, cls) or "cpu")
        except InvalidSpec as exc:
            misses.append(f"'{cls.queue}' block by block: {exc}")
            continue
        if plan.mode == "block-by-block" and shortfall(plan, cls) is None:
            fitting.append((cls, plan, budgets))
    return fitting, misses


def _need(plan: MemoryPlan) -> str:
    need = f"{format_size(plan.host_peak)} host"
    if plan.device != "cpu":
        need = f"{format_size(plan.device_peak)} device memory and " + need
    return f"{need} ({plan.mode} on {plan.device})"

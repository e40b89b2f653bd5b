"""What the pages show of a job: its timeline, durations, report tables and artifact files."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from service.db.models import Job, JobState
from service.db.types import utcnow
from service.store import ArtifactStore
from twossp_core.comparison import model_label
from twossp_core.evaluation.zeroshot.summary import accuracy_text

IMAGE_TYPES = {".svg": "image/svg+xml", ".png": "image/png"}


@dataclass
class Event:
    at: datetime | None
    what: str
    detail: str = ""


def duration_s(job: Job) -> float | None:
    if job.started_at is None:
        return None
    return ((job.finished_at or utcnow()) - job.started_at).total_seconds()


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, sec = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {sec:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def fmt_time(at: datetime | None) -> str:
    return "–" if at is None else at.strftime("%Y-%m-%d %H:%M:%S UTC")


def timeline(job: Job, events: Sequence[Any]) -> list[Event]:
    """The job's history from its events (`job_events` rows, oldest first). A stage shows once: when it finished,
    with its duration, or while it runs, as started."""
    finished = {(e.attempt, e.stage) for e in events if e.kind == "stage_finished"}
    out = []
    for e in events:
        data = e.data or {}
        if e.kind == "stage_finished":
            out.append(Event(e.at, f"stage {e.stage}", f"took {fmt_duration(data.get('seconds'))}"))
        elif e.kind == "stage_started":
            if (e.attempt, e.stage) not in finished:
                out.append(Event(e.at, f"stage {e.stage}", "running"))
        elif e.kind == "started":
            out.append(Event(e.at, "started", f"attempt {e.attempt} of {job.max_attempts}"
                             + (f" on {e.detail}" if e.detail else "")))
        else:
            out.append(Event(e.at, e.kind.replace("_", " "), e.detail or ""))
    return out


def manifest_files(store: ArtifactStore, job: Job) -> list[dict[str, Any]]:
    if job.state != JobState.succeeded.value or not job.artifact:
        return []
    try:
        manifest = json.loads(store.get_bytes(job.artifact["manifest_key"]))
    except Exception:  # a missing or unreadable manifest shows as no files; the download reports the error
        return []
    return list(manifest.get("files", []))


def comparison_images(files: list[dict[str, Any]], models: Sequence[str] = ()) -> list[str]:
    """A sweep's comparison chart(s) in the artifact, SVG preferred: comparison.svg, or one comparison-<model>.svg
    per model of a sweep over several (in the order of `models`)."""
    names = {f["path"] for f in files}
    for suffix in (".svg", ".png"):
        if f"comparison{suffix}" in names:
            return [f"comparison{suffix}"]
        found = [name for m in models if (name := f"comparison-{model_label(m)}{suffix}") in names]
        if found:
            return found
    return []


def report_tables(report: dict[str, Any]) -> dict[str, list[tuple[str, str]]]:
    """Key/value rows for the report's parameters, removed modules and timings."""
    params = report.get("params") or {}
    rows_params = [(k.replace("_", " "), f"{v:,}" if isinstance(v, int) else str(v)) for k, v in params.items()]
    for key in ("sparsity_target", "sparsity_achieved"):
        if isinstance(report.get(key), int | float):
            rows_params.append((key.replace("_", " "), f"{report[key]:.4f}"))
    removed = []
    for key, what in (("removed_blocks", "blocks"), ("removed_attention", "modules"), ("removed_mlp", "modules")):
        if key in report:  # "modules [0]": block 0's, never to be read as a count
            items = report[key] or []
            removed.append((key.replace("_", " "), f"{what} {list(items)}" if items else "none"))
    kept = report.get("kept_ffn_neurons")
    if isinstance(kept, list) and kept:
        removed.append(("kept FFN neurons per block", ", ".join(str(k) for k in kept)))
    timings = [
        (k.removesuffix("_s").replace("_", " "), fmt_duration(v))
        for k, v in (report.get("timings") or {}).items()
        if isinstance(v, int | float)
    ]
    heal = report.get("heal") or {}
    heal_rows = [(k.replace("_", " "), f"{heal[k]:.4g}" if isinstance(heal[k], float) else str(heal[k]))
                 for k in ("method", "params", "steps", "tokens", "first_loss", "loss", "lr") if k in heal]
    if "seconds" in heal:
        heal_rows.append(("time", fmt_duration(heal["seconds"])))
    return {"Parameters": rows_params, "Removed modules": removed, "Heal": heal_rows, "Timings": timings}


def _accuracy(scores: dict[str, Any] | None, metric: str) -> str:
    return accuracy_text(scores, metric, plus_minus=" ± ", missing="–")


def zero_shot_table(report: dict[str, Any]) -> dict[str, Any] | None:
    """The job page's zero-shot table: a prune job's accuracy per task and metric (dense, pruned, healed), a sweep's
    acc per task for the dense model and every run; an approximate task is starred with its note."""
    block = report.get("zero_shot") or (report.get("dense") or {}).get("zero_shot")
    if not block:
        return None
    titles = {name: name + ("*" if entry.get("approximate") else "") for name, entry in block["tasks"].items()}
    notes = sorted({e["note"] for e in block["tasks"].values() if e.get("approximate") and e.get("note")})
    if "zero_shot" in report:  # one pruned model
        labels = [label for label in ("dense", "pruned", "healed") if label in next(iter(block["tasks"].values()))]
        rows = [[titles[name], metric, str(entry["n"]), *(_accuracy(entry[label], metric) for label in labels)]
                for name, entry in block["tasks"].items() for metric in entry["metrics"]]
        header = ["Task", "Metric", "Items", *(label.capitalize() for label in labels)]
    else:  # a sweep: acc of the dense model and of every run
        runs = [r for r in report.get("rows") or [] if r.get("zero_shot") and not r.get("error")]
        header = ["Task", "Items", "Dense", *(f"{r['method']} {r['sparsity_target']:g}" for r in runs)]
        rows = [[titles[name], str(entry["n"]), _accuracy(entry["dense"], "acc"),
                 *(_accuracy(r["zero_shot"]["tasks"][name].get("pruned"), "acc") for r in runs)]
                for name, entry in block["tasks"].items()]
    return {"header": header, "rows": rows, "subset": block["subset"], "notes": notes}


def options_rows(spec: dict[str, Any]) -> list[tuple[str, str]]:
    skip = {"options"}
    rows = [(k, json.dumps(v) if not isinstance(v, str) else v) for k, v in spec.items() if k not in skip]
    if spec.get("options"):
        rows.append(("options", json.dumps(spec["options"], sort_keys=True)))
    return rows

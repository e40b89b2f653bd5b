"""Assertions shared by the end-to-end tests: report shape and the downloaded model's perplexity."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

REPORT_KEYS = {
    "method", "sparsity_target", "sparsity_achieved", "removed_attention", "kept_ffn_neurons", "params",
    "perplexity", "timings", "throughput_tokens_per_s",
}


def check_succeeded_job(job: dict[str, Any]) -> None:
    assert job["state"] == "succeeded", job
    assert job["progress"] == 100 and job["error"] is None and job["stage"] == "done"  # terminal, not "upload"
    report = job["report"]
    assert REPORT_KEYS <= set(report)
    assert set(report["params"]) >= {"blocks_before", "blocks_after", "total_before", "total_after"}
    assert report["params"]["blocks_after"] < report["params"]["blocks_before"]
    assert report["sparsity_achieved"] == pytest.approx(job["sparsity"], abs=0.05)
    assert {"load", "stage1", "stage2", "evaluate_pruned", "upload"} <= set(job["stage_timings"])
    assert job["artifact"]["files"] >= 3 and len(job["artifact"]["manifest_sha256"]) == 64


STAGE_MARKS = {"stage_started", "stage_finished"}
PUBLISHED = {"dispatched", "republished"}  # handed to the broker, and again by the outbox


def check_history(events: list[dict[str, Any]], expected: list[tuple[str, int]]) -> dict[int, list[str]]:
    """A job's events: in recording order, the transitions (kind, attempt) as expected, every attempt started
    after a dispatch, and stage marks that open and close each stage in turn. Returns each attempt's stages."""
    ids = [e["id"] for e in events]
    assert ids == sorted(set(ids)), ids
    transitions = [(e["kind"], e["attempt"]) for e in events if e["kind"] not in STAGE_MARKS | PUBLISHED]
    assert transitions == expected, events
    kinds = [e["kind"] for e in events]
    for i, kind in enumerate(kinds):
        if kind == "started":
            previous = max((j for j in range(i) if kinds[j] in {"submitted", "requeued"}), default=-1)
            assert PUBLISHED & set(kinds[previous:i]), events
    stages: dict[int, list[str]] = {}
    for attempt in sorted({e["attempt"] for e in events if e["attempt"] > 0}):
        marks = [e for e in events if e["attempt"] == attempt and e["kind"] in STAGE_MARKS]
        assert [e["at"] for e in marks] == sorted(e["at"] for e in marks)
        for i, mark in enumerate(marks):
            assert mark["kind"] == ("stage_started" if i % 2 == 0 else "stage_finished"), marks
            if i % 2:
                assert mark["stage"] == marks[i - 1]["stage"] and mark["data"]["seconds"] >= 0, marks
        stages[attempt] = [m["stage"] for m in marks if m["kind"] == "stage_started"]
    return stages


def check_model_perplexity(model_dir: Path, job: dict[str, Any]) -> None:
    """Load the downloaded model and recompute the perplexity the job reported for it (the healed one when the
    job healed: the exported model is the healed model)."""
    from twossp_core.data.windows import load_windows
    from twossp_core.evaluation.perplexity import perplexity
    from twossp_core.export.load import load_pruned
    from twossp_core.models.registry import adapter_for
    from twossp_core.plan.sources import DataSource

    report, spec = job["report"], job["spec"]
    model, tokenizer = load_pruned(model_dir)
    adapter = adapter_for(model)
    assert adapter.total_params() == report["params"]["total_after"]
    for entry in report["perplexity"]:
        windows = load_windows(
            DataSource.parse(entry["dataset"]), tokenizer, seq_len=report["data"]["seq_len"], role="eval",
            doc_separator=spec["doc_separator"], max_windows=spec["eval_windows"],
        )
        expected = entry["healed"] if "heal" in report else entry["pruned"]
        assert perplexity(adapter, windows, batch_size=4) == pytest.approx(expected, rel=1e-3)


def assert_torch_not_loaded(pid: int) -> None:
    """The process never loaded torch (so never initialised CUDA): no libtorch mapped into it."""
    maps = Path(f"/proc/{pid}/maps")
    if not maps.exists():
        pytest.skip("needs /proc")
    assert "libtorch" not in maps.read_text(), f"process {pid} loaded torch"

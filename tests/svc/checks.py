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
    assert job["progress"] == 100 and job["error"] is None
    report = job["report"]
    assert REPORT_KEYS <= set(report)
    assert set(report["params"]) >= {"blocks_before", "blocks_after", "total_before", "total_after"}
    assert report["params"]["blocks_after"] < report["params"]["blocks_before"]
    assert report["sparsity_achieved"] == pytest.approx(job["sparsity"], abs=0.05)
    assert {"load", "stage1", "stage2", "evaluate_pruned", "upload"} <= set(job["stage_timings"])
    assert job["artifact"]["files"] >= 3 and len(job["artifact"]["manifest_sha256"]) == 64


def check_model_perplexity(model_dir: Path, job: dict[str, Any]) -> None:
    """Load the downloaded model and recompute the perplexity the job reported for it (the healed one when the
    job healed: the exported model is the healed model)."""
    from twossp_core.data.windows import load_windows
    from twossp_core.evaluation.perplexity import perplexity
    from twossp_core.export.load import load_pruned
    from twossp_core.models.registry import adapter_for
    from twossp_core.spec import DataSource

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

"""Dense work shared across a sweep's cells (twossp_core/shared.py, worker/shared.py): the first cell computes the
dense measurements and each statistic and stores them in the artifact store under their content key; the next
cells, and a second sweep on the same model and data, read them; every report equals the one-process run_sweep's."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from service.db.migrate import upgrade_head
from service.db.session import Database
from service.settings import Settings
from service.store.local import LocalStore
from twossp_core.plan.spec import parse_sweep_spec
from twossp_core.sweep import run_sweep, run_sweep_cell
from worker.shared import StoreArtifactCache

from .support import job_body

pytestmark = pytest.mark.slow
RUN_TIMING_KEYS = {"timings", "throughput_tokens_per_s", "throughput_spread", "throughput_unreliable", "runtime"}


def without(report: dict[str, Any], keys: set[str]) -> dict[str, Any]:
    return {k: v for k, v in report.items() if k not in keys}


def test_cells_compute_the_dense_work_once_and_reuse_it_across_sweeps(
    tmp_path: Path, stories_model: Path, stories_text: Path
) -> None:
    body = job_body(stories_model, stories_text, eval=[f"{stories_text}:500:520"], calibration_windows=4,
                    measure_throughput=True)
    del body["sparsity"]
    spec = parse_sweep_spec({**body, "methods": ["2ssp", "shortgpt", "blockpruner"], "sparsities": [0.05, 0.375],
                             "options": {"blockpruner": {"windows": 2}}})
    settings = Settings(data_dir=tmp_path / "data")
    upgrade_head(settings)  # the artifacts' use records live in the database
    cache = StoreArtifactCache(LocalStore(tmp_path / "store"), Database(settings), tmp_path / "locks")
    single = run_sweep(spec, tmp_path / "single")

    def cells(out: Path) -> dict[str, dict[str, Any]]:
        done = {}
        for method in spec.methods:
            for sparsity in spec.sparsities:
                try:
                    done[f"{method}-{sparsity:g}"] = run_sweep_cell(spec.prune_spec(method, sparsity), out,
                                                                    shared=cache)
                except Exception as exc:  # shortgpt at 0.05: below one block
                    assert type(exc).__name__ == "InfeasibleTarget", exc
        return done

    first = cells(tmp_path / "first")
    # every cell's run report equals the one-process sweep's (timings aside)
    for name, report in first.items():
        theirs = json.loads((tmp_path / "single" / "runs" / name / "report.json").read_text())
        assert without(report, RUN_TIMING_KEYS | {"sweep"}) == without(theirs, RUN_TIMING_KEYS), name
        assert report["sweep"]["dense"]["perplexity"] == single["dense"]["perplexity"]
        assert report["sweep"]["dense"]["throughput_tokens_per_s"] is not None

    def uses(reports: dict[str, dict[str, Any]]) -> list[tuple[str, str, bool]]:
        return [(name, u["kind"], u["reused"]) for name, r in reports.items() for u in r["sweep"]["shared"]]

    # the dense work ran once: the first cell computed it, every later one read it
    seen = uses(first)
    dense = [(name, reused) for name, kind, reused in seen if kind == "dense"]
    assert dense[0] == ("2ssp-0.05", False) and all(reused for _, reused in dense[1:]), dense
    scores = [(name, reused) for name, kind, reused in seen if kind == "2ssp.neuron_scores"]
    assert scores == [("2ssp-0.05", False), ("2ssp-0.375", True)], scores
    states = [(name, reused) for name, kind, reused in seen if kind == "depth.last_token_states"]
    assert states == [("shortgpt-0.375", False)], states  # shortgpt at 0.05 stops before it needs them
    order = [(name, reused) for name, kind, reused in seen if kind == "blockpruner.removal_order"]
    # the lower sparsity stored its removals, the higher one read them and stored the longer order
    assert order == [("blockpruner-0.05", False), ("blockpruner-0.375", True), ("blockpruner-0.375", False)], order
    assert first["blockpruner-0.375"]["method_details"]["replayed_removals"] > 0
    note = first["2ssp-0.375"]["sweep"]["shared"][0]["note"]
    assert note.startswith("reused from shared/") and len(note.split("/")[-1]) == 64

    # a second sweep on the same model and data computes nothing dense: everything is read, the reports the same
    second = cells(tmp_path / "second")
    assert all(reused for _, kind, reused in uses(second) if kind != "blockpruner.removal_order")
    assert [u["reused"] for u in second["2ssp-0.05"]["sweep"]["shared"]] == [True, True]
    assert [(u["kind"], u["reused"]) for u in second["shortgpt-0.375"]["sweep"]["shared"]] == [
        ("dense", True), ("depth.last_token_states", True)]
    for name, report in second.items():
        ours, theirs = (without(r, {"sweep", *RUN_TIMING_KEYS}) for r in (report, first[name]))
        for r in (ours, theirs):  # how many removals BlockPruner replayed rather than searched: bookkeeping
            r["method_details"] = without(r["method_details"], {"replayed_removals"})
        assert ours == theirs, name
        assert report["sweep"]["dense"] == first[name]["sweep"]["dense"]
    assert "evaluate_dense_s" not in second["2ssp-0.05"]["sweep"]["timings"]

    # another evaluation set is another key: the dense work is computed again
    other = parse_sweep_spec({**spec.model_dump(), "eval": [f"{stories_text}:520:530"]})
    report = run_sweep_cell(other.prune_spec("2ssp", 0.375), tmp_path / "other", shared=cache)
    assert [u["reused"] for u in report["sweep"]["shared"]] == [False, False]


def test_the_heal_s_control_is_shared_by_the_learning_rate_it_runs_with(
    tmp_path: Path, stories_model: Path, stories_text: Path
) -> None:
    body = job_body(stories_model, stories_text, eval=[f"{stories_text}:500:520"], calibration_windows=4)
    del body["sparsity"]
    heal = {"steps": 2, "batch_size": 2, "seq_len": 64, "control": True}
    settings = Settings(data_dir=tmp_path / "data")
    upgrade_head(settings)
    cache = StoreArtifactCache(LocalStore(tmp_path / "store"), Database(settings), tmp_path / "locks")

    def control_use(lr: float | None, out: str) -> dict[str, Any]:
        spec = parse_sweep_spec({**body, "methods": ["2ssp"], "sparsities": [0.375], "heal": {**heal, "lr": lr}})
        report = run_sweep_cell(spec.prune_spec("2ssp", 0.375), tmp_path / out, shared=cache)
        (use,) = [u for u in report["sweep"]["shared"] if u["kind"] == "control"]
        assert report["heal"]["lr"] == (lr or 3e-3)  # unset: the rate chosen for a 0.26 M-parameter model
        return use

    assert control_use(None, "chosen")["reused"] is False
    # the model's files were hashed once, remembered beside the locks for the next cells
    files = sorted(p for p in stories_model.rglob("*") if p.is_file())
    entries = sorted(e.read_text() for e in (tmp_path / "file-digests").iterdir())
    assert entries == sorted(hashlib.sha256(p.read_bytes()).hexdigest() for p in files)
    assert control_use(3e-3, "requested")["reused"] is True  # the rate the unset one ran with: the same control
    assert control_use(1e-3, "other")["reused"] is False

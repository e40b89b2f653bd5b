"""Held-out evaluation: each evaluation set's domain relative to the calibration data, and the run's summary."""

from __future__ import annotations

import math

import pytest
from tiny_models import tiny_workdir

from twossp_core.data.held_out import domain_of, geometric_mean_ratio, held_out_summary
from twossp_core.pipeline import run_prune
from twossp_core.plan.sources import DataSource
from twossp_core.plan.spec import parse_spec
from twossp_core.report_table import comparison_markdown
from twossp_core.sweep import comparison_row


def src(text: str) -> DataSource:
    return DataSource.parse(text)


@pytest.mark.parametrize(("evaluated", "fitted", "expected"), [
    ("c4.jsonl:1000:2000", ["c4.jsonl:0:1000"], "in-domain"),
    ("c4.jsonl:999:2000", ["c4.jsonl:0:1000"], "overlaps-calibration"),
    ("c4.jsonl", ["c4.jsonl:0:1000"], "overlaps-calibration"),  # the whole file holds the calibration rows
    ("c4.jsonl:0:10", ["c4.jsonl:10:"], "in-domain"),
    ("./data/../c4.jsonl:5:6", ["c4.jsonl:0:100"], "overlaps-calibration"),  # the same file, spelled otherwise
    ("wiki.txt", ["c4.jsonl:0:1000"], "out-of-domain"),
    ("wikitext2", ["c4"], "out-of-domain"),
    ("c4", ["c4"], "in-domain"),  # a hub dataset: evaluation split vs training split
    ("ptb.txt", ["c4.jsonl:0:1000", "ptb.txt:0:10"], "overlaps-calibration"),  # a heal's data counts too
])
def test_domain_of(evaluated, fitted, expected):
    assert domain_of(src(evaluated), [src(f) for f in fitted]) == expected


def test_summary_is_the_geometric_mean_over_held_out_sets_only():
    rows = [
        {"dataset": "a", "domain": "in-domain", "dense": 10.0, "pruned": 20.0},
        {"dataset": "b", "domain": "out-of-domain", "dense": 100.0, "pruned": 800.0},
        {"dataset": "c", "domain": "overlaps-calibration", "dense": 5.0, "pruned": 5.0},
    ]
    summary = held_out_summary(rows)
    assert summary["datasets"] == ["a", "b"]
    assert summary["ratio"] == pytest.approx(math.sqrt(2.0 * 8.0))
    assert held_out_summary(rows[2:]) is None
    assert geometric_mean_ratio([(1.0, float("nan"))]) is None


def test_report_marks_domains_warns_on_overlap_and_sums_up(tmp_path_factory):
    workdir = tiny_workdir(tmp_path_factory.mktemp("held-out"))
    words = (workdir / "text.txt").read_text().split()
    text = workdir / "docs.txt"  # four documents separated by blank lines
    text.write_text("\n\n".join(" ".join(words[i * 100:(i + 1) * 100]) for i in range(4)))
    other = workdir / "other.txt"
    other.write_text(" ".join(reversed(words)))
    spec = parse_spec({
        "model": str(workdir / "model"), "sparsity": 0.4, "calibration": [f"{text}:0:2"], "doc_separator": "\n\n",
        "eval": [f"{text}:2:", str(other), f"{text}:1:3"], "seq_len": 32, "calibration_windows": 4,
        "eval_windows": 2, "measure_throughput": False,
    })
    report = run_prune(spec, tmp_path_factory.mktemp("out"))
    by_set = {row["dataset"]: row for row in report["perplexity"]}
    assert by_set[f"{text}:2:"]["domain"] == "in-domain"
    assert by_set[str(other)]["domain"] == "out-of-domain"
    assert by_set[f"{text}:1:3"]["domain"] == "overlaps-calibration"
    assert any("overlaps the calibration data" in w and f"{text}:1:3" in w for w in report["warnings"])
    held = [by_set[f"{text}:2:"], by_set[str(other)]]
    assert report["held_out"]["datasets"] == [f"{text}:2:", str(other)]
    expected = math.exp(sum(math.log(r["pruned"] / r["dense"]) for r in held) / 2)
    assert report["held_out"]["ratio"] == pytest.approx(expected)
    table = comparison_markdown([comparison_row(report)],
                                {"perplexity": [{"dataset": r["dataset"], "perplexity": r["dense"]}
                                                for r in report["perplexity"]]})
    assert "Held-out summary" in table and f"{expected:.2f}" in table

"""A throughput comparison that says more about the machine's load than about the models is reported as such:
the report, the CLI summary and the sweep comparison give the reasons, not a speed-up."""

from __future__ import annotations

from twossp_core.cli.summary import format_summary
from twossp_core.evaluation.throughput_check import unreliable_reasons
from twossp_core.report_table import comparison_markdown
from twossp_core.sweep import comparison_row


def _stats(median: float, low: float, high: float, runs: int) -> dict[str, float]:
    return {"median": median, "min": low, "max": high, "runs": runs}


STEADY = {"dense": _stats(1000, 950, 1100, 40), "pruned": _stats(1500, 1400, 1600, 40)}
# measured under load, as the issue saw it: the dense side alone before pruning, the pruned one later
LOADED = {"dense": _stats(36000, 20000, 41000, 44), "pruned": _stats(5800, 5000, 6100, 6)}


def test_reasons_name_the_spread_and_the_balance() -> None:
    assert unreliable_reasons(STEADY) == []
    reasons = unreliable_reasons(LOADED)
    assert len(reasons) == 2
    assert "dense passes vary 2.05x" in reasons[0] and "more than 1.5x" in reasons[0]
    assert "unbalanced runs (dense 44, pruned 6)" in reasons[1]
    assert unreliable_reasons({"dense": STEADY["dense"]}) == []  # nothing to compare
    assert unreliable_reasons({**STEADY, "pruned": _stats(1500, 900, 1500, 40)})[0].startswith("pruned passes vary")


def _report(spread: dict) -> dict:
    return {
        "method": "2ssp", "sparsity_target": 0.375, "sparsity_achieved": 0.375, "perplexity": [],
        "params": {"blocks_before": 10, "blocks_after": 6, "total_before": 20, "total_after": 16},
        "removed_attention": [], "removed_mlp": [], "removed_blocks": [], "kept_ffn_neurons": 96,
        "timings": {"prune_s": 1.0},
        "throughput_tokens_per_s": {k: v["median"] for k, v in spread.items()}, "throughput_spread": spread,
        "throughput_unreliable": unreliable_reasons(spread),
    }


def test_the_summary_gives_the_reasons_instead_of_a_speedup() -> None:
    steady = format_summary(_report(STEADY))
    assert "throughput tokens/s, median of 40 runs: dense 1000" in steady and "(x1.50)" in steady
    loaded = [line for line in format_summary(_report(LOADED)).splitlines() if line.startswith("throughput")]
    assert len(loaded) == 1
    assert "not a reliable comparison (dense passes vary 2.05x" in loaded[0]
    assert "unbalanced runs (dense 44, pruned 6)" in loaded[0] and "no speed-up stated" in loaded[0]
    assert "(x0.16)" not in loaded[0]


def test_the_sweep_comparison_marks_the_speedup_not_reliable() -> None:
    rows = [comparison_row(_report(STEADY)), {**comparison_row(_report(LOADED)), "sparsity_target": 0.5}]
    assert rows[0]["speedup"] == 1.5 and rows[0]["throughput_unreliable"] == []
    assert rows[1]["speedup"] is None and rows[1]["throughput_unreliable"]
    table = comparison_markdown(rows, {"perplexity": {}})
    assert "| 1.50x |" in table and "| not reliable |" in table
    assert "Note — 2ssp at 50.0%: speed-up not reliable, dense passes vary 2.05x" in table

"""The sweep comparison's labels: a set that eval_windows capped says so wherever its perplexity is shown."""

from __future__ import annotations

from twossp_core.report_table import comparison_markdown, dataset_title


def test_a_capped_evaluation_set_is_labelled_with_its_windows() -> None:
    dense = {"perplexity": [{"dataset": "wikitext2", "perplexity": 10.0}, {"dataset": "ptb", "perplexity": 20.0}],
             "eval_windows": {"wikitext2": 24, "ptb": 9}, "eval_cap": 24}
    assert dataset_title("wikitext2", dense) == "wikitext2 (first 24 windows)"
    assert dataset_title("ptb", dense) == "ptb"  # fewer windows than the cap: the whole set
    assert dataset_title("wikitext2", {**dense, "eval_cap": None}) == "wikitext2"
    rows = [{"method": "2ssp", "sparsity_target": 0.25, "sparsity_achieved": 0.25, "prune_s": 1.0,
             "perplexity": [{"dataset": "wikitext2", "pruned": 12.0}, {"dataset": "ptb", "pruned": 25.0}]}]
    table = comparison_markdown(rows, dense)
    assert "Dense model: perplexity wikitext2 (first 24 windows) 10.000, ptb 20.000" in table
    assert "Perplexity on `wikitext2 (first 24 windows)`" in table

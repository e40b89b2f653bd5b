"""The job page's zero-shot table for a sweep: the dense model's acc and every run's, per task, an approximate task
starred with its note (a prune job's table is checked end to end in test_zeroshot_jobs.py)."""

from __future__ import annotations

from pathlib import Path

from api.ui.views import zero_shot_table
from twossp_core.evaluation.zeroshot.evaluate import PreparedTask, zero_shot_report
from twossp_core.evaluation.zeroshot.metrics import accuracies
from twossp_core.evaluation.zeroshot.sources import TaskData, load_task


def test_a_sweep_shows_the_dense_model_and_every_run(test_data: Path) -> None:
    data = TaskData(root=test_data / "tasks")
    prepared = [PreparedTask(load_task(name, 4, data), [], 4) for name in ("winogrande", "hellaswag")]

    def scores(bias: int) -> dict:  # the gold choice likelier in the first `bias` items
        return {p.task.name: accuracies(p.task.items, [[0.0 if (k == i.gold) == (n < bias) else -1.0
                                                         for k in range(len(i.requests))]
                                                        for n, i in enumerate(p.task.items)], p.task.metrics)
                for p in prepared}

    dense = zero_shot_report(prepared, 4, {"dense": scores(3)})
    runs = [{"method": m, "sparsity_target": 0.25, "error": None,
             "zero_shot": zero_shot_report(prepared, 4, {"dense": scores(3), "pruned": scores(b)})}
            for m, b in (("2ssp", 2), ("shortgpt", 1))]
    table = zero_shot_table({"dense": {"zero_shot": dense}, "rows": runs})
    assert table is not None
    assert table["header"] == ["Task", "Items", "Dense", "2ssp 0.25", "shortgpt 0.25"]
    assert table["rows"][0][:2] == ["winogrande", "4"] and table["rows"][1][0] == "hellaswag*"
    for row in table["rows"]:
        assert [cell.split(" ± ")[0] for cell in row[2:]] == ["0.7500", "0.5000", "0.2500"]
        # each run against the dense model on the same items: 2ssp lost item 3, shortgpt items 2 and 3
        assert "Δ" not in row[2] and "(Δ -0.2500 ± 0.2500)" in row[3] and "(Δ -0.5000 ± 0.2887)" in row[4]
    assert table["subset"].startswith("first 4 items per task") and "text extraction" in table["notes"][0]
    assert zero_shot_table({"perplexity": []}) is None

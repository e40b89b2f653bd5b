"""Zero-shot tasks: the readers against the shared task files, the packed scorer against one plain forward pass per
request on every family, and the accuracies against their definition."""

from __future__ import annotations

import argparse
import json
import math
import random
from collections import Counter

import pytest
import torch
from conftest import require_data
from tiny_models import FAMILIES, tiny_model

from twossp_core.cli.options import task_data
from twossp_core.errors import DataError, InvalidSpec
from twossp_core.evaluation.zeroshot.items import Item
from twossp_core.evaluation.zeroshot.metrics import accuracies
from twossp_core.evaluation.zeroshot.scoring import loglikelihoods, pack, segment
from twossp_core.evaluation.zeroshot.sources import TaskData, check_sources, load_task
from twossp_core.models.registry import adapter_for
from twossp_core.plan.tasks import PAPER_TASKS, parse_tasks


@pytest.fixture(scope="module")
def task_dir():
    return require_data("tasks")


# ---- reading ----------------------------------------------------------------------------------------------------

# item counts and gold counts stated in shared/data/tasks/SOURCES.md
EXPECTED = {
    "piqa": (1838, {0: 910, 1: 928}),
    "winogrande": (1267, {0: 628, 1: 639}),
    "arc_challenge": (1172, None),
    "arc_easy": (2376, None),
    "hellaswag": (10042, {0: 2515, 1: 2485, 2: 2584, 3: 2458}),
    "mmlu": (14042, {0: 3222, 1: 3462, 2: 3582, 3: 3776}),
}


@pytest.mark.parametrize("task", PAPER_TASKS)
def test_reads_every_item_of_the_shared_files(task, task_dir):
    read = load_task(task, None, TaskData(root=task_dir))
    count, golds = EXPECTED[task]
    assert len(read.items) == read.total == count
    if golds is not None:
        assert Counter(i.gold for i in read.items) == golds
    assert read.approximate == (task == "hellaswag")
    assert read.metrics == (("acc",) if task in ("winogrande", "mmlu") else ("acc", "acc_norm"))


def test_prompts_follow_lm_eval(task_dir):
    data = TaskData(root=task_dir)
    wino = load_task("winogrande", 1, data).items[0]
    assert wino.requests == (("Sarah was a much better surgeon than Maria so Sarah", " always got the easier cases."),
                             ("Sarah was a much better surgeon than Maria so Maria", " always got the easier cases."))
    assert wino.gold == 1
    arc = load_task("arc_easy", 1, data).items[0]
    assert arc.requests[0] == (
        "Question: Which statement best explains why photosynthesis is the foundation of most food webs?\nAnswer:",
        " Sunlight is the source of energy for nearly all ecosystems.")
    assert arc.choices[0] == "Sunlight is the source of energy for nearly all ecosystems."
    mmlu = load_task("mmlu", 1, data)
    assert len(mmlu.items) == 57  # the limit is per subject
    first = mmlu.items[0]
    assert first.requests[1] == (
        "The following are multiple choice questions (with answers) about abstract algebra.\n\nFind the degree for "
        "the given field extension Q(sqrt(2), sqrt(3), sqrt(18)) over Q.\nA. 0\nB. 4\nC. 2\nD. 6\nAnswer:", " B")
    assert first.gold == 1 and first.group == "abstract_algebra"
    hella = load_task("hellaswag", 1, data).items[0]
    assert hella.requests[3] == ("Roof shingle removal: A man is sitting on a roof. he",
                                 " starts pulling up roofing on a roof.")
    assert hella.gold == 3


def test_hellaswag_original_rows_are_read_as_lm_eval_builds_them(tmp_path):
    row = {"activity_label": "Making a cake", "ctx_a": "A woman mixes flour [title] in a bowl.",
           "ctx_b": "then SHE pours", "endings": ["it into a pan. [step] ", "x", "y  z", "w"], "label": "0"}
    (tmp_path / "hellaswag_val.jsonl").write_text(json.dumps(row) + "\n")
    read = load_task("hellaswag", None, TaskData(paths={"hellaswag": tmp_path}))
    assert not read.approximate
    item = read.items[0]
    # ctx_b capitalised (rest lower-cased), " [title]" -> ". ", tags dropped, double spaces collapsed; the strip
    # comes first, so a space left by a dropped tag stays
    assert item.requests[0] == ("Making a cake: A woman mixes flour. in a bowl. Then she pours", " it into a pan. ")
    assert item.choices == ("it into a pan. ", "x", "y z", "w")


def test_task_names_and_missing_data(tmp_path, monkeypatch):
    assert parse_tasks("paper") == list(PAPER_TASKS)
    assert parse_tasks("piqa, arc_easy,piqa") == ["piqa", "arc_easy"]
    with pytest.raises(InvalidSpec, match="unknown zero-shot task 'boolq'"):
        parse_tasks("piqa,boolq")
    with pytest.raises(DataError, match="does not exist"):
        check_sources(["piqa"], TaskData(paths={"piqa": tmp_path / "nowhere"}))
    (tmp_path / "piqa").mkdir()
    with pytest.raises(DataError, match="holds none of the files"):
        check_sources(["piqa"], TaskData(root=tmp_path))
    monkeypatch.setenv("TWOSSP_TASK_DATA", str(tmp_path))
    cli_data = task_data(argparse.Namespace(task_data=None, task_file=[f"winogrande={tmp_path}"]))
    assert cli_data.root == tmp_path  # the CLI's default directory, the task's own path before it
    with pytest.raises(DataError, match="no winogrande"):
        check_sources(["winogrande"], cli_data)


# ---- scoring ----------------------------------------------------------------------------------------------------


def plain_loglikelihood(model, context_ids, continuation_ids, limit):
    """One request, one forward pass, as lm-eval's HF backend computes it."""
    whole = (context_ids + continuation_ids)[-(limit + 1) :]
    inp = torch.tensor([whole[:-1]])
    logprobs = torch.log_softmax(model(input_ids=inp).logits[0].float(), dim=-1)
    n = len(continuation_ids)
    picked = logprobs[-n:].gather(-1, torch.tensor(continuation_ids)[:, None])
    return float(picked.sum())


def random_items(vocab, limit, seed=0):
    """Items shaped like the tasks': shared contexts with endings, WinoGrande's different contexts with one
    continuation, one-token continuations, and contexts longer than the model's context (cut from the left)."""
    rng = random.Random(seed)

    def ids(n):
        return [rng.randrange(1, vocab) for _ in range(n)]

    items = []
    for k in range(12):
        context = ids(rng.randrange(3, 40) if k != 5 else limit + 20)
        items.append([(context, ids(rng.randrange(1, 9))) for _ in range(rng.choice([2, 4]))])
    for _ in range(4):
        prefix, rest = ids(rng.randrange(2, 20)), ids(rng.randrange(2, 12))
        items.append([(prefix + ids(2), rest), (prefix + ids(1), rest)])
    for _ in range(4):
        context = ids(rng.randrange(10, 60))
        items.append([(context, [c]) for c in ids(4)])
    return items


@pytest.mark.parametrize("family", FAMILIES)
def test_packed_scores_equal_one_forward_per_request(family):
    """Packing (shared prefixes, branches, several items per row, several rows per pass, sliding windows) changes
    no log-likelihood: each equals the request's own forward pass."""
    model = tiny_model(family)
    limit = model.config.max_position_embeddings
    items = random_items(model.config.vocab_size, limit)
    segments = [segment(pairs, limit) for pairs in items]
    shared = sum(len(s) for s in segments)
    assert shared < sum(len(c) + len(k) - 1 for pairs in items for c, k in pairs)  # contexts counted once
    packed = loglikelihoods(adapter_for(model), segments, row_tokens=64, batch_tokens=256)
    with torch.no_grad():
        for pairs, values in zip(items, packed, strict=True):
            expected = [plain_loglikelihood(model, c, k, limit) for c, k in pairs]
            assert values == pytest.approx(expected, rel=1e-4, abs=1e-4)


def test_rows_hold_whole_segments_within_capacity():
    lengths = [50, 10, 30, 70, 200, 5, 64, 40]
    rows = pack(lengths, 64)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    for row in rows:
        assert len(row) == 1 or sum(lengths[i] for i in row) <= 64
    assert len(rows) < len(lengths)


# ---- metrics ----------------------------------------------------------------------------------------------------


def test_accuracies_follow_lm_eval():
    items = [
        Item(requests=(("q", " a"), ("q", " bbbb")), gold=1, choices=("a", "bbbb")),
        Item(requests=(("q", " a"), ("q", " b")), gold=0, choices=("a", "b")),
        Item(requests=(("q", " aa"), ("q", " b")), gold=0, choices=("aa", "b")),
    ]
    lls = [[-2.0, -4.0], [-1.0, -1.0], [-3.0, -2.0]]
    scores = accuracies(items, lls, ("acc", "acc_norm"))
    # acc: item 1 wrong (-2 > -4), item 2 right (tie -> first), item 3 wrong; acc_norm by characters:
    # -2/1 < -4/4 -> right, tie -> right, -3/2 > -2/1 -> right
    assert scores["acc"] == pytest.approx(1 / 3)
    assert scores["acc_norm"] == 1.0
    assert scores["acc_stderr"] == pytest.approx(math.sqrt((1 / 3) * (2 / 3) / 2))
    assert scores["acc_norm_stderr"] == 0.0
    assert accuracies(items[:1], lls[:1], ("acc",))["acc_stderr"] is None


def test_paired_difference_is_the_mean_per_item_difference_with_its_standard_error():
    from twossp_core.evaluation.zeroshot.metrics import paired_difference, with_paired_differences

    mean, err = paired_difference("1100", "1010")  # differences 0, -1, +1, 0
    assert mean == 0.0 and err == pytest.approx(math.sqrt(2 / 3) / 2)
    mean, err = paired_difference("0000", "1111")
    assert mean == 1.0 and err == 0.0  # every item moved the same way: no spread
    with pytest.raises(ValueError):
        paired_difference("101", "10")
    dense = {"acc": 0.5, "acc_per_item": "1100"}
    scored = with_paired_differences(dense, {"acc": 0.25, "acc_per_item": "1000"}, ["acc", "acc_norm"])
    assert scored["acc_delta"] == pytest.approx(-0.25) and "acc_norm_delta" not in scored

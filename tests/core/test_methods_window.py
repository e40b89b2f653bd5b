"""Sliding-window depth pruning: angular distance, the most redundant run is deleted, reload, real model."""

from __future__ import annotations

import math

import pytest
import torch
from methods_common import assert_reloads_equal, ppl, prune, prune_stories, stories_workspace
from test_methods_shortgpt import make_identity
from tiny_models import tiny_model

from twossp_core.pruning.window.distance import angular_distances, best_start


def test_angular_distance_of_runs():
    # states rotate by 0, 90 and 90 degrees across blocks 0, 1, 2
    states = torch.tensor([[[1.0, 0.0]], [[1.0, 0.0]], [[0.0, 1.0]], [[-1.0, 0.0]]])
    d1 = angular_distances(states, 1)
    torch.testing.assert_close(d1, torch.tensor([0.0, 0.5, 0.5], dtype=torch.float64))
    d2 = angular_distances(states, 2)
    torch.testing.assert_close(d2, torch.tensor([0.5, 1.0], dtype=torch.float64))
    assert best_start(torch.tensor([0.3, 0.1, 0.1])) == 1
    assert math.isclose(float(angular_distances(states[[0, 0]], 1)[0]), 0.0, abs_tol=1e-6)


def test_deletes_the_consecutive_pass_through_run(tmp_path):
    model = tiny_model("llama")
    make_identity(model, 1)
    make_identity(model, 2)
    outcome = prune("window", model, 0.5)
    assert outcome.removed_blocks == [1, 2]
    assert outcome.details["window_start"] == 1
    assert len(model.model.layers) == 2 and model.config.num_hidden_layers == 2
    assert_reloads_equal(model, tmp_path, remote_code=False)


def test_window_and_shortgpt_share_the_dense_states():
    cache: dict = {}
    prune("shortgpt", tiny_model("llama"), 0.25, cache=cache)
    keys = set(cache)
    prune("window", tiny_model("llama"), 0.25, cache=cache)
    assert set(cache) == keys


@pytest.mark.slow
def test_stories260k_window(stories_model, stories_text):
    ws = stories_workspace(str(stories_model), str(stories_text))
    report = prune_stories(ws, "window", 0.375)
    removed = report["removed_blocks"]
    assert len(removed) == 2 and removed[1] == removed[0] + 1
    distances = report["method_details"]["angular_distance_by_start"]
    assert removed[0] == min(range(len(distances)), key=lambda i: distances[i])
    dense, pruned = ppl(report)
    assert dense < pruned < 1e4
    assert report["_model"].config.num_hidden_layers == 3

"""Sliding window: delete the n consecutive blocks whose entry and exit states are most similar."""

from __future__ import annotations

from typing import Any

import torch

from twossp_core.pruning.whole_blocks import WholeBlockMethod
from twossp_core.pruning.window.config import WindowConfig
from twossp_core.pruning.window.distance import angular_distances, best_start


class SlidingWindow(WholeBlockMethod):
    stage = "distances"
    config: WindowConfig

    def choose(self, states: torch.Tensor, count: int) -> tuple[list[int], dict[str, Any]]:
        distances = angular_distances(states, count)
        start = best_start(distances)
        details = {"angular_distance_by_start": [float(x) for x in distances], "window_start": start}
        return list(range(start, start + count)), details

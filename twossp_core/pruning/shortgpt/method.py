"""ShortGPT: score every block's influence on the dense model, physically delete the least influential."""

from __future__ import annotations

from typing import Any

import torch

from twossp_core.pruning.shortgpt.config import ShortGPTConfig
from twossp_core.pruning.shortgpt.influence import block_influence, least_influential
from twossp_core.pruning.whole_blocks import WholeBlockMethod


class ShortGPT(WholeBlockMethod):
    stage = "influence"
    config: ShortGPTConfig

    def choose(self, states: torch.Tensor, count: int) -> tuple[list[int], dict[str, Any]]:
        influence = block_influence(states)
        return least_influential(influence, count), {"block_influence": [float(x) for x in influence]}

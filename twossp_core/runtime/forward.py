"""Forward passes built from adapter pieces: full passes, block-range passes from cached inputs, NLL.

`BlockRunner.capture` records, for one batch of windows, the hidden state entering every block together
with the keyword arguments the decoder passed to it (masks, rotary embeddings). Re-running blocks i..B from
that record reproduces the model's computation exactly, which lets depth-pruning searches skip the blocks
before a candidate.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from twossp_core.models.base import ModelAdapter

LOGIT_CHUNK = 512  # positions per LM-head chunk: bounds the logits' memory for large vocabularies


def _block_output(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else out


@torch.no_grad()
def nll_sum(adapter: ModelAdapter, normed: torch.Tensor, input_ids: torch.Tensor) -> tuple[float, int]:
    """Sum of next-token negative log-likelihoods (float64) and the number of predicted tokens."""
    total = torch.zeros((), dtype=torch.float64, device=normed.device)
    seq = input_ids.shape[1]
    for start in range(0, seq - 1, LOGIT_CHUNK):
        end = min(start + LOGIT_CHUNK, seq - 1)
        logits = adapter.head(normed[:, start:end]).float()
        targets = input_ids[:, start + 1 : end + 1]
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum"
        )
        total += loss.double()
    return float(total), int(input_ids.shape[0] * (seq - 1))


@torch.no_grad()
def decoder_output(adapter: ModelAdapter, input_ids: torch.Tensor) -> torch.Tensor:
    """Final-normed hidden states of the whole decoder (no LM head)."""
    return adapter.decoder(input_ids=input_ids, use_cache=False).last_hidden_state


@torch.no_grad()
def window_nll(adapter: ModelAdapter, input_ids: torch.Tensor) -> tuple[float, int]:
    return nll_sum(adapter, decoder_output(adapter, input_ids), input_ids)


@dataclass
class BlockInputs:
    """Per block: the hidden state entering it and the other arguments of its call."""

    input_ids: torch.Tensor
    hidden: list[torch.Tensor] = field(default_factory=list)
    args: list[tuple[Any, ...]] = field(default_factory=list)
    kwargs: list[dict[str, Any]] = field(default_factory=list)


class BlockRunner:
    def __init__(self, adapter: ModelAdapter) -> None:
        self.adapter = adapter

    @torch.no_grad()
    def capture(self, input_ids: torch.Tensor) -> BlockInputs:
        record = BlockInputs(input_ids=input_ids)
        handles = []

        def hook(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            if args:
                hidden, rest = args[0], args[1:]
            else:
                kwargs = dict(kwargs)
                hidden, rest = kwargs.pop("hidden_states"), ()
            record.hidden.append(hidden)
            record.args.append(rest)
            record.kwargs.append({k: v for k, v in kwargs.items() if k != "hidden_states"})

        for layer in self.adapter.layers:
            handles.append(layer.register_forward_pre_hook(hook, with_kwargs=True))
        try:
            self.adapter.decoder(input_ids=input_ids, use_cache=False)
        finally:
            for h in handles:
                h.remove()
        if len(record.hidden) != self.adapter.num_blocks:
            raise RuntimeError("could not capture the input of every block")
        return record

    @torch.no_grad()
    def run_from(self, record: BlockInputs, start: int) -> torch.Tensor:
        """Output of the last block, starting from the recorded input of block `start`."""
        hidden = record.hidden[start]
        for idx in range(start, self.adapter.num_blocks):
            hidden = _block_output(self.adapter.layers[idx](hidden, *record.args[idx], **record.kwargs[idx]))
        return hidden

    @torch.no_grad()
    def nll_from(self, record: BlockInputs, start: int) -> tuple[float, int]:
        hidden = self.run_from(record, start)
        return nll_sum(self.adapter, self.adapter.final_norm(hidden), record.input_ids)

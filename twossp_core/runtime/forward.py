"""Forward passes built from adapter pieces: full passes, block-range passes from cached inputs, NLL.

`BlockRunner.capture` records, for one batch of windows, the hidden state entering every block together
with the keyword arguments the decoder passed to it (masks, rotary embeddings). Re-running blocks i..B from
that record reproduces the model's computation exactly, which lets depth-pruning searches skip the blocks
before a candidate. The capture stops the decoder as soon as the last block's input is known, so the last
block and the final norm are never computed for it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from twossp_core.models.base import ModelAdapter

LOGIT_CHUNK = 512  # positions per LM-head chunk: bounds the logits' memory for large vocabularies


class StopForward(Exception):
    """Raised from a hook to end a forward pass once everything it was run for has been seen."""


def block_output(out: Any) -> torch.Tensor:
    """The hidden state a decoder block returns (some return a tuple, some the tensor)."""
    return out[0] if isinstance(out, tuple) else out


def _chunk_nll(
    adapter: ModelAdapter, normed: torch.Tensor, input_ids: torch.Tensor, start: int, end: int
) -> torch.Tensor:
    """Sum (float64) of -log p(next token) over positions start..end-1.

    The log-sum-exp is taken in place on the chunk's logits, so the chunk holds one (positions x vocab) buffer
    instead of the two a log-softmax needs (a few hundred MB per chunk for 128k-150k vocabularies).
    """
    logits = adapter.head(normed[:, start:end]).float()
    targets = input_ids[:, start + 1 : end + 1].unsqueeze(-1).to(logits.device)  # multi-device: the head's device
    picked = logits.gather(-1, targets).squeeze(-1)
    peak = logits.amax(dim=-1, keepdim=True)
    logits.sub_(peak).exp_()
    log_total = logits.sum(dim=-1).log_() + peak.squeeze(-1)
    return (log_total - picked).sum(dtype=torch.float64)


@torch.no_grad()
def nll_sum(adapter: ModelAdapter, normed: torch.Tensor, input_ids: torch.Tensor) -> tuple[float, int]:
    """Sum of next-token negative log-likelihoods (float64) and the number of predicted tokens."""
    total = torch.zeros((), dtype=torch.float64, device=normed.device)
    seq = input_ids.shape[1]
    for start in range(0, seq - 1, LOGIT_CHUNK):
        total += _chunk_nll(adapter, normed, input_ids, start, min(start + LOGIT_CHUNK, seq - 1)).to(total.device)
    return float(total), int(input_ids.shape[0] * (seq - 1))


@torch.no_grad()
def nll_sum_until(
    adapter: ModelAdapter, normed: torch.Tensor, input_ids: torch.Tensor, give_up: Callable[[float], bool]
) -> tuple[float, int, bool]:
    """`nll_sum`, computed chunk by chunk in the same order, that stops as soon as `give_up(partial)` holds.

    Every chunk adds a non-negative amount, so a partial sum never exceeds the complete one: a caller that
    gives up when the partial sum already loses a comparison takes the decision the complete sum would.
    Returns (sum, tokens, complete); the sum is bit-identical to `nll_sum` when complete.
    """
    total = torch.zeros((), dtype=torch.float64, device=normed.device)
    seq = input_ids.shape[1]
    for start in range(0, seq - 1, LOGIT_CHUNK):
        end = min(start + LOGIT_CHUNK, seq - 1)
        total += _chunk_nll(adapter, normed, input_ids, start, end).to(total.device)
        if end < seq - 1 and give_up(float(total)):
            return float(total), int(input_ids.shape[0] * (seq - 1)), False
    return float(total), int(input_ids.shape[0] * (seq - 1)), True


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
    def capture(self, input_ids: torch.Tensor, blocks: int | None = None) -> BlockInputs:
        """The inputs of the first `blocks` blocks (default: all of them)."""
        record = BlockInputs(input_ids=input_ids)
        handles = []
        wanted = self.adapter.num_blocks if blocks is None else min(blocks, self.adapter.num_blocks)
        last = wanted - 1

        def hook(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            if args:
                hidden, rest = args[0], args[1:]
            else:
                kwargs = dict(kwargs)
                hidden, rest = kwargs.pop("hidden_states"), ()
            record.hidden.append(hidden)
            record.args.append(rest)
            record.kwargs.append({k: v for k, v in kwargs.items() if k != "hidden_states"})
            if len(record.hidden) > last:
                raise StopForward  # the last block's input is all that was needed

        for layer in self.adapter.layers:
            handles.append(layer.register_forward_pre_hook(hook, with_kwargs=True))
        try:
            self.adapter.decoder(input_ids=input_ids, use_cache=False)
        except StopForward:
            pass
        finally:
            for h in handles:
                h.remove()
        if len(record.hidden) != wanted:
            raise RuntimeError(f"could not capture the inputs of {wanted} blocks")
        return record

    @torch.no_grad()
    def run_from(self, record: BlockInputs, start: int, states: list[torch.Tensor] | None = None) -> torch.Tensor:
        """Output of the last block, starting from the recorded input of block `start`.

        With `states`, the hidden state entering each later block (start+1 .. B-1) is appended to it, so a
        caller that adopts this run's structure can update the record without recomputing it.
        """
        hidden = record.hidden[start]
        for idx in range(start, self.adapter.num_blocks):
            if states is not None and idx > start:
                states.append(hidden)
            hidden = block_output(self.adapter.layers[idx](hidden, *record.args[idx], **record.kwargs[idx]))
        return hidden

    @torch.no_grad()
    def nll_from(self, record: BlockInputs, start: int) -> tuple[float, int]:
        hidden = self.run_from(record, start)
        return nll_sum(self.adapter, self.adapter.final_norm(hidden), record.input_ids)

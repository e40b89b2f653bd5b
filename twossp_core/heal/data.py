"""The text a heal trains on: one token stream per source, windows drawn at random offsets."""

from __future__ import annotations

from typing import Any

import torch

from twossp_core.data.windows import load_windows
from twossp_core.errors import DataError
from twossp_core.plan.sources import DataSource


class TokenStream:
    """Concatenated token streams of the heal sources; `batch` draws windows at uniformly random offsets."""

    def __init__(self, streams: list[torch.Tensor], seq_len: int) -> None:
        self.seq_len = seq_len
        self.tokens = torch.cat(streams)
        if self.tokens.numel() < seq_len:
            raise DataError(f"heal data has {self.tokens.numel()} tokens, fewer than one window of {seq_len}")

    @property
    def num_tokens(self) -> int:
        return int(self.tokens.numel())

    def batch(self, size: int, generator: torch.Generator) -> torch.Tensor:
        starts = torch.randint(0, self.num_tokens - self.seq_len + 1, (size,), generator=generator)
        offsets = torch.arange(self.seq_len)
        return self.tokens[starts[:, None] + offsets[None, :]]


def load_stream(
    sources: list[DataSource], tokenizer: Any, *, seq_len: int, doc_separator: str | None, max_tokens: int
) -> TokenStream:
    """Read the sources (each at most max_tokens tokens: a long hub dataset is not read past what is drawn)."""
    max_windows = max(1, -(-max_tokens // seq_len))
    streams = [
        load_windows(
            source, tokenizer, seq_len=seq_len, role="calibration", doc_separator=doc_separator,
            max_windows=max_windows,
        ).flatten()
        for source in sources
    ]
    return TokenStream(streams, seq_len)

"""Turning documents into token windows: join with blank lines, tokenize without special tokens, cut."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch

from twossp_core.data.sources import Role, iter_documents
from twossp_core.errors import DataError
from twossp_core.plan.sources import DataSource

JOINER = "\n\n"
CHARS_PER_TOKEN_GUESS = 3  # only decides how much streamed text to read before tokenizing
BOUNDARY_MARGIN = 256  # extra tokens read past a bound so the cut never falls on a merge at the text's end


def tokenize(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])


def cut_windows(tokens: list[int], seq_len: int, max_windows: int | None = None) -> torch.Tensor:
    """Consecutive non-overlapping full windows (the tail shorter than seq_len is dropped)."""
    count = len(tokens) // seq_len
    if max_windows is not None:
        count = min(count, max_windows)
    if count == 0:
        return torch.empty((0, seq_len), dtype=torch.long)
    return torch.tensor(tokens[: count * seq_len], dtype=torch.long).view(count, seq_len)


def _joined_tokens(
    docs: Iterator[str], tokenizer: Any, needed_tokens: int | None, checkpoint: Callable[[], None]
) -> list[int]:
    """Tokens of the joined documents; with a bound, read only as many documents as the bound needs.
    `checkpoint` runs between documents read (a streamed hub dataset reads for long) and tokenizer calls."""
    if needed_tokens is None:
        texts = []
        for doc in docs:
            checkpoint()
            texts.append(doc)
        return tokenize(tokenizer, JOINER.join(texts))
    texts: list[str] = []
    chars = 0
    tokens: list[int] = []
    exhausted = False
    while not exhausted:
        target_chars = max(chars * 2, needed_tokens * CHARS_PER_TOKEN_GUESS)
        while chars < target_chars:
            checkpoint()
            doc = next(docs, None)
            if doc is None:
                exhausted = True
                break
            texts.append(doc)
            chars += len(doc) + len(JOINER)
        tokens = tokenize(tokenizer, JOINER.join(texts))
        checkpoint()
        if len(tokens) >= needed_tokens + BOUNDARY_MARGIN:
            break
    return tokens


def load_windows(
    source: DataSource,
    tokenizer: Any,
    *,
    seq_len: int,
    role: Role,
    doc_separator: str | None = None,
    max_windows: int | None = None,
    checkpoint: Callable[[], None] = lambda: None,
) -> torch.Tensor:
    """(n, seq_len) token ids from one source; an error if not even one full window fits. `checkpoint` may raise
    to stop (a cancel) between documents and tokenizer calls."""
    docs = iter_documents(source, role, doc_separator)
    needed = None if max_windows is None else max_windows * seq_len
    tokens = _joined_tokens(docs, tokenizer, needed, checkpoint)
    windows = cut_windows(tokens, seq_len, max_windows)
    if windows.shape[0] == 0:
        raise DataError(
            f"data source {source.label!r} yields {len(tokens)} tokens, fewer than one window of {seq_len}"
        )
    return windows

"""The context length an export declares.

A sliding-window model (Mistral 7B v0.1: `sliding_window` 4,096) attends to the last `sliding_window` positions
only. llama.cpp's `llama` and `deci` graphs and the DeciLM layout attend to every position, so such an export is
exact only up to the window: it declares the window as its context length (and drops `sliding_window` where it
writes a config), rather than a longer context on which it would silently compute something else.
"""

from __future__ import annotations

from typing import Any


def exported_context(config: Any) -> tuple[int, int | None]:
    """(context length to declare, the sliding window that capped it or None)."""
    context = int(config.max_position_embeddings)
    window = getattr(config, "sliding_window", None)
    if window is not None and getattr(config, "use_sliding_window", True) is not False and int(window) < context:
        return int(window), int(window)
    return context, None

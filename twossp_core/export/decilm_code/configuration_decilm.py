"""DeciLM / Nemotron-NAS configuration: a Llama configuration with one `block_configs` entry per layer.

Each entry is `{"attention": {"no_op", "n_heads_in_group", "replace_with_linear"}, "ffn": {"no_op", "ffn_mult",
"replace_with_linear"}}`. A block's FFN width is `int(2 * ffn_mult * hidden_size / 3)` rounded up to a multiple
of 256, its key/value heads `num_attention_heads // n_heads_in_group`; `no_op` removes the submodule and its
norm (the residual passes through). Entries read as attributes (`block.attention.no_op`) and save as JSON.
Only transformers is imported here.
"""

from __future__ import annotations

from typing import Any

from transformers import LlamaConfig


class _Entry(dict):
    """A dict whose keys also read as attributes (JSON-serialisable as a plain dict)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def _block(entry: Any) -> _Entry:
    entry = dict(entry)
    return _Entry(attention=_Entry(entry.get("attention") or {}), ffn=_Entry(entry.get("ffn") or {}))


def ffn_mult_to_intermediate_size(ffn_mult: float, hidden_size: int) -> int:
    width = int(2 * ffn_mult * hidden_size / 3)
    return width if width % 256 == 0 else width + 256 - width % 256


class DeciLMConfig(LlamaConfig):
    model_type = "nemotron-nas"

    def __init__(self, block_configs: list[Any] | None = None, **kwargs: Any) -> None:
        self.block_configs = [_block(b) for b in block_configs or []]
        super().__init__(**kwargs)

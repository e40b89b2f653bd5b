"""The tokenizer of a Hugging Face model as GGUF tokenizer metadata, so llama.cpp tokenizes as transformers does.

Two tokenizer kinds of the Llama-compatible families are recognised from `tokenizer.json`:

- SentencePiece-style BPE (byte fallback, spaces written as "▁", a "▁" prepended): GGUF model `llama`. llama.cpp
  merges the adjacent pair whose merged piece has the highest score, so every piece made by a merge gets the
  score −rank of that merge (earlier merges win, as in the BPE model); byte pieces `<0xXX>` are BYTE tokens.
- Byte-level BPE (GPT-2 style): GGUF model `gpt2` with the merge list and the pre-tokenizer named by its regex
  (`gpt-2` for the plain ByteLevel split, `smollm` for every digit split off first and then the ByteLevel split, as
  SmolLM's tokenizer does, `llama-bpe` for Llama 3's).

The chat template, when the tokenizer has one, goes into `tokenizer.chat_template`.

Anything else is refused with the reason, rather than written as a tokenizer that would split text differently.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from twossp_core.errors import InvalidSpec

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6  # gguf TokenType values

LLAMA3_REGEX = (
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
    "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
)


@dataclass
class GGUFVocab:
    model: str  # "llama" (SentencePiece-style) or "gpt2" (byte-level BPE)
    tokens: list[str]
    types: list[int]
    scores: list[float] | None = None
    merges: list[str] | None = None
    pre: str | None = None
    add_bos: bool = False
    add_eos: bool = False
    add_space_prefix: bool | None = None
    special: dict[str, int] = field(default_factory=dict)  # bos / eos / unk / pad -> id
    chat_template: str | None = None


def _walk(node: Any) -> list[dict[str, Any]]:
    """A normalizer or pre-tokenizer and, for a Sequence, its parts."""
    if not isinstance(node, dict):
        return []
    parts = [node]
    for key in ("normalizers", "pretokenizers"):
        for child in node.get(key) or []:
            parts.extend(_walk(child))
    return parts


def _merge_pair(merge: Any) -> tuple[str, str]:
    if isinstance(merge, str):
        first, _, second = merge.partition(" ")
        return first, second
    return merge[0], merge[1]


def _kind(data: dict[str, Any]) -> str:
    model = data.get("model") or {}
    if model.get("type") != "BPE":
        raise InvalidSpec(f"export 'gguf': tokenizer model {model.get('type')!r} is not supported (BPE only)")
    parts = _walk(data.get("normalizer")) + _walk(data.get("pre_tokenizer"))
    types = {p.get("type") for p in parts}
    if "ByteLevel" in types:
        return "gpt2"
    spm_prefix = any(p.get("type") == "Prepend" and p.get("prepend") == "▁" for p in parts) or any(
        p.get("type") == "Metaspace" for p in parts
    )
    if model.get("byte_fallback") and spm_prefix:
        return "llama"
    raise InvalidSpec(
        "export 'gguf': tokenizer.json is neither SentencePiece-style BPE (byte fallback, '▁' spaces) nor "
        "byte-level BPE; llama.cpp would split text differently"
    )


def _gpt2_pre(data: dict[str, Any]) -> str:
    parts = _walk(data.get("pre_tokenizer"))
    splits = [p for p in parts if p.get("type") == "Split"]
    byte_level = [p for p in parts if p.get("type") == "ByteLevel"]
    digits = [p for p in parts if p.get("type") == "Digits"]
    if not splits and byte_level and byte_level[0].get("use_regex", True):
        if not digits:
            return "gpt-2"
        if len(digits) == 1 and digits[0].get("individual_digits") and parts.index(digits[0]) < parts.index(
                byte_level[0]):
            return "smollm"  # llama.cpp: every digit on its own, then the GPT-2 split
    if len(splits) == 1 and (splits[0].get("pattern") or {}).get("Regex") == LLAMA3_REGEX:
        return "llama-bpe"
    raise InvalidSpec(
        "export 'gguf': the byte-level pre-tokenizer is not one llama.cpp names (gpt-2, smollm, llama-bpe)"
    )


def _adds_special(data: dict[str, Any], token_id: int | None) -> bool:
    """Whether the post-processor puts `token_id` into a single sequence."""
    post = data.get("post_processor") or {}
    if token_id is None:
        return False
    if post.get("type") == "TemplateProcessing":
        specials = post.get("special_tokens") or {}
        for item in post.get("single") or []:
            name = (item.get("SpecialToken") or {}).get("id")
            if name is not None and token_id in (specials.get(name) or {}).get("ids", []):
                return True
    return False


def gguf_vocab(tokenizer: Any, vocab_size: int) -> GGUFVocab:
    """The GGUF tokenizer metadata for a transformers fast tokenizer and the model's embedding rows."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise InvalidSpec("export 'gguf' needs a fast tokenizer (tokenizer.json)")
    data = json.loads(backend.to_str())
    kind = _kind(data)
    vocab: dict[str, int] = dict(data["model"]["vocab"])
    added = {t["content"]: t for t in data.get("added_tokens") or []}
    for content, entry in added.items():
        vocab.setdefault(content, entry["id"])
    size = max(vocab.values()) + 1
    if size > vocab_size:
        raise InvalidSpec(f"export 'gguf': the tokenizer has {size} tokens but the model only {vocab_size} rows")
    by_id: dict[int, str] = {i: t for t, i in vocab.items()}
    tokens, types = [], []
    for i in range(vocab_size):
        text = by_id.get(i)
        if text is None:
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
            continue
        tokens.append(text)
        entry = added.get(text)
        if entry is not None and entry.get("special"):
            types.append(UNKNOWN if text == data["model"].get("unk_token") else CONTROL)
        elif entry is not None:
            types.append(USER_DEFINED)
        elif kind == "llama" and len(text) == 6 and text.startswith("<0x") and text.endswith(">"):
            types.append(BYTE)
        else:
            types.append(NORMAL)

    special: dict[str, int] = {}
    for role in ("bos", "eos", "unk", "pad"):
        token = getattr(tokenizer, f"{role}_token", None)
        if isinstance(token, str) and token in vocab:
            special[role] = vocab[token]

    merges = [_merge_pair(m) for m in data["model"].get("merges") or []]
    template = getattr(tokenizer, "chat_template", None)
    result = GGUFVocab(model=kind, tokens=tokens, types=types, special=special,
                       chat_template=template if isinstance(template, str) and template else None)
    result.add_bos = _adds_special(data, special.get("bos"))
    result.add_eos = _adds_special(data, special.get("eos"))
    if kind == "llama":
        scores = [0.0] * vocab_size
        for rank, (first, second) in enumerate(merges):
            merged = vocab.get(first + second)
            if merged is not None and scores[merged] == 0.0:
                scores[merged] = -float(rank + 1)
        result.scores = scores
        result.add_space_prefix = True
    else:
        result.merges = [f"{a} {b}" for a, b in merges]
        result.pre = _gpt2_pre(data)
    return result


def write_vocab(writer: Any, vocab: GGUFVocab) -> None:
    """Add the tokenizer keys to a gguf.GGUFWriter."""
    writer.add_tokenizer_model(vocab.model)
    if vocab.pre:
        writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.types)
    if vocab.scores is not None:
        writer.add_token_scores(vocab.scores)
    if vocab.merges is not None:
        writer.add_token_merges(vocab.merges)
    for role, token_id in vocab.special.items():
        getattr(writer, f"add_{role}_token_id")(token_id)
    writer.add_add_bos_token(vocab.add_bos)
    writer.add_add_eos_token(vocab.add_eos)
    if vocab.add_space_prefix is not None:
        writer.add_add_space_prefix(vocab.add_space_prefix)
    if vocab.chat_template is not None:
        writer.add_chat_template(vocab.chat_template)

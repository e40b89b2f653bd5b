"""Batched log-likelihood scoring of (context, continuation) requests, as lm-eval-harness 0.4's HF backend scores
them, with the work shared.

Tokens (what lm-eval's causal HF model does): trailing whitespace of the context moves to the continuation; the
context is encoded alone and context + continuation together, and the continuation's tokens are the joint encoding
past the context's length; both encodings use the tokenizer's defaults (its BOS, if it adds one) unless the text
already starts with the BOS text; an empty context is the BOS (else EOS) token. The model reads context +
continuation minus its last token, cut from the left to the model's context length, and the request's
log-likelihood is the sum of the continuation tokens' log-probabilities.

Sharing: the requests of one item (its choices) usually share most of their input - the context for ARC, PIQA,
HellaSwag and MMLU, the sentence before the blank for WinoGrande. An item becomes one *segment*: the longest
common token prefix of its requests' inputs once, then each request's remaining tokens as a *branch* that attends
to the prefix and to itself, with the positions it has in its own sequence. Segments are packed first-fit into
rows of about `row_tokens` tokens; one 4-D attention mask keeps every token to its own segment, prefix and branch,
so each logit is the one the request's own sequence gives. Only the positions that predict a continuation token
go through the LM head. Continuations of one token (MMLU's " A" .. " D") need no branch at all.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from twossp_core.evaluation.zeroshot.items import Item
from twossp_core.models.base import ModelAdapter

DEFAULT_MAX_LENGTH = 2048  # lm-eval's when neither the config nor the tokenizer gives a context length
TOKENIZER_UNSET = 1e29  # tokenizers report a huge model_max_length when they have none
# Rows: attention runs over a whole row, so packing segments into long rows costs (row length)^2 where separate
# rows cost the sum of their squares; that waste is small next to the linear layers only when a row is not much
# longer than the hidden size. A row is therefore about hidden_size tokens (128 to 1024), a longer segment gets a
# row of its own, and a forward pass takes ROWS_PER_PASS rows' worth of tokens.
MIN_ROW, MAX_ROW, ROWS_PER_PASS = 128, 1024, 16
MAX_PADDING = 0.2  # a row joins a pass only if padding it to the pass's longest row wastes at most this share
HEAD_CHUNK = 1024  # predicting positions per LM-head call: bounds the logits' memory for large vocabularies


def row_tokens_for(config: Any) -> int:
    hidden = getattr(getattr(config, "text_config", None) or config, "hidden_size", None) or MAX_ROW
    return max(MIN_ROW, min(MAX_ROW, int(hidden)))


def max_length(config: Any, tokenizer: Any) -> int:
    """The model's context length as lm-eval resolves it: n_positions, max_position_embeddings or n_ctx of the
    config (its text_config first), else the tokenizer's model_max_length, else 2048."""
    for cfg in (getattr(config, "text_config", None), config):
        if cfg is None:
            continue
        for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
            value = getattr(cfg, attr, None)
            if value:
                return int(value)
    value = getattr(tokenizer, "model_max_length", None)
    if value and value < TOKENIZER_UNSET:
        return int(value)
    return DEFAULT_MAX_LENGTH


class Encoder:
    """Token ids of requests, as lm-eval's HF backend computes them (strings encoded once, cached)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.prefix_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        self.prefix_text = tokenizer.decode(self.prefix_id) if self.prefix_id is not None else None
        self.cache: dict[tuple[str, bool], list[int]] = {}

    def _special(self, text: str) -> bool:
        return not (self.prefix_text is not None and text.startswith(self.prefix_text))

    def encode_many(self, texts: Sequence[str], special: bool | None = None) -> list[list[int]]:
        keys = [(t, self._special(t) if special is None else special) for t in texts]
        for flag in (True, False):
            todo = list(dict.fromkeys(t for t, s in keys if s == flag and (t, s) not in self.cache))
            if todo:
                ids = self.tokenizer(todo, add_special_tokens=flag)["input_ids"]
                self.cache.update({(t, flag): list(i) for t, i in zip(todo, ids, strict=True)})
        return [self.cache[k] for k in keys]

    def pairs(self, requests: Sequence[tuple[str, str]]) -> list[tuple[list[int], list[int]]]:
        """(context ids, continuation ids) of each request."""
        moved = []
        for context, continuation in requests:
            spaces = len(context) - len(context.rstrip())
            if spaces:
                context, continuation = context[:-spaces], context[-spaces:] + continuation
            moved.append((context, continuation))
        joint = [(c, c + k) for c, k in moved if c]
        encoded = iter(self.encode_many([text for pair in joint for text in pair]))
        empty = [k for c, k in moved if not c]
        empty_ids = iter(self.encode_many(empty, special=False))
        out = []
        for context, _ in moved:
            if context:
                context_ids, whole = next(encoded), next(encoded)
                out.append((context_ids, whole[len(context_ids) :]))
            else:
                ids = next(empty_ids)
                out.append(([self.prefix_id], ids) if self.prefix_id != ids[0] else (ids[:1], ids[1:]))
        return out


@dataclass
class Segment:
    """One item's requests as a shared prefix and one branch per request (see the module's docstring)."""

    tokens: list[int]
    positions: list[int]
    branches: list[int]  # -1 for the prefix, else the request's index within the item
    predictors: list[list[int]]  # per request: offsets in `tokens` whose logits predict its continuation tokens
    targets: list[list[int]]  # per request: its continuation tokens

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def plain(self) -> bool:
        """No branches: one causal sequence from position 0 (every continuation is one token, e.g. MMLU's)."""
        return not self.branches or self.branches[-1] == -1


def segment(pairs: Sequence[tuple[list[int], list[int]]], limit: int) -> Segment:
    inputs, targets = [], []
    for context_ids, continuation_ids in pairs:
        if not continuation_ids:
            raise ValueError("a continuation encodes to no token")
        if len(continuation_ids) > limit:
            raise ValueError(f"a continuation of {len(continuation_ids)} tokens is longer than the context ({limit})")
        whole = (context_ids + continuation_ids)[-(limit + 1) :]
        inputs.append(whole[:-1])
        targets.append(continuation_ids)
    shared = min(len(i) for i in inputs)
    first = inputs[0]
    for other in inputs[1:]:
        n = 0
        while n < shared and other[n] == first[n]:
            n += 1
        shared = n
    tokens, positions, branches = list(first[:shared]), list(range(shared)), [-1] * shared
    predictors = []
    for k, (inp, target) in enumerate(zip(inputs, targets, strict=True)):
        start = len(tokens)
        tokens += inp[shared:]
        positions += range(shared, len(inp))
        branches += [k] * (len(inp) - shared)
        offsets = range(len(inp) - len(target), len(inp))
        predictors.append([i if i < shared else start + i - shared for i in offsets])
    return Segment(tokens, positions, branches, predictors, targets)


def pack(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Indices of segments per row: best-fit decreasing, rows of `capacity` tokens (or one longer segment)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (room left, row index), sorted
    for i in order:
        n = lengths[i]
        at = bisect.bisect_left(free, (n, -1))
        if at < len(free):
            room, row = free.pop(at)
        else:
            rows.append([])
            room, row = max(capacity, n), len(rows) - 1
        rows[row].append(i)
        if room - n > 0:
            bisect.insort(free, (room - n, row))
    return rows


def batches(
    rows: list[list[int]], lengths: Sequence[int], batch_tokens: int, plain: Sequence[bool]
) -> list[list[list[int]]]:
    """Rows grouped into forward passes of at most `batch_tokens` (padded) tokens: rows of similar length together
    (none padded by more than MAX_PADDING of the pass's width), plain rows (one plain segment) apart from packed
    ones."""
    sizes = [sum(lengths[i] for i in row) for row in rows]
    kind = [len(row) == 1 and plain[row[0]] for row in rows]
    order = sorted(range(len(rows)), key=lambda r: (kind[r], -sizes[r]))
    out: list[list[list[int]]] = []
    out_rows: list[int] = []  # the first row of each pass
    width = 0
    for r in order:
        if (out and (len(out[-1]) + 1) * width <= batch_tokens and kind[r] == kind[out_rows[-1]]
                and sizes[r] >= (1 - MAX_PADDING) * width):
            out[-1].append(rows[r])
        else:
            out.append([rows[r]])
            out_rows.append(r)
            width = sizes[r]
    return out


def visibility(segs: torch.Tensor, branches: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """[rows, L, L]: whether token i sees token j (the earlier tokens of its segment's prefix and of its branch)."""
    same = segs[:, :, None] == segs[:, None, :]
    earlier = positions[:, None, :] <= positions[:, :, None]
    visible = (branches[:, None, :] == -1) | (branches[:, None, :] == branches[:, :, None])
    return same & earlier & visible


def additive(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    mask = torch.zeros(allowed.shape, dtype=dtype)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[:, None]


def attention_masks(config: Any, allowed: torch.Tensor, positions: torch.Tensor, dtype: torch.dtype) -> Any:
    """The decoder's `attention_mask` argument: one additive [rows, 1, L, L] mask, or one per layer type where the
    model mixes full and sliding-window layers; a sliding window sees the tokens less than `sliding_window`
    positions back, as the model's own masks do."""
    window = getattr(config, "sliding_window", None)
    layer_types = getattr(config, "layer_types", None)

    def sliding() -> torch.Tensor:
        near = positions[:, :, None] - positions[:, None, :] < window
        return additive(allowed & near, dtype)

    if layer_types is not None:
        masks = {"full_attention": additive(allowed, dtype)}
        if "sliding_attention" in layer_types:
            masks["sliding_attention"] = sliding()
        return masks
    return sliding() if window else additive(allowed, dtype)


def model_dtype(adapter: ModelAdapter) -> torch.dtype:
    return next(p.dtype for p in adapter.model.parameters() if p.is_floating_point())


@torch.no_grad()
def run_batch(adapter: ModelAdapter, segments: list[Segment], rows: list[list[int]], device: torch.device,
              dtype: torch.dtype) -> list[list[float]]:
    """Log-likelihoods of every request of the batch's segments, in (segment, request) order."""
    width = max(sum(len(segments[i]) for i in row) for row in rows)
    shape = (len(rows), width)
    ids = torch.zeros(shape, dtype=torch.long)
    pos = torch.zeros(shape, dtype=torch.long)
    segs = -1 - torch.arange(width).repeat(len(rows), 1)  # padding: a segment of its own per token
    branch = torch.full(shape, -1, dtype=torch.long)
    flat_predictors, flat_targets, owners = [], [], []
    order: list[tuple[int, int]] = []  # (segment, request) of every request in the batch
    for r, row in enumerate(rows):
        offset = 0
        for i in row:
            s = segments[i]
            n = len(s)
            ids[r, offset : offset + n] = torch.tensor(s.tokens)
            pos[r, offset : offset + n] = torch.tensor(s.positions)
            branch[r, offset : offset + n] = torch.tensor(s.branches)
            segs[r, offset : offset + n] = i
            for k, (pred, target) in enumerate(zip(s.predictors, s.targets, strict=True)):
                flat_predictors += [r * width + offset + p for p in pred]
                flat_targets += target
                owners += [len(order)] * len(target)
                order.append((i, k))
            offset += n
    if all(len(row) == 1 and segments[row[0]].plain for row in rows):
        # one plain causal sequence per row, right-padded: the model's own causal attention (no mask, its fast
        # kernels) gives every real token the same logits, as padding only ever follows it
        hidden = adapter.decoder(input_ids=ids.to(device), use_cache=False).last_hidden_state
    else:
        masks = attention_masks(adapter.config, visibility(segs, branch, pos), pos, dtype)
        masks = {k: m.to(device) for k, m in masks.items()} if isinstance(masks, dict) else masks.to(device)
        hidden = adapter.decoder(input_ids=ids.to(device), attention_mask=masks, position_ids=pos.to(device),
                                 use_cache=False).last_hidden_state
    hidden = hidden.reshape(-1, hidden.shape[-1])
    index = torch.tensor(flat_predictors, device=hidden.device)
    sums = torch.zeros(len(order), dtype=torch.float64)
    owner = torch.tensor(owners)
    target = torch.tensor(flat_targets)
    for start in range(0, len(flat_predictors), HEAD_CHUNK):
        end = min(start + HEAD_CHUNK, len(flat_predictors))
        logits = adapter.head(hidden.index_select(0, index[start:end])).float()
        logprobs = torch.log_softmax(logits, dim=-1)
        picked = logprobs.gather(-1, target[start:end, None].to(logprobs.device)).squeeze(-1)
        sums.index_add_(0, owner[start:end], picked.double().cpu())
    result: dict[int, list[float]] = {}
    for (i, _), value in zip(order, sums.tolist(), strict=True):
        result.setdefault(i, []).append(value)
    return [result[i] for row in rows for i in row]


def loglikelihoods(
    adapter: ModelAdapter,
    segments: list[Segment],
    *,
    row_tokens: int | None = None,
    batch_tokens: int | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> list[list[float]]:
    """Per segment, the log-likelihood of each of its requests. `on_batch(done)` is called after each forward
    pass with the number of segments scored so far. Rows and passes default to the model's size (see above)."""
    row_tokens = row_tokens or row_tokens_for(adapter.config)
    batch_tokens = batch_tokens or ROWS_PER_PASS * row_tokens
    lengths = [len(s) for s in segments]
    plain = [i for i, s in enumerate(segments) if s.plain]
    branched = [i for i, s in enumerate(segments) if not s.plain]
    # plain segments get a row each (then no mask is needed); the others are packed
    rows = [[i] for i in plain] + [[branched[j] for j in row] for row in pack([lengths[i] for i in branched],
                                                                             row_tokens)]
    device = next(p.device for p in adapter.model.parameters() if p.device.type != "meta")
    from twossp_core.runtime.offload import offloader_of

    offloader = offloader_of(adapter.model)
    if offloader is not None:
        device = offloader.device
    dtype = model_dtype(adapter)
    out: list[list[float] | None] = [None] * len(segments)
    done = 0
    for batch in batches(rows, lengths, batch_tokens, [s.plain for s in segments]):
        values = run_batch(adapter, segments, batch, device, dtype)
        for i, v in zip((i for row in batch for i in row), values, strict=True):
            out[i] = v
        done += sum(len(row) for row in batch)
        if on_batch is not None:
            on_batch(done)
    assert all(v is not None for v in out)
    return out  # type: ignore[return-value]


def item_segments(encoder: Encoder, items: Sequence[Item], limit: int) -> list[Segment]:
    pairs = encoder.pairs([r for item in items for r in item.requests])
    segments, at = [], 0
    for item in items:
        n = len(item.requests)
        segments.append(segment(pairs[at : at + n], limit))
        at += n
    return segments

"""Placing a model's parts on several devices (torch-free: the plan, the API and the CLI use it).

The model is a row of parts in the order a forward pass runs them: the embeddings, decoder blocks 0..B-1, the
final norm, the LM head. A placement gives every device a contiguous run of that row (a device may get none), the
way accelerate's `device_map` dispatch runs it: each part computes on its device and the hidden states move to the
next device at the boundary, so only one device computes at a time. With tied embeddings the LM head shares the
embedding matrix: it runs on the embeddings' device, the last of the row coming back to the first device.

What a part costs on its device: its weights; its own activations (the LM head's logits, a block's inputs recorded
for 2SSP stage 2 / BlockPruner / EvoPress); and the transient tensors of one forward batch through one block,
counted once per device that runs a block (blocks run one after the other). A device's peak adds `slack` (the
allocator's slack and the small tensors not itemised) and must not exceed its usable memory.

The fill is *balanced*: the smallest per-device cap on weights with which filling the devices in order (each as
far as its cap and its usable memory allow) places every part. Filling in order is the best any contiguous
placement can do, so the balanced fill finds a placement whenever one exists; with the smallest cap the weights
spread as evenly as the parts allow, which leaves every device room for what the plan does not count (the CUDA
context, fragmentation) instead of filling the first devices to the brim and leaving the last nearly empty.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from twossp_core.errors import InvalidSpec
from twossp_core.plan.methods import methods_running
from twossp_core.plan.sizes import format_size

STRATEGY = "balanced"


@dataclass(frozen=True)
class Part:
    """One placeable part of the model."""

    name: str  # "embeddings", "block 3", "final norm", "LM head"
    weights: int
    activations: int = 0  # held while the part's device computes (logits, recorded inputs)
    transient: int = 0  # one batch through it; a device holds the largest of its parts' (one runs at a time)
    block: int | None = None  # the block index


@dataclass(frozen=True)
class DeviceShare:
    """What one device holds and needs."""

    device: str
    usable: int | None  # None: no limit known
    parts: tuple[str, ...]  # "embeddings", "blocks 0-39", "final norm", "LM head"
    blocks: tuple[int, int] | None  # the first and last block, or None
    weights: int
    activations: int
    peak: int  # weights + activations + the slack

    def describe(self) -> str:
        held = " + ".join(self.parts) or "nothing"
        of = f" of {format_size(self.usable)}" if self.usable is not None else ""
        return f"{self.device} {held} ({format_size(self.peak)}{of})"


@dataclass(frozen=True)
class Placement:
    strategy: str
    fits: bool  # False: the devices cannot hold the parts; `devices` then shows what each would need, unbounded
    devices: tuple[DeviceShare, ...]

    @property
    def peak(self) -> int:
        return max((d.peak for d in self.devices), default=0)

    def device_of(self, part: str) -> str:
        """The device a part (a name of `Part`) runs on."""
        for share in self.devices:
            if part in share.parts:
                return share.device
            if share.blocks is not None and part.startswith("block "):
                idx = int(part.split()[1])
                if share.blocks[0] <= idx <= share.blocks[1]:
                    return share.device
        raise KeyError(part)

    def block_devices(self) -> list[str]:
        return [d.device for d in self.devices if d.blocks is not None for _ in range(d.blocks[0], d.blocks[1] + 1)]

    def describe(self) -> str:
        return ", ".join(d.describe() for d in self.devices if d.parts)


def _activations(parts: Sequence[Part]) -> int:
    return sum(p.activations for p in parts) + max((p.transient for p in parts), default=0)


def _cost(parts: Sequence[Part], slack: float) -> int:
    raw = sum(p.weights for p in parts) + _activations(parts)
    return raw + int(slack * raw)


def _fill(parts: Sequence[Part], usable: Sequence[int | None], cap: int | None, slack: float) -> list[int] | None:
    """Parts per device, filling devices in order up to `cap` weight bytes and their usable memory; None when
    parts are left over."""
    counts, at = [], 0
    for limit in usable:
        end = at
        while end < len(parts):
            taken = parts[at : end + 1]
            if cap is not None and sum(p.weights for p in taken) > cap:
                break
            if limit is not None and _cost(taken, slack) > limit:
                break
            end += 1
        counts.append(end - at)
        at = end
    return counts if at == len(parts) else None


def _share(device: str, usable: int | None, parts: Sequence[Part], slack: float) -> DeviceShare:
    blocks = [p.block for p in parts if p.block is not None]
    names: list[str] = []
    for part in parts:
        if part.block is None:
            names.append(part.name)
        elif part.block == blocks[0]:
            names.append(f"block {blocks[0]}" if len(blocks) == 1 else f"blocks {blocks[0]}-{blocks[-1]}")
    return DeviceShare(
        device=device, usable=usable, parts=tuple(names), blocks=(blocks[0], blocks[-1]) if blocks else None,
        weights=sum(p.weights for p in parts), activations=_activations(parts),
        peak=_cost(parts, slack),
    )


def place(
    parts: Sequence[Part], devices: Sequence[tuple[str, int | None]], *, slack: float = 0.0,
    tied_head: Part | None = None,
) -> Placement:
    """The balanced placement of `parts` (in forward order) on `devices` ((name, usable bytes or None), in the
    order they are filled). `tied_head` (tied embeddings): an LM head without weights of its own, placed with the
    first part (the embeddings) whatever the fill.

    When the parts do not fit, the placement (fits=False) shows the balanced fill over the same devices without
    their limits: what each device would need."""
    if not devices:
        raise ValueError("no devices to place the model on")
    row = list(parts)
    if tied_head is not None:  # the head runs on the embeddings' device: it joins the first part in the fill
        row[0] = Part(row[0].name, row[0].weights + tied_head.weights, row[0].activations + tied_head.activations,
                      max(row[0].transient, tied_head.transient), row[0].block)
    usable = [u for _, u in devices]
    fits = _fill(row, usable, None, slack) is not None
    if not fits:
        usable = [None] * len(devices)
    low, high = max(p.weights for p in row), sum(p.weights for p in row)
    while low < high:  # the smallest cap that still places every part
        mid = (low + high) // 2
        if _fill(row, usable, mid, slack) is None:
            low = mid + 1
        else:
            high = mid
    counts = _fill(row, usable, low, slack)
    assert counts is not None
    shares, at = [], 0
    for (device, limit), count in zip(devices, counts, strict=True):
        taken = list(parts[at : at + count])
        if tied_head is not None and at == 0 and count:
            taken.append(tied_head)
        shares.append(_share(device, limit, taken, slack))
        at += count
    return Placement(STRATEGY, fits, tuple(shares))


def multi_device_refusal(spec: Any) -> str | None:
    """Why multi-device execution cannot run `spec` (None: it can): sweeps (they copy the model), heal
    (training), and methods whose arithmetic assumes one device for all blocks."""
    if hasattr(spec, "methods"):
        return ("sweeps run on one device; the model needs several devices here: run twossp prune once per method "
                "and sparsity")
    if getattr(spec, "heal", None) is not None:
        return ("heal trains the model on one device and cannot run in multi-device mode; prune without heal, or "
                "heal the exported model where it fits")
    method = getattr(spec, "method", None)
    allowed = methods_running("multi-device")
    if method is not None and method not in allowed:
        return (f"method {method!r} cannot run in multi-device mode (it computes across all blocks on one device); "
                f"multi-device methods: {', '.join(allowed)}")
    return None


def check_multi_device(spec: Any) -> None:
    """InvalidSpec when multi-device execution cannot run `spec` (multi_device_refusal)."""
    reason = multi_device_refusal(spec)
    if reason is not None:
        raise InvalidSpec(reason)

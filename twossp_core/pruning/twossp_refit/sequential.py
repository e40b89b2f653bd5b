"""Sequential refit: block by block, on the activations of the model already pruned and refit before the block.

As SparseGPT does, block i is fitted on the hidden states the pruned model itself produces at block i (so each
refit sees, and can correct, the error of everything upstream), with one of two targets:

- "residual": what block i's FFN must output so that the block's output equals the dense block's output on the
  dense model's own input: Y = out_dense - (out_pruned - ffn_out_pruned). The FFN then also compensates the
  attention modules that stage 2 removed and the error accumulated in earlier blocks. Only for families whose
  FFN output is added to the residual stream as it is (`ModelAdapter.ffn_output_in_residual`);
- "ffn": the dense FFN's output on the pruned model's FFN input (a local fit, any family).

The hidden states at the current block boundary are kept for every calibration window (the pruned model's and,
for "residual", the dense model's), never the FFN activations: those only feed the streamed normal equations.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from twossp_core.models.base import ModelAdapter
from twossp_core.progress import Reporter
from twossp_core.pruning.twossp.scores import top_k, window_norms
from twossp_core.pruning.twossp_refit.refit import (
    STAGE,
    BlockRefit,
    NormalEquations,
    add_product,
    refit_block,
    select_neurons,
)
from twossp_core.runtime.forward import block_output
from twossp_core.runtime.offload import Offloader, editing_block, offloader_of
from twossp_core.runtime.sequential import BatchState, capture_batch

Target = Literal["residual", "ffn"]


@dataclass(frozen=True)
class Counting:
    """Which calibration windows count in a block's statistics: none of the first `held_out`; with `folds`, the odd
    windows (by index in the calibration set) are also summed apart, the second fold of the cross-validated
    shrinkage (`refit.shrinkage`; the first fold is all windows counted less the odd ones)."""

    held_out: int = 0
    folds: bool = False

    def statistics(
        self, width: int, hidden: int, device: torch.device
    ) -> tuple[NormalEquations, NormalEquations | None]:
        """Empty statistics of the counted windows (with folds: the even ones) and, with folds, of the odd ones."""
        odd = NormalEquations.zeros(width, hidden, device) if self.folds else None
        return NormalEquations.zeros(width, hidden, device), odd

    @staticmethod
    def total(stats: NormalEquations, odd: NormalEquations | None) -> tuple[NormalEquations, NormalEquations | None]:
        """(all counted windows' statistics, the odd ones') from what `add` accumulated (`stats` becomes all)."""
        if odd is not None:
            stats.absorb(odd)
        return stats, odd

    def skip(self, first: int, rows: int) -> int:
        """How many leading windows of a batch starting at window `first` (of `rows` windows) do not count."""
        return min(max(self.held_out - first, 0), rows)

    def add(self, stats: NormalEquations, odd: NormalEquations | None, activation: torch.Tensor,
            target: torch.Tensor, first: int) -> None:
        """Add a batch's counted windows (activation and target: windows first, window `first` first); with folds
        the even windows go to `stats`, the odd ones to `odd` (`total` sums them)."""
        if odd is None:
            stats.add(activation, target)
            return
        for fold, parity in ((stats, 0), (odd, 1)):
            rows = [r for r in range(activation.shape[0]) if (first + r) % 2 == parity]
            if len(rows) == activation.shape[0]:
                fold.add(activation, target)
            elif rows:
                index = torch.tensor(rows, device=activation.device)
                fold.add(activation.index_select(0, index), target.index_select(0, index))


def capture_calls(adapter: ModelAdapter, windows: torch.Tensor, batch_size: int = 1) -> list[BatchState]:
    """The block-0 inputs (on the windows' device) and per-block call arguments of every batch of windows, captured
    without computing any block. They do not depend on any weight a pruning changes (embeddings, positions,
    masks), so one capture serves every refit pass of a prune."""
    with torch.inference_mode():
        calls = [capture_batch(adapter, windows[s : s + batch_size]) for s in range(0, windows.shape[0], batch_size)]
    for call in calls:
        call.hidden = call.hidden.to(windows.device)
    return calls


class DenseBlocks:
    """The dense model's blocks, the sequential refit's targets. In memory: copies taken before any edit (see
    `copy_dense_blocks`), moved to the compute device while used. Block by block: the blocks' original weights,
    read from the checkpoint when a block is used and freed after, so the dense model is never in memory."""

    def __init__(self, layers: list[nn.Module] | None = None, *, offloader: Offloader | None = None,
                 structures: list[nn.Module] | None = None) -> None:
        self.layers = layers
        self.offloader = offloader
        self.structures = structures
        self.home: dict[int, torch.device] = {}

    @classmethod
    def of(cls, adapter: ModelAdapter) -> DenseBlocks:
        """The dense blocks of `adapter`'s model as it is now (call before any edit)."""
        offloader = offloader_of(adapter.model)
        if offloader is None:
            return cls(copy_dense_blocks(adapter))
        return cls(offloader=offloader, structures=[offloader.structure_copy(layer) for layer in adapter.layers])

    def acquire(self, idx: int, device: torch.device) -> nn.Module:
        """Dense block idx on `device` (give it back with `release`)."""
        if self.layers is None:
            return self.offloader.read_original(self.structures[idx])  # type: ignore[union-attr,index]
        self.home[idx] = next(self.layers[idx].parameters()).device
        return self.layers[idx].to(device)

    def release(self, idx: int, layer: nn.Module) -> None:
        """Free a block read from the checkpoint, or move a copy back where it lives."""
        layer.to("meta" if self.layers is None else self.home.pop(idx))

    def nbytes(self) -> int:
        """Bytes the copies hold (block by block: one block at a time, not counted)."""
        return sum(p.numel() * p.element_size() for layer in self.layers or [] for p in layer.parameters())

    def where(self) -> str | None:
        if self.layers is None:
            return "checkpoint"
        return str(next(self.layers[0].parameters()).device) if self.layers else None


def copy_dense_blocks(adapter: ModelAdapter) -> list[nn.Module]:
    """Copies of the dense blocks, the sequential refit's targets: on the model's accelerator when they take at
    most half of its free memory (no transfers), else in host memory (each moved to the device while used)."""
    layers = list(adapter.layers)
    device = next(adapter.model.parameters()).device
    if device.type == "cuda":
        need = sum(p.numel() * p.element_size() for layer in layers for p in layer.parameters())
        free, _ = torch.cuda.mem_get_info(device)
        if need <= free // 2:
            return [copy.deepcopy(layer) for layer in layers]
    return [copy.deepcopy(layer).to("cpu") for layer in layers]


def resolve_target(adapter: ModelAdapter, target: Target) -> Target:
    """The residual target where the family allows it, else the local FFN target."""
    return target if target == "ffn" or adapter.ffn_output_in_residual else "ffn"


@torch.no_grad()
def sequential_refit(
    adapter: ModelAdapter,
    dense_layers: DenseBlocks | list[nn.Module],
    windows: torch.Tensor,
    *,
    ridge: float,
    target: Target = "residual",
    batch_size: int = 1,
    calls: list[BatchState] | None = None,
    reporter: Reporter | None = None,
    slice_to: int | None = None,
    kept: list[torch.Tensor | None] | None = None,
    start: int = 0,
    stage: str = STAGE,
    held_out: int = 0,
    select: int | None = None,
    shrink: bool = False,
) -> tuple[list[BlockRefit], list[torch.Tensor] | None]:
    """Refit every remaining down projection of the (sliced, maybe attention-pruned) model in block order.

    dense_layers holds the dense model's blocks (a list: block i on any device, moved to the model's device while
    used; or `DenseBlocks.of(adapter)`, which also reads them from the checkpoint when the model runs block by block);
    `calls` (from `capture_calls` with the same windows and batch size) saves the capture pass.

    With `slice_to` (residual target only) the model comes in unsliced and stage 1 happens inside the pass: the
    dense path that computes the targets scores block i's neurons on the way (the same batch norms, summed in
    the same order, as stage1.neuron_scores), then block i is sliced to its best `slice_to` neurons and refit, so
    the dense model is run once for both. Returns the refits and, with `slice_to`, stage 1's scores.

    With `kept` (block i's kept neuron indices, from the dense blocks) every down projection is first reset to its
    sliced dense weight, so a repeated pass gives the refit of the structure it sees whatever ran before it; then
    blocks before `start`, whose inputs and targets a pass after stage 2 leaves unchanged (stage 2 removed no
    attention before `start`), are only run, not refit again: their refit would be the same. Progress goes to
    `stage`. The first `held_out` windows run through every block but count in no block's statistics.

    With `select` (K) each block refit first chooses its K neurons anew (`kept` and stage 1's choice are then
    ignored): the statistics are taken over the dense FFN's full width on the pruned model's FFN input, the K
    neurons from which a least-squares refit best reproduces the dense FFN's output there are kept
    (`refit.select_neurons`), the block's FFN becomes the dense FFN sliced to them, and their down projection is
    refit to the target as usual.

    With `shrink` each block's step from its sliced down projection to the refit is scaled by the alpha in [0, 1]
    that best predicts the odd calibration windows from a fit on the even ones and the reverse (`refit.shrinkage`).
    """
    counting = Counting(held_out, shrink)
    reporter = reporter or Reporter()
    target = resolve_target(adapter, target)
    if slice_to is not None and target != "residual":
        raise ValueError("stage 1 runs inside the refit pass only with the residual target")
    device = windows.device
    results: list[BlockRefit] = []
    if calls is None:
        calls = capture_calls(adapter, windows, batch_size)
    source = dense_layers if isinstance(dense_layers, DenseBlocks) else DenseBlocks(list(dense_layers))
    pruned = [c.hidden for c in calls]
    dense = list(pruned)
    blocks = adapter.num_blocks
    scores: list[torch.Tensor] | None = None
    if slice_to is not None:
        scores = [torch.zeros(adapter.intermediate_size, dtype=torch.float32, device=device) for _ in range(blocks)]
    for idx in range(blocks):
        reporter.checkpoint()
        layer = adapter.layers[idx]
        dense_layer = source.acquire(idx, device)
        if adapter.mlp_removed(idx) or idx < start:
            _advance(layer, calls, idx, pruned)
            if target == "residual":
                _advance(dense_layer, calls, idx, dense)
        else:
            with editing_block(adapter, idx):
                if kept is not None and kept[idx] is not None and select is None:
                    dense_down = getattr(getattr(dense_layer, adapter.mlp_module), adapter.down_proj)
                    index = kept[idx].to(dense_down.weight.device)  # type: ignore[union-attr]
                    adapter.down_projection(idx).weight.data.copy_(dense_down.weight.data.index_select(1, index))
                if target == "residual":
                    block_scores = _advance_dense(adapter, idx, dense_layer, calls, dense, scores is not None)
                    if scores is not None and slice_to is not None:
                        scores[idx] = block_scores / windows.shape[0]
                        if select is None:
                            adapter.slice_ffn(idx, top_k(scores[idx], slice_to))
                if select is not None:
                    results.append(_select_and_refit(adapter, idx, dense_layer, calls, pruned, dense, target,
                                                     counting, select, ridge))
                    _advance(layer, calls, idx, pruned)
                else:
                    results.append(_refit(adapter, idx, dense_layer, calls, pruned, dense, target, counting, ridge))
        source.release(idx, dense_layer)
        reporter.update(stage, (idx + 1) / blocks)
    if select is not None or slice_to is not None:
        adapter.set_intermediate_size(select if select is not None else slice_to)  # type: ignore[arg-type]
    return results, scores


def _refit(
    adapter: ModelAdapter,
    idx: int,
    dense_layer: nn.Module,
    calls: list[BatchState],
    pruned: list[torch.Tensor],
    dense: list[torch.Tensor],
    target: Target,
    counting: Counting,
    ridge: float,
) -> BlockRefit:
    """Refit block idx's down projection as it is sliced, and advance the pruned path past the block."""
    down = adapter.down_projection(idx)
    before = down.weight.detach().clone() if target == "residual" else None
    (stats, odd), outputs, activations = _block_statistics(adapter, idx, dense_layer, calls, pruned, dense, target,
                                                           counting)
    result = refit_block(down, idx, stats, ridge, odd)
    if before is None:  # the ffn target's families may normalise the FFN output: run the block again
        _advance(adapter.layers[idx], calls, idx, pruned)
    else:  # the block output is linear in the down projection: correct the recorded outputs
        change = down.weight.detach().float() - before.float()
        for b, (out, activation) in enumerate(zip(outputs, activations, strict=True)):
            pruned[b] = (out.float() + activation.float() @ change.T).to(out.dtype)
    return result


def _select_and_refit(
    adapter: ModelAdapter,
    idx: int,
    dense_layer: nn.Module,
    calls: list[BatchState],
    pruned: list[torch.Tensor],
    dense: list[torch.Tensor],
    target: Target,
    counting: Counting,
    keep: int,
    ridge: float,
) -> BlockRefit:
    """Choose block idx's `keep` neurons by reconstruction, give the block the dense FFN sliced to them and refit
    its down projection (the caller runs the block again: its up projections changed too)."""
    (stats, odd), select_cross = _full_width_statistics(adapter, idx, dense_layer, calls, pruned, dense, target,
                                                        counting)
    index = select_neurons(stats.gram, select_cross, keep, ridge)
    del select_cross
    mlp = adapter.mlp(idx)
    dense_mlp = getattr(dense_layer, adapter.mlp_module)
    for name in (*adapter.up_projs, adapter.down_proj):  # the dense FFN, then sliced as stage 1 slices
        current = getattr(mlp, name)
        setattr(mlp, name, copy.deepcopy(getattr(dense_mlp, name)).to(current.weight.device))
    adapter.slice_ffn(idx, index)
    return refit_block(adapter.down_projection(idx), idx, stats.restrict(index), ridge,
                       odd.restrict(index) if odd is not None else None)


def _full_width_statistics(
    adapter: ModelAdapter,
    idx: int,
    dense_layer: nn.Module,
    calls: list[BatchState],
    pruned: list[torch.Tensor],
    dense: list[torch.Tensor],
    target: Target,
    counting: Counting,
) -> tuple[tuple[NormalEquations, NormalEquations | None], torch.Tensor]:
    """Block idx's normal equations over the dense FFN's full width on the pruned model's FFN input: the refit
    target's (as `_block_statistics`, whatever the block's width now; with the odd windows' apart when `counting`
    has folds) and A^T Y_ffn, Y_ffn the dense FFN's output there (the selection's target), over the windows that
    count."""
    seen: dict[str, torch.Tensor] = {}

    def on_mlp_input(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        seen["mlp_in"] = args[0] if args else kwargs["hidden_states"]

    def on_down(module: Any, args: tuple[Any, ...], output: torch.Tensor) -> None:
        seen["down_out"] = output

    def on_dense_down(module: Any, args: tuple[Any, ...], output: torch.Tensor) -> None:
        seen["activation"] = args[0]

    layer = adapter.layers[idx]
    dense_mlp = getattr(dense_layer, adapter.mlp_module)
    dense_down = getattr(dense_mlp, adapter.down_proj)
    width, hidden = dense_down.weight.shape[1], dense_down.weight.shape[0]
    device = pruned[0].device
    stats, odd = counting.statistics(width, hidden, device)
    select_cross = torch.zeros(width, hidden, dtype=torch.float64, device=device)
    bias = dense_down.bias.float() if dense_down.bias is not None else None
    handles = [adapter.mlp(idx).register_forward_pre_hook(on_mlp_input, with_kwargs=True),
               adapter.down_projection(idx).register_forward_hook(on_down),
               dense_down.register_forward_hook(on_dense_down)]
    try:
        with torch.inference_mode():
            first = 0
            for b, call in enumerate(calls):
                out = block_output(layer(pruned[b], *call.args[idx], **call.kwargs[idx]))
                skip = counting.skip(first, out.shape[0])
                if skip < out.shape[0]:
                    wanted_ffn = dense_mlp(seen["mlp_in"][skip:]).float()
                    if bias is not None:
                        wanted_ffn = wanted_ffn - bias
                    if target == "residual":
                        wanted = (dense[b].float() - out.float() + seen["down_out"].float())[skip:]
                        if bias is not None:
                            wanted = wanted - bias
                    else:
                        wanted = wanted_ffn
                    counting.add(stats, odd, seen["activation"], wanted, first + skip)
                    add_product(select_cross, seen["activation"].reshape(-1, width), wanted_ffn.reshape(-1, hidden))
                first += out.shape[0]
                seen.clear()
    finally:
        for h in handles:
            h.remove()
    return Counting.total(stats, odd), select_cross


def _advance_dense(
    adapter: ModelAdapter, idx: int, dense_layer: nn.Module, calls: list[BatchState], dense: list[torch.Tensor],
    score: bool,
) -> torch.Tensor | None:
    """Advance the dense path past block idx; with `score`, the sum over batches of its neurons' window norms."""
    sums: torch.Tensor | None = None

    def on_down(module: Any, args: tuple[Any, ...]) -> None:
        nonlocal sums
        norms = window_norms(args[0])
        sums = norms if sums is None else sums + norms

    down = getattr(getattr(dense_layer, adapter.mlp_module), adapter.down_proj)
    handle = down.register_forward_pre_hook(on_down) if score else None
    try:
        _advance(dense_layer, calls, idx, dense)
    finally:
        if handle is not None:
            handle.remove()
    return sums


def _block_statistics(
    adapter: ModelAdapter,
    idx: int,
    dense_layer: nn.Module,
    calls: list[BatchState],
    pruned: list[torch.Tensor],
    dense: list[torch.Tensor],
    target: Target,
    counting: Counting,
) -> tuple[tuple[NormalEquations, NormalEquations | None], list[torch.Tensor], list[torch.Tensor]]:
    """Normal equations of block idx over the windows that count (with the odd windows' apart when `counting` has
    folds), with the block's outputs and down-projection inputs per batch (kept for the residual target only: with
    them the refit's effect on the outputs is one product, not another block pass); for the residual target,
    `dense` holds the dense block's outputs already."""
    down = adapter.down_projection(idx)
    seen: dict[str, torch.Tensor] = {}

    def on_down(module: Any, args: tuple[Any, ...], output: torch.Tensor) -> None:
        seen["activation"], seen["down_out"] = args[0], output

    def on_mlp_input(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        seen["mlp_in"] = args[0] if args else kwargs["hidden_states"]

    layer = adapter.layers[idx]
    dense_mlp = getattr(dense_layer, adapter.mlp_module)
    stats, odd = counting.statistics(down.weight.shape[1], down.weight.shape[0], pruned[0].device)
    outputs: list[torch.Tensor] = []
    activations: list[torch.Tensor] = []
    handles = [down.register_forward_hook(on_down)]
    if target == "ffn":
        handles.append(adapter.mlp(idx).register_forward_pre_hook(on_mlp_input, with_kwargs=True))
    try:
        with torch.inference_mode():
            first = 0  # the first window of the batch
            for b, call in enumerate(calls):
                out = block_output(layer(pruned[b], *call.args[idx], **call.kwargs[idx]))
                skip = counting.skip(first, out.shape[0])  # this batch's windows left out
                # in float32 at least: a difference of residual states cancels most of their digits
                if target == "residual":  # `dense` is already past the block (_advance_dense)
                    wanted = dense[b].float() - out.float() + seen["down_out"].float()
                else:
                    wanted = dense_mlp(seen["mlp_in"]).float()
                if down.bias is not None:
                    wanted = wanted - down.bias.float()
                if skip < out.shape[0]:
                    counting.add(stats, odd, seen["activation"][skip:], wanted[skip:], first + skip)
                first += out.shape[0]
                if target == "residual":
                    outputs.append(out)
                    activations.append(seen["activation"])
                seen.clear()
    finally:
        for h in handles:
            h.remove()
    return Counting.total(stats, odd), outputs, activations


def _advance(layer: nn.Module, calls: list[BatchState], idx: int, states: list[torch.Tensor]) -> None:
    """Replace every batch's hidden states at block idx's input by the block's output."""
    with torch.inference_mode():
        for b, call in enumerate(calls):
            states[b] = block_output(layer(states[b], *call.args[idx], **call.kwargs[idx]))

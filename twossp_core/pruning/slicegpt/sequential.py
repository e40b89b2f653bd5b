"""SliceGPT's sequential bases: every PCA basis is computed on the signals of the model already sliced before it,
so each slice accounts for the error of the slices upstream (glue between the dense blocks and the PCA math).

The sliced model is simulated in the dense model's own coordinates. Keeping the first k principal directions of
a basis Q is the projection h -> h Q_k Q_k^T, and a dense block run on a projected residual computes exactly what
the rotated-and-sliced block computes on its k coordinates (the rescaled norms see the same RMS). Per block i, with
R the projected input of the block:

    Y = R + attention_i(R)          (the block with its FFN bypassed)  -> basis of the FFN input, Y' = proj(Y)
    Z = Y' + FFN_i(Y')              (the block with its attention bypassed) -> basis of the next input, proj(Z)

and the last Z gives the basis of the final norm. Signals of all calibration windows are kept in memory
(windows x seq_len x hidden floats), as SliceGPT does.
"""

from __future__ import annotations

from typing import Any

import torch

from twossp_core.models.base import ModelAdapter
from twossp_core.progress import Reporter
from twossp_core.pruning.slicegpt.pca import normalized_gram, principal_basis
from twossp_core.runtime.forward import BlockRunner, block_output

Bases = tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]


def _basis(signals: list[torch.Tensor], eps: float) -> torch.Tensor:
    return principal_basis(sum(normalized_gram(s, eps) for s in signals))


def _project(signals: list[torch.Tensor], basis: torch.Tensor, kept: int) -> list[torch.Tensor]:
    q = basis[:, :kept].to(signals[0].device)
    return [((s.double() @ q) @ q.T).to(s.dtype) for s in signals]


@torch.no_grad()
def sequential_bases(
    adapter: ModelAdapter, windows: torch.Tensor, kept: int, *, stage: str, reporter: Reporter | None = None
) -> Bases:
    """(attention-input bases per block, FFN-input bases per block, final-norm basis), each (d, d) float64."""
    reporter = reporter or Reporter()
    eps = float(adapter.config.rms_norm_eps)
    runner = BlockRunner(adapter)
    states: list[torch.Tensor] = []
    calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []  # per window: the extra arguments of a block call
    for row in range(windows.shape[0]):
        reporter.checkpoint()
        record = runner.capture(windows[row : row + 1], blocks=1)
        states.append(record.hidden[0])
        calls.append((record.args[0], record.kwargs[0]))
    attn_bases = [_basis(states, eps)]
    mlp_bases: list[torch.Tensor] = []
    states = _project(states, attn_bases[0], kept)
    blocks = adapter.num_blocks
    for idx in range(blocks):
        layer = adapter.layers[idx]
        for kind, bases in (("mlp", mlp_bases), ("attention", attn_bases)):
            reporter.checkpoint()
            with adapter.bypassed(kind, idx):  # type: ignore[arg-type]
                states = [block_output(layer(s, *a, **k)) for s, (a, k) in zip(states, calls, strict=True)]
            basis = _basis(states, eps)
            bases.append(basis)
            states = _project(states, basis, kept)
        reporter.update(stage, (idx + 1) / blocks)
    final = attn_bases.pop()  # the input of "block B" is the final norm's
    return attn_bases, mlp_bases, final

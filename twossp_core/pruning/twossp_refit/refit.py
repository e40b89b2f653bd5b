"""Least-squares refit of the FFN down projections after stage 1 keeps K neurons per block.

For block i with kept neurons K, A_K (tokens x K) are the kept neurons' activations (the input of the down
projection) and Y (tokens x hidden) the dense FFN's output on the same tokens (bias excluded). The refit
replaces the sliced down projection W_0 = W[:, K] by the ridge solution shrunk towards W_0

    W_K = argmin ||Y - A_K W^T||^2 + lam ||W - W_0||^2 = (Y^T A_K + lam W_0) (A_K^T A_K + lam I)^{-1},

lam = ridge x mean diag(A_K^T A_K). Only the normal equations are kept: A_K^T A_K (K x K), A_K^T Y (K x hidden)
and sum ||Y||^2, accumulated in float64 window by window, so no activation is stored. Because W_0 is feasible and
the penalty vanishes at W_0, the calibration reconstruction error ||Y - A_K W_K^T||^2 never exceeds that of
plain slicing (checked on the accumulated statistics; a block where rounding says otherwise keeps W_0).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from twossp_core.models.base import ModelAdapter
from twossp_core.progress import Reporter
from twossp_core.pruning.twossp.stage1 import run_windows
from twossp_core.runtime.forward import StopForward

STAGE = "refit"


@dataclass
class NormalEquations:
    """Streamed statistics of one block: gram = A_K^T A_K, cross = A_K^T Y, target_sq = sum ||Y||^2."""

    gram: torch.Tensor  # (K, K) float64
    cross: torch.Tensor  # (K, hidden) float64
    target_sq: torch.Tensor  # () float64
    tokens: int = 0

    @classmethod
    def zeros(cls, kept: int, hidden: int, device: torch.device) -> NormalEquations:
        f64 = dict(dtype=torch.float64, device=device)
        return cls(torch.zeros(kept, kept, **f64), torch.zeros(kept, hidden, **f64), torch.zeros((), **f64))

    def add(self, kept_activation: torch.Tensor, target: torch.Tensor) -> None:
        """Add tokens: kept_activation (..., K) and target (..., hidden), any float dtype.

        Float64 products, except for 16-bit activations on CUDA: there each batch's products run on the tensor
        cores with float32 results (a product of two 16-bit values is exact in float32; only the sum over one
        batch's tokens rounds in float32) and are added to the float64 sums; the target is rounded to the activations'
        dtype for its product (its squared norm is summed in float64).
        """
        a = kept_activation.reshape(-1, kept_activation.shape[-1])
        y = target.reshape(-1, target.shape[-1])
        add_product(self.gram, a, a)
        add_product(self.cross, a, y)
        self.target_sq += y.to(torch.float64).square().sum()
        self.tokens += a.shape[0]

    def restrict(self, index: torch.Tensor) -> NormalEquations:
        """The statistics of the neurons `index` alone (their rows and columns)."""
        index = index.to(self.gram.device)
        gram = self.gram.index_select(0, index).index_select(1, index)
        return NormalEquations(gram, self.cross.index_select(0, index), self.target_sq.clone(), self.tokens)

    def absorb(self, other: NormalEquations) -> None:
        """Add another token set's statistics to these (in place)."""
        self.gram += other.gram
        self.cross += other.cross
        self.target_sq += other.target_sq
        self.tokens += other.tokens

    def minus(self, other: NormalEquations) -> NormalEquations:
        """The statistics of the tokens in `self` but not in `other` (a subset of them)."""
        return NormalEquations(self.gram - other.gram, self.cross - other.cross, self.target_sq - other.target_sq,
                               self.tokens - other.tokens)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.gram, self.cross, self.target_sq))

    def error(self, weight: torch.Tensor) -> float:
        """||Y - A_K W^T||^2 for a (hidden, K) weight, from the statistics alone."""
        w = weight.to(torch.float64)
        value = self.target_sq - 2.0 * (w * self.cross.T).sum() + (w @ self.gram * w).sum()
        return float(value)


def add_product(total: torch.Tensor, a: torch.Tensor, y: torch.Tensor) -> None:
    """total (float64) += a^T y for a (tokens, K) and y (tokens, n): in float64, except for 16-bit `a` on CUDA
    (tensor-core products with float32 results, `y` rounded to a's dtype)."""
    if a.is_cuda and a.dtype in (torch.float16, torch.bfloat16):
        total += torch.mm(a.T, y.to(a.dtype), out_dtype=torch.float32)
    else:
        total.addmm_(a.T.to(torch.float64), y.to(torch.float64))


@dataclass(frozen=True)
class BlockRefit:
    block: int
    error_sliced: float  # calibration reconstruction error of plain slicing, relative to sum ||Y||^2
    error_refit: float  # the same for the refit weights (never larger)
    kept_sliced: bool  # True when the refit was rejected and the sliced weights stayed
    alpha: float = 1.0  # the step from the sliced weights taken (cross-validated shrinkage; 1: the whole refit)


@torch.no_grad()
def accumulate(
    adapter: ModelAdapter,
    windows: torch.Tensor,
    keep: list[torch.Tensor],
    *,
    batch_size: int = 1,
    reporter: Reporter | None = None,
) -> list[NormalEquations | None]:
    """Normal equations of every block whose FFN remains, from the model as it is (dense inputs: run it before
    slicing). keep[i] are block i's kept neuron indices. The pass stops after the last down projection."""
    reporter = reporter or Reporter()
    hidden = int(adapter.config.hidden_size)
    stats: list[NormalEquations | None] = [None] * adapter.num_blocks
    hooked = [i for i in range(adapter.num_blocks) if not adapter.mlp_removed(i)]
    last = hooked[-1] if hooked else -1
    index = [k.to(windows.device) for k in keep]
    for i in hooked:
        stats[i] = NormalEquations.zeros(len(keep[i]), hidden, windows.device)

    def make_hook(idx: int) -> Any:
        def hook(module: Any, args: tuple[Any, ...], output: torch.Tensor) -> None:
            target = output if module.bias is None else output - module.bias
            stats[idx].add(args[0].index_select(-1, index[idx]), target)  # type: ignore[union-attr]
            if idx == last:
                raise StopForward
        return hook

    handles = [adapter.down_projection(i).register_forward_hook(make_hook(i)) for i in hooked]
    try:
        run_windows(adapter, windows, batch_size, reporter, STAGE)
    finally:
        for h in handles:
            h.remove()
    return stats


def solve(stats: NormalEquations, sliced: torch.Tensor, ridge: float) -> torch.Tensor:
    """The ridge solution (hidden, K) in float64, shrunk towards the sliced weight (hidden, K)."""
    w0 = sliced.to(torch.float64)
    gram = stats.gram
    k = gram.shape[0]
    lam = ridge * float(gram.diagonal().mean()) if k else 0.0
    if lam <= 0.0:
        lam = torch.finfo(torch.float64).eps
    system = gram + lam * torch.eye(k, dtype=torch.float64, device=gram.device)
    rhs = stats.cross + lam * w0.T
    factor, info = torch.linalg.cholesky_ex(system)
    if int(info) == 0:
        solution = torch.cholesky_solve(rhs, factor)
    else:  # not numerically positive definite: least squares on the same system
        solution = torch.linalg.lstsq(system, rhs).solution
    return solution.T


COMPACT_EVERY = 64  # select_neurons drops the removed rows and columns physically after this many removals


def select_neurons(gram: torch.Tensor, cross: torch.Tensor, keep: int, ridge: float) -> torch.Tensor:
    """The `keep` neurons (sorted indices) from which a least-squares refit best reproduces the target: greedy
    backward elimination on the normal equations of all n neurons (gram = A^T A, cross = A^T Y).

    With G = A^T A + lam I (lam = ridge x mean diag) and W = G^-1 A^T Y the ridge solution on the neurons left,
    dropping neuron j and refitting the others raises ||Y - A W||^2 + lam ||W||^2 by ||W_j||^2 / (G^-1)_jj (the
    optimal brain surgeon's cost of a whole row); the cheapest neuron goes, and G^-1 and W are updated in place by
    one rank-1 product each (the dropped row and column become zero; every `COMPACT_EVERY` drops they are cut out, so
    the matrices shrink as neurons go)."""
    n = gram.shape[0]
    if keep >= n:
        return torch.arange(n, device=gram.device)
    lam = ridge * float(gram.diagonal().mean()) if n else 0.0
    if lam <= 0.0:
        lam = torch.finfo(torch.float64).eps
    system = gram + lam * torch.eye(n, dtype=torch.float64, device=gram.device)
    factor, info = torch.linalg.cholesky_ex(system)
    if int(info) == 0:
        del system  # with the caller's two folds, at most four n x n matrices at once
        inverse = torch.cholesky_inverse(factor)
    else:  # not numerically positive definite
        inverse = torch.linalg.pinv(system, hermitian=True)
        del system
    del factor
    weights = inverse @ cross
    held = torch.arange(n, device=gram.device)  # the original index of each row still in the matrices
    dropped = torch.zeros(n, dtype=torch.bool, device=gram.device)
    for step in range(1, n - keep + 1):
        cost = weights.square().sum(1) / inverse.diagonal()
        cost.masked_fill_(dropped | cost.isnan(), float("inf"))
        j = int(cost.argmin())
        column = inverse[:, j].clone()
        row = weights[j].clone()
        scale = -1.0 / float(column[j])
        inverse.addr_(column, column, alpha=scale)
        weights.addr_(column, row, alpha=scale)
        dropped[j] = True
        if step % COMPACT_EVERY == 0 or step == n - keep:
            rest = ~dropped
            inverse = inverse[rest][:, rest]
            weights = weights[rest]
            held = held[rest]
            dropped = dropped[rest]
    return held


def shrinkage(folds: tuple[NormalEquations, NormalEquations], sliced: torch.Tensor, ridge: float) -> float:
    """The alpha in [0, 1] for which W_0 + alpha (W - W_0) best predicts held-out windows: W fitted on one fold and
    scored on the other, both ways, the squared errors summed (a quadratic in alpha: closed form). 1 when a fold
    is empty."""
    if min(f.tokens for f in folds) == 0:
        return 1.0
    w0 = sliced.to(torch.float64)
    curvature = slope = 0.0
    for fit, check in (folds, folds[::-1]):
        step = solve(fit, sliced, ridge) - w0
        moved = step @ check.gram
        curvature += float((moved * step).sum())
        slope += float((w0 @ check.gram * step).sum() - (step * check.cross.T).sum())
    if curvature <= 0.0:
        return 1.0
    return min(max(-slope / curvature, 0.0), 1.0)


@torch.no_grad()
def refit_block(
    down: nn.Module, idx: int, stats: NormalEquations, ridge: float, odd: NormalEquations | None = None
) -> BlockRefit:
    """Replace a sliced down projection's weight by its refit, unless that would not lower the error. With `odd`
    (the statistics of the odd calibration windows, a subset of `stats`) the step from the sliced weight is scaled
    by the cross-validated `shrinkage` (the error on all windows, convex in the step, still never rises)."""
    sliced = down.weight.data
    refit = solve(stats, sliced, ridge)
    alpha = 1.0
    if odd is not None:
        alpha = shrinkage((stats.minus(odd), odd), sliced, ridge)
        w0 = sliced.to(torch.float64)
        refit = w0 + alpha * (refit - w0)
    scale = max(float(stats.target_sq), torch.finfo(torch.float64).tiny)
    before = stats.error(sliced) / scale
    cast = refit.to(sliced.dtype)
    after = stats.error(cast) / scale
    rejected = not after <= before
    if not rejected:
        down.weight.data.copy_(cast)
    return BlockRefit(idx, before, before if rejected else after, rejected, alpha)


def apply_refit(adapter: ModelAdapter, stats: list[NormalEquations | None], ridge: float) -> list[BlockRefit]:
    """Refit every sliced down projection from dense-input statistics (call after slicing)."""
    return [
        refit_block(adapter.down_projection(idx), idx, block_stats, ridge)
        for idx, block_stats in enumerate(stats)
        if block_stats is not None and not adapter.mlp_removed(idx)
    ]

"""2SSP + refit: streamed normal equations equal a direct solve, the refit never raises a block's calibration
reconstruction error, the sequential refit equals a brute force, determinism, reload, CLI, and 2ssp unchanged."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
import torch
from methods_common import assert_reloads_equal, calibration, ppl, prune, prune_stories, stories_workspace
from tiny_models import FAMILIES, tiny_model, tiny_workdir

from twossp_core.cli.main import main
from twossp_core.errors import InvalidSpec
from twossp_core.models.registry import adapter_for
from twossp_core.plan.methods import method_config, method_entry
from twossp_core.pruning.twossp import stage1
from twossp_core.pruning.twossp.scores import top_k
from twossp_core.pruning.twossp_refit import refit
from twossp_core.pruning.twossp_refit.sequential import sequential_refit
from twossp_core.runtime.forward import StopForward, block_output


def _down_io(adapter: Any, windows: torch.Tensor, idx: int) -> tuple[torch.Tensor, torch.Tensor]:
    """All of block idx's down-projection inputs and outputs (bias removed) over the windows, stacked."""
    ins, outs = [], []
    down = adapter.down_projection(idx)

    def hook(module: Any, args: tuple[Any, ...], output: torch.Tensor) -> None:
        ins.append(args[0].reshape(-1, args[0].shape[-1]))
        out = output if module.bias is None else output - module.bias
        outs.append(out.reshape(-1, out.shape[-1]))
        raise StopForward

    handle = down.register_forward_hook(hook)
    try:
        with torch.no_grad():
            for w in windows:
                try:
                    adapter.decoder(input_ids=w.unsqueeze(0), use_cache=False)
                except StopForward:
                    pass
    finally:
        handle.remove()
    return torch.cat(ins).double(), torch.cat(outs).double()


def _direct_solution(a: torch.Tensor, y: torch.Tensor, w0: torch.Tensor, ridge: float) -> torch.Tensor:
    gram = a.T @ a
    lam = ridge * float(gram.diagonal().mean())
    return torch.linalg.solve(gram + lam * torch.eye(gram.shape[0], dtype=gram.dtype), a.T @ y + lam * w0.T).T


def test_streamed_normal_equations_equal_a_direct_solve():
    model = tiny_model("llama")
    adapter = adapter_for(model)
    windows = calibration(6, 24)
    scores = stage1.neuron_scores(adapter, windows)
    keep = [top_k(s, 40) for s in scores]
    direct = [_down_io(adapter, windows, i) for i in range(adapter.num_blocks)]
    stats = refit.accumulate(adapter, windows, keep, batch_size=4)  # a ragged last batch too
    stage1.apply_width(adapter, scores, 40)
    for i, (a_full, y) in enumerate(direct):
        a = a_full[:, keep[i]]
        assert stats[i].tokens == a.shape[0]
        torch.testing.assert_close(stats[i].gram, a.T @ a, rtol=1e-12, atol=1e-9)
        torch.testing.assert_close(stats[i].cross, a.T @ y, rtol=1e-12, atol=1e-9)
        w0 = adapter.down_projection(i).weight.data
        torch.testing.assert_close(refit.solve(stats[i], w0, 1e-3), _direct_solution(a, y, w0.double(), 1e-3),
                                   rtol=1e-7, atol=1e-9)
        # the error computed from the statistics is the error of the stacked matrices
        direct_error = float((y - a @ w0.double().T).square().sum())
        assert stats[i].error(w0) == pytest.approx(direct_error, rel=1e-9)


@pytest.mark.parametrize(("family", "ridge"), [(f, 1e-3) for f in FAMILIES] + [("llama", 0.0), ("llama", 10.0)])
def test_refit_never_raises_a_blocks_reconstruction_error(family, ridge):
    model = tiny_model(family)
    adapter = adapter_for(model)
    windows = calibration(4, 24)
    scores = stage1.neuron_scores(adapter, windows)
    kept = adapter.intermediate_size // 2
    keep = [top_k(s, kept) for s in scores]
    direct = [_down_io(adapter, windows, i) for i in range(adapter.num_blocks)]
    stats = refit.accumulate(adapter, windows, keep)
    stage1.apply_width(adapter, scores, kept)
    sliced = [adapter.down_projection(i).weight.data.clone() for i in range(adapter.num_blocks)]
    results = refit.apply_refit(adapter, stats, ridge)
    assert [r.block for r in results] == list(range(adapter.num_blocks))
    improved = 0
    for i, (a_full, y) in enumerate(direct):
        a = a_full[:, keep[i]]
        before = float((y - a @ sliced[i].double().T).square().sum())
        after = float((y - a @ adapter.down_projection(i).weight.data.double().T).square().sum())
        assert after <= before * (1 + 1e-6)
        improved += after < 0.99 * before
    assert improved >= 1 if ridge < 10 else True


def _brute_force_sequential(pruned: Any, dense: Any, windows: torch.Tensor, ridge: float) -> list[torch.Tensor]:
    """The residual-target sequential refit by whole-model passes: for each block, run the model pruned and refit
    so far and the dense model, take block i's down inputs and outputs and both block outputs, solve directly."""
    pa, da = adapter_for(pruned), adapter_for(dense)
    solutions = []
    for i in range(pa.num_blocks):
        seen: dict[str, list[torch.Tensor]] = {"a": [], "d": [], "out": [], "dense": []}
        down = pa.down_projection(i)

        def on_down(m: Any, args: Any, out: torch.Tensor, seen: dict[str, list[torch.Tensor]] = seen) -> None:
            seen["a"].append(args[0][0])
            seen["d"].append(out[0])

        def record(key: str, seen: dict[str, list[torch.Tensor]] = seen) -> Any:
            def hook(m: Any, args: Any, out: Any) -> None:
                seen[key].append(block_output(out)[0])
                raise StopForward
            return hook

        handles = [down.register_forward_hook(on_down), pa.layers[i].register_forward_hook(record("out")),
                   da.layers[i].register_forward_hook(record("dense"))]
        with torch.no_grad():
            for w in windows:
                for adapter in (pa, da):
                    try:
                        adapter.decoder(input_ids=w.unsqueeze(0), use_cache=False)
                    except StopForward:
                        pass
        for h in handles:
            h.remove()
        a = torch.cat(seen["a"]).double()
        y = torch.cat([dn - o + d for dn, o, d in zip(seen["dense"], seen["out"], seen["d"], strict=True)]).double()
        solution = _direct_solution(a, y, down.weight.data.double(), ridge)
        down.weight.data.copy_(solution.float())
        solutions.append(solution)
    return solutions


def test_sequential_refit_equals_a_brute_force_with_removed_attention():
    dense = tiny_model("llama")
    windows = calibration(3, 24)
    scores = stage1.neuron_scores(adapter_for(dense), windows)
    models = []
    for _ in range(2):
        model = copy.deepcopy(dense)
        adapter = adapter_for(model)
        stage1.apply_width(adapter, scores, 40)
        adapter.remove_attention(1)
        models.append(model)
    expected = _brute_force_sequential(models[0], dense, windows, 1e-3)
    adapter = adapter_for(models[1])
    results, _ = sequential_refit(adapter, list(copy.deepcopy(dense.model.layers)), windows, ridge=1e-3,
                                  batch_size=2)
    assert not any(r.kept_sliced for r in results)
    for i, want in enumerate(expected):
        torch.testing.assert_close(adapter.down_projection(i).weight.data.double(), want, rtol=1e-4, atol=1e-5)


def _greedy_selection(a: torch.Tensor, y: torch.Tensor, keep: int, ridge: float) -> list[int]:
    """Backward elimination by explicit solves: drop, one at a time, the neuron whose removal raises the ridge
    least-squares error of the others least (lam from the full gram, as the selection fixes it)."""
    lam = ridge * float((a.T @ a).diagonal().mean())
    alive = list(range(a.shape[1]))

    def error(columns: list[int]) -> float:
        sub = a[:, columns]
        w = torch.linalg.solve(sub.T @ sub + lam * torch.eye(len(columns), dtype=a.dtype), sub.T @ y)
        return float((y - sub @ w).square().sum() + lam * w.square().sum())

    while len(alive) > keep:
        costs = [error([c for c in alive if c != j]) for j in alive]
        alive.remove(alive[min(range(len(alive)), key=costs.__getitem__)])
    return alive


@pytest.mark.slow
def test_selection_keeps_the_neurons_a_refit_reproduces_the_output_from():
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(200, 10, generator=generator, dtype=torch.float64)
    a[:, 0] = 3.0 * a[:, 1]  # the largest norm, and nothing a refit of neuron 1 cannot give
    y = a @ torch.randn(10, 6, generator=generator, dtype=torch.float64)
    y += 0.1 * torch.randn(200, 6, generator=generator, dtype=torch.float64)
    for keep in (9, 6, 3):
        chosen = refit.select_neurons(a.T @ a, a.T @ y, keep, 1e-3).tolist()
        assert chosen == sorted(_greedy_selection(a, y, keep, 1e-3)), keep
        assert len(chosen) == keep and not {0, 1} <= set(chosen)  # one of the two copies goes
    norms = top_k(a.norm(dim=0).float(), 9).tolist()
    assert 0 in norms and 1 in norms  # stage 1's choice keeps both
    # more drops than refit.COMPACT_EVERY: the matrices are cut down on the way, the choice stays the greedy one
    wide = torch.randn(400, 80, generator=generator, dtype=torch.float64)
    target = wide @ torch.randn(80, 4, generator=generator, dtype=torch.float64)
    target += torch.randn(400, 4, generator=generator, dtype=torch.float64)
    assert 80 - 10 > refit.COMPACT_EVERY
    assert refit.select_neurons(wide.T @ wide, wide.T @ target, 10, 1e-3).tolist() == sorted(
        _greedy_selection(wide, target, 10, 1e-3))


def _fold_error(a: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> float:
    return float((y - a @ w.T).square().sum())


def test_shrinkage_is_the_step_that_best_predicts_the_other_fold():
    generator = torch.Generator().manual_seed(1)
    a = torch.randn(120, 8, generator=generator, dtype=torch.float64)
    w0 = torch.randn(5, 8, generator=generator, dtype=torch.float64)
    odd_rows = torch.arange(120) % 2 == 1
    for noise, signal in ((0.5, 1.0), (5.0, 0.05)):
        y = a @ (w0 + signal * torch.randn(5, 8, generator=generator, dtype=torch.float64)).T
        y += noise * torch.randn(120, 5, generator=generator, dtype=torch.float64)
        folds = []
        for rows in (~odd_rows, odd_rows):
            stats = refit.NormalEquations.zeros(8, 5, torch.device("cpu"))
            stats.add(a[rows], y[rows])
            folds.append(stats)
        alpha = refit.shrinkage((folds[0], folds[1]), w0, 1e-3)
        fits = [refit.solve(f, w0, 1e-3) for f in folds]

        def held_out(step: float, fits: list[torch.Tensor] = fits, y: torch.Tensor = y) -> float:
            return sum(_fold_error(a[rows], y[rows], w0 + step * (fit - w0))
                       for fit, rows in ((fits[0], odd_rows), (fits[1], ~odd_rows)))

        grid = [i / 1000 for i in range(1001)]
        best = min(grid, key=held_out)
        assert alpha == pytest.approx(best, abs=2e-3)
        if noise > 1:
            assert alpha < 0.5  # a fit to noise barely moves from the sliced weights
        else:
            assert alpha > 0.9


@pytest.mark.slow
@pytest.mark.parametrize("shrink", [False, True])
def test_sequential_refit_with_selection_equals_a_brute_force(shrink):
    """select=K: each block keeps the K neurons of the dense FFN from which a refit best reproduces the dense FFN's
    output on the pruned model's FFN input, and its down projection is refit to the residual target; with shrink,
    the step from the sliced weights is scaled by the alpha fitted on windows 0 and 2 and scored on window 1, and
    the reverse (batches of two: the folds go by window, not by batch)."""
    dense = tiny_model("llama")
    windows = calibration(3, 24)
    scores = stage1.neuron_scores(adapter_for(dense), windows)
    models = []
    for _ in range(2):
        model = copy.deepcopy(dense)
        stage1.apply_width(adapter_for(model), scores, 40)
        adapter_for(model).remove_attention(1)
        models.append(model)
    pa, da = adapter_for(models[0]), adapter_for(dense)
    expected = []
    for i in range(pa.num_blocks):
        seen: dict[str, list[torch.Tensor]] = {"in": [], "d": [], "out": [], "dense": []}

        def on_mlp(m: Any, args: Any, seen: dict[str, list[torch.Tensor]] = seen) -> None:
            seen["in"].append(args[0][0])

        def on_down(m: Any, args: Any, out: torch.Tensor, seen: dict[str, list[torch.Tensor]] = seen) -> None:
            seen["d"].append(out[0])

        def record(key: str, seen: dict[str, list[torch.Tensor]] = seen) -> Any:
            def hook(m: Any, args: Any, out: Any) -> None:
                seen[key].append(block_output(out)[0])
                raise StopForward
            return hook

        handles = [pa.mlp(i).register_forward_pre_hook(on_mlp), pa.down_projection(i).register_forward_hook(on_down),
                   pa.layers[i].register_forward_hook(record("out")),
                   da.layers[i].register_forward_hook(record("dense"))]
        with torch.no_grad():
            for w in windows:
                for adapter in (pa, da):
                    try:
                        adapter.decoder(input_ids=w.unsqueeze(0), use_cache=False)
                    except StopForward:
                        pass
        for h in handles:
            h.remove()
        dense_mlp = da.mlp(i)
        acts: list[torch.Tensor] = []

        def on_dense_down(m: Any, args: Any, out: torch.Tensor, acts: list[torch.Tensor] = acts) -> None:
            acts.append(args[0])

        handle = dense_mlp.down_proj.register_forward_hook(on_dense_down)
        with torch.no_grad():
            y_ffn = torch.cat([dense_mlp(x) for x in seen["in"]]).double()
        handle.remove()
        a = torch.cat(acts).double()
        y = torch.cat([dn - o + d for dn, o, d in zip(seen["dense"], seen["out"], seen["d"], strict=True)]).double()
        keep = torch.tensor(sorted(_greedy_selection(a, y_ffn, 40, 1e-3)))
        for name in ("gate_proj", "up_proj", "down_proj"):
            setattr(pa.mlp(i), name, copy.deepcopy(getattr(dense_mlp, name)))
        pa.slice_ffn(i, keep)
        down = pa.down_projection(i)
        w0 = down.weight.data.double()
        solution = _direct_solution(a[:, keep], y, w0, 1e-3)
        if shrink:
            odd = (torch.arange(a.shape[0]) // windows.shape[1]) % 2 == 1
            fits = [(_direct_solution(a[rows][:, keep], y[rows], w0, 1e-3), ~rows) for rows in (~odd, odd)]
            grid = [j / 2000 for j in range(2001)]
            alpha = min(grid, key=lambda t, fits=fits, keep=keep, y=y, w0=w0: sum(
                _fold_error(a[rows][:, keep], y[rows], w0 + t * (fit - w0)) for fit, rows in fits))
            solution = w0 + alpha * (solution - w0)
        down.weight.data.copy_(solution.float())
        expected.append((keep, solution))
    adapter = adapter_for(models[1])
    results, _ = sequential_refit(adapter, list(copy.deepcopy(dense.model.layers)), windows, ridge=1e-3,
                                  batch_size=2, select=40, shrink=shrink)
    assert all(r.alpha < 1.0 for r in results) if shrink else all(r.alpha == 1.0 for r in results)
    assert [r.block for r in results] == list(range(adapter.num_blocks)) and adapter.intermediate_size == 40
    changed = 0
    for i, (keep, want) in enumerate(expected):
        dense_up = da.mlp(i).up_proj.weight.data
        assert torch.equal(adapter.mlp(i).up_proj.weight.data, dense_up.index_select(0, keep)), i
        tolerance = 1e-3 if shrink else 1e-5  # the brute force's alpha is on a grid of 1/2000
        torch.testing.assert_close(adapter.down_projection(i).weight.data.double(), want, rtol=1e-4, atol=tolerance)
        changed += not torch.equal(keep, top_k(scores[i], 40))
    assert changed  # not stage 1's neurons


def test_stage1_inside_the_refit_pass_equals_stage1_then_the_refit():
    dense = tiny_model("llama")
    windows = calibration(5, 24)
    scores = stage1.neuron_scores(adapter_for(dense), windows, batch_size=2)
    separate, fused = copy.deepcopy(dense), copy.deepcopy(dense)
    stage1.apply_width(adapter_for(separate), scores, 40)
    expected, _ = sequential_refit(adapter_for(separate), list(copy.deepcopy(dense.model.layers)), windows,
                                   ridge=1e-3, batch_size=2)
    results, fused_scores = sequential_refit(adapter_for(fused), list(copy.deepcopy(dense.model.layers)), windows,
                                             ridge=1e-3, batch_size=2, slice_to=40)
    assert fused_scores is not None and all(torch.equal(a, b) for a, b in zip(scores, fused_scores, strict=True))
    assert adapter_for(fused).intermediate_size == 40 and results == expected
    for a, b in zip(separate.state_dict().values(), fused.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_the_pass_after_stage2_starts_at_the_first_changed_block():
    dense = tiny_model("llama")
    windows = calibration(4, 24)
    layers = list(copy.deepcopy(dense.model.layers))
    model = copy.deepcopy(dense)
    first, scores = sequential_refit(adapter_for(model), layers, windows, ridge=1e-3, slice_to=40)
    adapter_for(model).remove_attention(2)
    kept = [top_k(s, 40) for s in scores]  # type: ignore[union-attr]
    full = copy.deepcopy(model)
    everything, _ = sequential_refit(adapter_for(full), layers, windows, ridge=1e-3, kept=kept)
    partial, _ = sequential_refit(adapter_for(model), layers, windows, ridge=1e-3, kept=kept, start=2)
    assert everything[:2] == first[:2]  # blocks before the removal: the same refit
    # from block 2 on: the same refit, up to rounding (a skipped block's outputs come from a block pass, a refit
    # block's from its sliced outputs plus the refit's change)
    assert [r.block for r in partial] == [2, 3]
    for want, got in zip(everything[2:], partial, strict=True):
        assert got.error_refit == pytest.approx(want.error_refit, rel=1e-6)
    assert everything[2:] != first[2:]  # the removal changed what blocks 2 and 3 see
    for a, b in zip(full.state_dict().values(), model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_held_out_windows_count_in_no_statistics():
    """stage2_holdout: the refit with the first window held out (inside a batch of two) is the refit on the other
    windows alone, so stage 2 can judge removals on tokens the refit was not fit to."""
    dense = tiny_model("llama")
    windows = calibration(5, 24)
    scores = stage1.neuron_scores(adapter_for(dense), windows)
    held, alone = copy.deepcopy(dense), copy.deepcopy(dense)
    for model in (held, alone):
        stage1.apply_width(adapter_for(model), scores, 40)
        adapter_for(model).remove_attention(1)
    with_held, _ = sequential_refit(adapter_for(held), list(copy.deepcopy(dense.model.layers)), windows,
                                    ridge=1e-3, batch_size=2, held_out=1)
    without, _ = sequential_refit(adapter_for(alone), list(copy.deepcopy(dense.model.layers)), windows[1:],
                                  ridge=1e-3, batch_size=1)
    for got, want in zip(with_held, without, strict=True):
        assert got.error_refit == pytest.approx(want.error_refit, rel=1e-9)
        assert got.error_sliced == pytest.approx(want.error_sliced, rel=1e-9)
    for a, b in zip(held.state_dict().values(), alone.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    everything = copy.deepcopy(dense)
    stage1.apply_width(adapter_for(everything), scores, 40)
    adapter_for(everything).remove_attention(1)
    sequential_refit(adapter_for(everything), list(copy.deepcopy(dense.model.layers)), windows, ridge=1e-3,
                     batch_size=2)
    weight = adapter_for(held).down_projection(0).weight
    assert not torch.equal(adapter_for(everything).down_projection(0).weight, weight)  # the held-out window counted
    with pytest.raises(InvalidSpec, match="stage2_holdout"):
        method_config("2ssp-refit", {"stage2_holdout": True, "refit_inputs": "dense"})


@pytest.mark.parametrize("selection", ["norm", "reconstruction"])
def test_the_method_gives_the_same_prune_with_or_without_cached_scores(selection):
    """Stage 1 inside the first refit pass (stage 2 on the refit model) gives what stage 1 then the refit gives:
    bit for bit with stage 1's neurons; with the selection the FFN is full width or sliced when the block runs for
    its statistics, so they agree to rounding, and the same neurons are kept."""
    dense = tiny_model("llama")
    windows = calibration(4, 32)
    fused, separate = copy.deepcopy(dense), copy.deepcopy(dense)
    options = {"stage2_on_refit": True, "selection": selection}  # stage 1 runs inside the first refit pass then
    batch = method_config("2ssp-refit", options).batch_size
    cache = {("2ssp.neuron_scores", batch): stage1.neuron_scores(adapter_for(dense), windows, batch_size=batch)}
    a = prune("2ssp-refit", fused, 0.4, options=options, windows=windows)
    b = prune("2ssp-refit", separate, 0.4, options=options, windows=windows, cache=cache)
    assert a.details["refit"]["stage1_in_refit_pass"] and not b.details["refit"]["stage1_in_refit_pass"]
    assert a.removed_attention == b.removed_attention and a.removed_attention
    exact = selection == "norm"
    if exact:
        assert a.details["refit"]["error_refit"] == b.details["refit"]["error_refit"]
    else:
        assert a.details["refit"]["error_refit"] == pytest.approx(b.details["refit"]["error_refit"], rel=1e-6)
    # timings are named as the stages the method reports, and only stages that ran have one: the fused pass is
    # stage 1 (no "stage1 0.00s" beside a "stage1_refit")
    stages = {f"{stage.name}_s" for stage in method_entry("2ssp-refit").stages}
    assert set(a.timings) == {"stage1_s", "stage2_s", "refit_s"} <= stages and set(b.timings) <= stages
    assert all(seconds > 0 for seconds in a.timings.values())
    for name, x in fused.state_dict().items():
        y = separate.state_dict()[name]
        if exact or "down_proj" not in name:  # the kept neurons' up projections are the dense rows either way
            assert torch.equal(x, y), name
        else:
            torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("options", [{}, {"refit_inputs": "dense"}, {"refit_target": "ffn", "stage2_on_refit": False}])
def test_deterministic_and_reloads(options, tmp_path):
    results = []
    for _ in range(2):
        _, model, outcome = _pruned("llama", 0.4, options)
        results.append((model, outcome))
    (m1, o1), (m2, o2) = results
    assert o1.removed_attention == o2.removed_attention and o1.removed_attention
    for p1, p2 in zip(m1.state_dict().values(), m2.state_dict().values(), strict=True):
        assert torch.equal(p1, p2)
    assert o1.details["refit"]["error_refit"] == o2.details["refit"]["error_refit"]
    assert all(b <= a for a, b in zip(o1.details["refit"]["error_sliced"], o1.details["refit"]["error_refit"],
                                      strict=True))
    assert_reloads_equal(m1, tmp_path, remote_code=True)


def _pruned(family: str, sparsity: float, options: dict[str, Any]) -> tuple[Any, Any, Any]:
    dense = tiny_model(family)
    model = copy.deepcopy(dense)
    return dense, model, prune("2ssp-refit", model, sparsity, options=options, windows=calibration(4, 32))


@pytest.mark.parametrize("family", ["phi", "gemma2", "phi3"])
def test_other_families_refit_and_reload(family, tmp_path):
    _, model, outcome = _pruned(family, 0.4, {})
    assert outcome.details["refit"]["target"] == ("ffn" if family == "gemma2" else "residual")
    assert_reloads_equal(model, tmp_path, remote_code=True)


def test_unknown_option_is_refused():
    with pytest.raises(InvalidSpec, match="2ssp-refit"):
        method_config("2ssp-refit", {"ridge": 1e-3, "lambda": 2})
    with pytest.raises(InvalidSpec):
        method_config("2ssp-refit", {"ridge": -1})
    assert method_config("2ssp-refit", {}).alpha == method_config("2ssp", {}).alpha


def test_the_selection_and_shrinkage_need_the_sequential_refit():
    defaults = method_config("2ssp-refit", {})
    assert defaults.selection == "reconstruction" and not defaults.stage2_on_refit
    assert defaults.stage2_windows == method_config("2ssp", {}).stage2_windows  # 2SSP's decisions
    assert defaults.shrinkage == "cross-validated"
    dense = method_config("2ssp-refit", {"refit_inputs": "dense"})
    assert dense.selection == "norm" and dense.shrinkage == "none"  # stage 1's neurons, the whole refit
    with pytest.raises(InvalidSpec, match="selection"):
        method_config("2ssp-refit", {"refit_inputs": "dense", "selection": "reconstruction"})
    with pytest.raises(InvalidSpec, match="shrinkage"):
        method_config("2ssp-refit", {"refit_inputs": "dense", "shrinkage": "cross-validated"})


# the 2ssp results on the real model with the stories protocol (24 evaluation windows), recorded before 2ssp-refit
# existed: its decisions must not move, nor its perplexities beyond the rounding of another library release
REFERENCE_2SSP = {
    0.375: ([0], 96, 53.24612927484737, [34.179156369176326]),
    0.5: ([0], 64, 105.18562221189131, [97.2540504814398]),
}


@pytest.mark.slow
def test_2ssp_unchanged_and_refit_beats_it_on_stories(stories_model, stories_text):
    ws = stories_workspace(str(stories_model), str(stories_text))
    for sparsity, (attention, kept, perplexity, removal) in REFERENCE_2SSP.items():
        report = prune_stories(ws, "2ssp", sparsity)
        assert report["removed_attention"] == attention and report["kept_ffn_neurons"] == kept
        assert ppl(report)[1] == pytest.approx(perplexity, rel=1e-6)
        assert report["method_details"]["removal_perplexity"] == pytest.approx(removal, rel=1e-6)
    refit_report = prune_stories(ws, "2ssp-refit", 0.375)
    assert refit_report["kept_ffn_neurons"] == 96 and len(refit_report["removed_attention"]) == 1
    assert ppl(refit_report)[1] < 0.75 * REFERENCE_2SSP[0.375][2]


def test_cli_prunes_with_refit_and_the_portable_export_reloads(tmp_path, capsys):
    root = tiny_workdir(tmp_path, "llama")
    out = tmp_path / "out"
    code = main(["prune", "--model", str(root / "model"), "--method", "2ssp-refit", "--sparsity", "0.4",
                 "--option", "ridge=0.01", "--calibration", str(root / "text.txt"), "--eval", str(root / "text.txt"),
                 "--seq-len", "32", "--calibration-windows", "4", "--eval-windows", "4", "--out", str(out),
                 "--export", "portable", "--no-progress", "--no-throughput", "--json"])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["method"] == "2ssp-refit" and report["options"]["ridge"] == 0.01
    assert report["timings"]["refit_s"] > 0 and report["method_details"]["refit"]["accumulator_bytes"] > 0
    capsys.readouterr()
    assert main(["eval", "--model", str(out), "--eval", str(root / "text.txt"), "--seq-len", "32",
                 "--eval-windows", "4", "--json", "--no-throughput", "--no-progress"]) == 0
    evaluated = json.loads(capsys.readouterr().out)["perplexity"][0]["perplexity"]
    assert evaluated == pytest.approx(report["perplexity"][0]["pruned"], rel=1e-5)
    assert not (out / "modeling_twossp.py").exists()  # portable: the plain architecture


@pytest.mark.slow
def test_sweep_shares_stage1_scores_with_2ssp(tmp_path, monkeypatch):
    from twossp_core.plan.spec import parse_sweep_spec
    from twossp_core.sweep import run_sweep

    calls = []
    original = stage1.neuron_scores
    monkeypatch.setattr(stage1, "neuron_scores", lambda *a, **k: calls.append(1) or original(*a, **k))
    root = tiny_workdir(tmp_path, "llama")
    spec = parse_sweep_spec({
        "model": str(root / "model"), "methods": "2ssp,2ssp-refit", "sparsities": [0.4],
        "calibration": [str(root / "text.txt")], "eval": [str(root / "text.txt")], "seq_len": 32,
        "calibration_windows": 4, "eval_windows": 2, "measure_throughput": False,
    })
    rows = run_sweep(spec, tmp_path / "sweep")["rows"]
    assert [r["method"] for r in rows] == ["2ssp", "2ssp-refit"] and len(calls) == 1
    assert rows[0]["kept_ffn_neurons"] == rows[1]["kept_ffn_neurons"]
    assert rows[0]["sparsity_achieved"] == rows[1]["sparsity_achieved"]

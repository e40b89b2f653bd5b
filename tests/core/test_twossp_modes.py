"""Stage 2's fast mode takes exactly the naive mode's decisions; stage 1's streaming scores match a reference."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
from tiny_models import tiny_model

from twossp_core.models.registry import adapter_for
from twossp_core.pruning.twossp import stage1, stage2
from twossp_core.runtime.forward import BlockRunner, window_nll


def _windows(vocab: int, count: int, seq: int, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (count, seq), generator=gen)


def _both_modes(model: Any, windows: torch.Tensor, count: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for mode in ("naive", "fast"):
        pruned = copy.deepcopy(model)
        adapter = adapter_for(pruned)
        calls = [0]

        def count_call(*_: Any, calls: list[int] = calls) -> None:
            calls[0] += 1

        handles = [layer.register_forward_pre_hook(count_call) for layer in adapter.layers]
        removals = stage2.greedy_attention_removal(adapter, windows, count, mode=mode)
        for h in handles:
            h.remove()
        ppl = [float(torch.tensor(window_nll(adapter, w.unsqueeze(0))[0])) for w in windows]
        out["windows"] = int(windows.shape[0])
        out[mode] = {"removals": removals, "block_calls": calls[0], "final_nll": ppl, "adapter": adapter}
    return out


def _assert_identical(result: dict[str, Any], count: int) -> None:
    naive, fast = result["naive"], result["fast"]
    assert len(naive["removals"]) == count
    assert [r.block for r in fast["removals"]] == [r.block for r in naive["removals"]]
    # bit-identical calibration perplexities after every removal, and the same final model
    assert [r.perplexity for r in fast["removals"]] == [r.perplexity for r in naive["removals"]]
    assert fast["final_nll"] == naive["final_nll"]
    assert fast["adapter"].removed_attention == naive["adapter"].removed_attention
    # the work each mode does: naive reruns every block per candidate; fast records the block inputs once,
    # runs candidate j from the latest block whose entering state it already knows (block j, or the block
    # removed last round, whose entering state j's previous run produced), and then refreshes only the
    # recorded inputs after the removed block
    blocks = fast["adapter"].num_blocks
    windows = result["windows"]
    assert naive["block_calls"] == blocks * sum(blocks - r for r in range(count)) * windows
    expected, known, removed = blocks, {}, set()
    for r, k in enumerate(r.block for r in naive["removals"]):
        starts = {j: known.get(j, j) for j in range(blocks) if j not in removed}
        expected += sum(blocks - start for start in starts.values())
        known = {j: k for j, start in starts.items() if j < k and start <= k}
        removed.add(k)
        expected += blocks - 1 - k if r + 1 < count else 0
    if windows == 1:
        assert fast["block_calls"] == expected
    else:  # a candidate that already lost after some windows may skip the rest
        assert fast["block_calls"] <= expected * windows


@pytest.mark.parametrize(("family", "num_windows"), [("llama", 1), ("llama", 3), ("qwen3", 1), ("gemma2", 2)])
def test_fast_and_naive_stage2_agree_on_tiny_models(family: str, num_windows: int) -> None:
    model = tiny_model(family, seed=3)
    windows = _windows(model.config.vocab_size, num_windows, 48)
    _assert_identical(_both_modes(model, windows, 3), 3)


@pytest.mark.parametrize(("family", "seed"), [("llama", 1), ("gemma2", 2)])
def test_candidates_that_provably_lose_stop_early_without_changing_decisions(
    family: str, seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    import twossp_core.runtime.forward as forward

    monkeypatch.setattr(forward, "LOGIT_CHUNK", 4)  # many LM-head chunks: many chances to stop
    outcomes: list[bool] = []
    real = forward.nll_sum_until

    def recording(*args: Any, **kwargs: Any) -> tuple[float, int, bool]:
        result = real(*args, **kwargs)
        outcomes.append(result[2])
        return result

    monkeypatch.setattr(stage2, "nll_sum_until", recording)
    model = tiny_model(family, seed=seed)
    result = _both_modes(model, _windows(model.config.vocab_size, 3, 48), 3)
    _assert_identical(result, 3)
    assert False in outcomes  # some candidate was abandoned part-way


def test_exact_ties_go_to_the_lower_block_in_both_modes() -> None:
    """Blocks 1-3 get a zero attention output projection: removing any of them changes nothing, so they tie
    exactly; the fast mode tries candidates in another order and must still pick the lowest tied block."""
    model = tiny_model("llama", seed=4)
    with torch.no_grad():
        for idx in (1, 2, 3):
            model.model.layers[idx].self_attn.o_proj.weight.zero_()
    result = _both_modes(model, _windows(model.config.vocab_size, 1, 48), 2)
    _assert_identical(result, 2)
    removed = [r.block for r in result["naive"]["removals"]]
    tied_first = [b for b in removed if b != 0]
    assert tied_first == sorted(tied_first) and tied_first[0] == 1


def test_scores_differ_between_candidates() -> None:
    """Guards the test above against a degenerate model where every candidate ties."""
    model = tiny_model("llama", seed=3)
    adapter = adapter_for(model)
    window = _windows(model.config.vocab_size, 1, 48)
    scores = []
    for idx in range(adapter.num_blocks):
        with adapter.bypassed("attention", idx):
            scores.append(window_nll(adapter, window)[0])
    assert len(set(scores)) == adapter.num_blocks


@pytest.mark.slow
def test_fast_and_naive_stage2_agree_on_stories260k(stories_model: Path, stories_text: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(stories_model, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(stories_model)
    text = stories_text.read_text()[:20000]
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    windows = torch.tensor(ids[: 2 * 256]).view(2, 256)
    _assert_identical(_both_modes(model, windows, 3), 3)


def test_capture_reproduces_the_full_forward() -> None:
    model = tiny_model("llama", seed=5)
    adapter = adapter_for(model)
    window = _windows(model.config.vocab_size, 1, 32)
    record = BlockRunner(adapter).capture(window)
    assert len(record.hidden) == adapter.num_blocks
    with torch.no_grad():
        reference = model.model(input_ids=window).last_hidden_state
    assert torch.equal(adapter.final_norm(BlockRunner(adapter).run_from(record, 0)), reference)
    states: list[torch.Tensor] = []
    BlockRunner(adapter).run_from(record, 1, states)
    assert len(states) == adapter.num_blocks - 2
    for got, want in zip(states, record.hidden[2:], strict=True):
        assert torch.equal(got, want)


def _reference_scores(model: Any, windows: torch.Tensor) -> list[torch.Tensor]:
    """Store every down-projection input of a full model pass, then take the norms."""
    adapter = adapter_for(model)
    stored: list[list[torch.Tensor]] = [[] for _ in range(adapter.num_blocks)]
    handles = [
        adapter.down_projection(i).register_forward_pre_hook(lambda m, a, i=i: stored[i].append(a[0].clone()))
        for i in range(adapter.num_blocks)
    ]
    with torch.no_grad():
        for w in windows:
            model(input_ids=w.unsqueeze(0))
    for h in handles:
        h.remove()
    return [torch.stack([a[0].double().pow(2).sum(0).sqrt() for a in acts]).mean(0) for acts in stored]


@pytest.mark.parametrize("family", ["llama", "gemma2", "phi"])
@pytest.mark.parametrize("batch_size", [1, 2])
def test_stage1_scores_match_stored_activations(family: str, batch_size: int) -> None:
    model = tiny_model(family, seed=7)
    adapter = adapter_for(model)
    windows = _windows(model.config.vocab_size, 3, 40, seed=2)
    reference = _reference_scores(model, windows)
    scores = stage1.neuron_scores(adapter, windows, batch_size=batch_size)
    assert len(scores) == adapter.num_blocks
    for got, want in zip(scores, reference, strict=True):
        assert got.dtype == torch.float32
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)
    # the streaming pass stops early: no hook is left behind and the model still runs normally
    assert all(not adapter.down_projection(i)._forward_pre_hooks for i in range(adapter.num_blocks))


def test_stage1_never_runs_the_lm_head() -> None:
    model = tiny_model("llama", seed=7)
    adapter = adapter_for(model)
    calls = [0]
    model.lm_head.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    model.model.norm.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    stage1.neuron_scores(adapter, _windows(model.config.vocab_size, 2, 16))
    assert calls[0] == 0

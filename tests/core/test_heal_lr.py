"""The heal's default learning rate follows the size of the model before pruning: the rate measured best on our
small models up to 2.5 M parameters, SmolLM2-135M's measured best at its size, falling in between and beyond."""

from __future__ import annotations

import pytest

from twossp_core.plan.heal_config import HealConfig, default_lr

SMOLLM2 = 134_515_008  # SmolLM2-135M-Instruct's parameters (tied embeddings counted once)


def test_the_default_rate_falls_with_the_model_s_size_through_the_measured_points():
    assert default_lr(174_720) == 3e-3 and default_lr(2_100_000) == 3e-3  # stories260k, c4llama-8l: as before
    assert default_lr(SMOLLM2) == 3e-4
    sizes = [2_500_000, 10**7, 5 * 10**7, SMOLLM2, 10**9, 7 * 10**9, 7 * 10**10]
    rates = [default_lr(n) for n in sizes]
    assert rates == sorted(rates, reverse=True) and len(set(rates)) == len(rates)
    assert 1e-5 <= default_lr(7 * 10**9) <= 5e-5  # the usual range for full fine-tuning of a 7B model
    assert default_lr(10**13) == 1e-5


def test_lora_takes_ten_times_the_full_rate_at_most_the_small_models():
    assert default_lr(SMOLLM2, "lora") == 3e-3 and default_lr(174_720, "lora") == 3e-3
    assert default_lr(7 * 10**9, "lora") == pytest.approx(10 * default_lr(7 * 10**9), rel=0.05)


def test_a_rate_the_request_sets_is_kept():
    assert HealConfig(lr=1e-2).for_model(SMOLLM2).lr == 1e-2
    chosen = HealConfig().for_model(SMOLLM2)
    assert chosen.lr == 3e-4 and HealConfig(params="lora").for_model(SMOLLM2).lr == 3e-3
    assert HealConfig().lr is None  # the request records that it left the rate open


def test_the_training_loop_refuses_an_unset_rate():
    from twossp_core.heal.loop import heal
    from twossp_core.progress import Reporter

    with pytest.raises(ValueError, match="learning rate is not set"):
        heal(object(), None, object(), HealConfig(loss="lm"), seed=0, reporter=Reporter())

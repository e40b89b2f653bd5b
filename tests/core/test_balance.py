"""The balance between attention removal and FFN pruning (Eq. 5 and the FFN share), by hand."""

import pytest

from twossp_core.errors import InfeasibleTarget
from twossp_core.pruning.twossp.balance import attention_count, plan_balance

# stories260k: 5 blocks, hidden 64, FFN 172, 8 heads x 8 dims, 4 KV heads
STORIES = dict(blocks=5, mlp_params=3 * 64 * 172, attn_params=2 * 64 * 64 + 2 * 64 * 32,
               block_params_total=5 * (3 * 64 * 172 + 2 * 64 * 64 + 2 * 64 * 32 + 2 * 64), intermediate_size=172)


@pytest.mark.parametrize(
    ("sparsity", "n_attn", "per_block", "kept"),
    [
        # exponent = (33024 / 12288) / 1.5 = 1.791667
        # 0.25: 5 * 0.25^1.7917 = 0.417 -> 0; target 56800; per block 11360; K = round(172 * (1 - 11360/33024)) = 113
        (0.25, 0, 11360, 113),
        # 0.375: 5 * 0.1725 = 0.863 -> 1; target 85200; (85200 - 12288) / 5 = 14582.4 -> 14582; 172 * 0.5584 -> 96
        (0.375, 1, 14582, 96),
        # 0.5: 5 * 0.2888 = 1.444 -> 1; target 113600; (113600 - 12288) / 5 = 20262.4 -> 20262; 172 * 0.3864 -> 66
        (0.5, 1, 20262, 66),
    ],
)
def test_plan_matches_hand_computation(sparsity, n_attn, per_block, kept):
    plan = plan_balance(sparsity=sparsity, **STORIES)
    assert plan.num_attention == n_attn
    assert plan.target_params == round(sparsity * STORIES["block_params_total"])
    assert plan.ffn_params_per_block == per_block
    assert plan.kept_neurons == kept


@pytest.mark.parametrize(("sparsity", "round_to", "kept"), [
    (0.25, 8, 112), (0.375, 8, 96), (0.5, 8, 64), (0.5, 16, 64), (0.25, 32, 128), (0.5, 1, 66),
])
def test_kept_neurons_round_to_the_nearest_multiple(sparsity, round_to, kept):
    exact = plan_balance(sparsity=sparsity, **STORIES)
    plan = plan_balance(sparsity=sparsity, round_to=round_to, **STORIES)
    assert plan.kept_neurons == kept and kept % round_to == 0
    assert abs(plan.kept_neurons - exact.kept_neurons) <= round_to / 2
    assert (plan.num_attention, plan.target_params) == (exact.num_attention, exact.target_params)


def test_rounding_stays_within_one_multiple_and_the_ffn():
    assert plan_balance(sparsity=0.9, num_attention=5, round_to=64, **STORIES).kept_neurons == 64  # exact: 7
    assert plan_balance(sparsity=0.01, num_attention=0, round_to=64, **STORIES).kept_neurons == 172  # 192 > FFN


def test_the_method_rounds_to_eight_by_default():
    from twossp_core.plan.methods import method_config

    assert method_config("2ssp", {}).round_to == 8


def test_attention_count_uses_python_rounding():
    # P_mlp / P_attn == alpha makes the exponent 1: N = round(5 * 0.5) = round(2.5) = 2 (half to even)
    assert attention_count(5, 0.5, 15, 10, 1.5) == 2
    assert attention_count(7, 0.5, 15, 10, 1.5) == 4  # round(3.5) = 4


def test_alpha_changes_the_split():
    low = plan_balance(sparsity=0.5, alpha=1.0, **STORIES)
    high = plan_balance(sparsity=0.5, alpha=4.0, **STORIES)
    assert high.num_attention > low.num_attention
    assert high.kept_neurons > low.kept_neurons


def test_explicit_attention_count_overrides_formula():
    plan = plan_balance(sparsity=0.5, num_attention=3, **STORIES)
    assert plan.num_attention == 3
    assert plan.ffn_params_per_block == round((113600 - 3 * 12288) / 5)


def test_attention_alone_over_target_is_an_error():
    with pytest.raises(InfeasibleTarget, match="more than the target"):
        plan_balance(sparsity=0.1, num_attention=5, **STORIES)


def test_target_beyond_all_ffn_neurons_is_an_error():
    with pytest.raises(InfeasibleTarget, match="even removing every neuron") as err:
        plan_balance(sparsity=0.95, num_attention=0, **STORIES)
    assert "remove more attention modules (num_attention_to_prune: 0 of 5)" in str(err.value)


def test_the_refusal_never_suggests_more_attention_when_none_is_left():
    with pytest.raises(InfeasibleTarget, match="even removing every neuron") as err:
        plan_balance(sparsity=0.999, **STORIES)  # the formula already removes all 5 attention modules
    assert "more attention" not in str(err.value) and "every attention module is removed already" in str(err.value)


def test_more_attention_than_blocks_is_an_error():
    with pytest.raises(InfeasibleTarget, match="has 5 blocks"):
        plan_balance(sparsity=0.9, num_attention=6, **STORIES)


@pytest.mark.parametrize("sparsity", [0.0, 1.0, -0.1, 1.5])
def test_sparsity_outside_open_interval_is_an_error(sparsity):
    with pytest.raises(InfeasibleTarget, match="strictly between 0 and 1"):
        plan_balance(sparsity=sparsity, **STORIES)

"""The multi-device placement planner and when `auto` picks multi-device execution (torch-free: no GPU needed,
the GPUs are given as (name, free bytes))."""

from __future__ import annotations

import pytest

from twossp_core.errors import InvalidSpec
from twossp_core.plan.memory import Workload, choose_mode, model_parts, plan_memory, spec_plan
from twossp_core.plan.placement import Part, check_multi_device, place
from twossp_core.plan.shape import model_shape
from twossp_core.plan.spec import parse_spec

GB = 10**9
LLAMA_70B = {"model_type": "llama", "hidden_size": 8192, "intermediate_size": 28672, "num_hidden_layers": 80,
             "num_attention_heads": 64, "num_key_value_heads": 8, "vocab_size": 128256,
             "tie_word_embeddings": False, "max_position_embeddings": 8192}
# a model with tied embeddings (the LM head is the embedding matrix)
GEMMA_7B = {"model_type": "gemma", "hidden_size": 3072, "intermediate_size": 24576, "num_hidden_layers": 28,
            "num_attention_heads": 16, "num_key_value_heads": 16, "head_dim": 256, "vocab_size": 256000,
            "max_position_embeddings": 8192}
WORK = Workload(dtype="bfloat16", seq_len=2048, calibration_windows=32, record_windows=1, device="cuda")


def gpus(*free_gb: float) -> list[tuple[str, int]]:
    return [(f"cuda:{i}", int(free * GB)) for i, free in enumerate(free_gb)]


def blocks_in_order(placement) -> list[int]:
    out = []
    for share in placement.devices:
        if share.blocks is not None:
            out += list(range(share.blocks[0], share.blocks[1] + 1))
    return out


def test_one_device_that_holds_everything_gets_everything():
    parts = [Part("embeddings", 10), *(Part(f"block {i}", 5, block=i) for i in range(4)), Part("final norm", 1),
             Part("LM head", 10)]
    placement = place(parts, [("cuda:0", 1000)])
    assert placement.fits
    (share,) = placement.devices
    assert share.parts == ("embeddings", "blocks 0-3", "final norm", "LM head")
    assert share.weights == 41 and share.peak == 41


def test_parts_are_contiguous_in_forward_order_and_balanced():
    parts = [Part("embeddings", 10), *(Part(f"block {i}", 10, 2, 3, block=i) for i in range(8)),
             Part("final norm", 1), Part("LM head", 10)]
    placement = place(parts, [("a", 1000), ("b", 1000)])
    a, b = placement.devices
    assert a.parts == ("embeddings", "blocks 0-3") and b.parts == ("blocks 4-7", "final norm", "LM head")
    assert (a.weights, b.weights) == (50, 51)  # not everything on the first device, though it would hold it
    assert a.activations == 4 * 2 + 3  # each block's own, plus one block's transient (they run one at a time)
    # a device whose usable memory is smaller takes fewer parts; the order stays
    small = place(parts, [("a", 30), ("b", 1000)])
    assert small.fits and small.devices[0].parts == ("embeddings", "block 0")
    assert small.devices[0].peak <= 30
    assert blocks_in_order(small) == list(range(8))


def test_refuses_when_the_devices_are_too_small_and_shows_what_they_would_need():
    parts = [Part("embeddings", 10), *(Part(f"block {i}", 10, block=i) for i in range(4)), Part("LM head", 10)]
    placement = place(parts, [("a", 29), ("b", 29)])
    assert not placement.fits
    assert sum(d.weights for d in placement.devices) == 60  # the unbounded fill: every part somewhere
    assert all(d.usable == 29 for d in placement.devices) and placement.peak > 29


def test_a_part_larger_than_any_device_does_not_fit():
    parts = [Part("embeddings", 50), Part("block 0", 10, block=0)]
    assert not place(parts, [("a", 40), ("b", 40)]).fits


def test_slack_counts_against_the_usable_memory():
    parts = [Part("embeddings", 100)]
    assert place(parts, [("a", 104)], slack=0.05).fits is False
    assert place(parts, [("a", 105)], slack=0.05).fits is True


@pytest.mark.parametrize("count", [2, 4])
def test_70b_spreads_over_the_gpus_in_order(count):
    plan = plan_memory(LLAMA_70B, WORK, "multi-device", devices=gpus(*[1000] * count))
    placement = plan.placement
    assert placement.fits and len(placement.devices) == count
    assert blocks_in_order(placement) == list(range(80))
    assert all(d.blocks is not None for d in placement.devices)  # balanced: every device runs blocks
    assert placement.device_of("embeddings") == "cuda:0"
    assert placement.device_of("LM head") == placement.device_of("final norm") == f"cuda:{count - 1}"
    # the plan's arithmetic: every weight once, on one device
    assert sum(d.weights for d in placement.devices) == plan.weights
    assert plan.device_peak == placement.peak == max(d.peak for d in placement.devices)
    assert "cuda:0 embeddings + blocks 0-" in plan.describe()


def test_70b_needs_more_than_two_80gb_gpus_and_fits_four():
    assert not plan_memory(LLAMA_70B, WORK, "multi-device", devices=gpus(80, 80)).placement.fits
    four = plan_memory(LLAMA_70B, WORK, "multi-device", devices=gpus(80, 80, 80, 80))
    assert four.placement.fits and four.device_peak < 80 * GB


def test_per_device_cap_is_the_device_budget():
    plan = plan_memory(LLAMA_70B, WORK, "multi-device", devices=gpus(80, 80, 80, 80), device_budget=40 * GB)
    assert not plan.placement.fits  # 4 x 40 GB cannot hold 141 GB of weights
    plan = plan_memory(LLAMA_70B, WORK, "multi-device", devices=gpus(80, 80, 80, 80, 80, 80), device_budget=40 * GB)
    assert plan.placement.fits
    assert all(d.usable == 40 * GB and d.peak <= 40 * GB for d in plan.placement.devices)
    # a GPU with less free memory than the budget is capped by its free memory
    plan = plan_memory(LLAMA_70B, WORK, "multi-device", devices=gpus(10, 80, 80, 80), device_budget=60 * GB)
    assert [d.usable for d in plan.placement.devices] == [10 * GB, 60 * GB, 60 * GB, 60 * GB]
    assert plan.placement.devices[0].peak <= 10 * GB


def test_tied_embeddings_keep_the_lm_head_with_the_embeddings():
    shape = model_shape(GEMMA_7B)
    parts, tied_head = model_parts(shape, WORK)
    assert shape.tied and tied_head is not None and tied_head.weights == 0
    plan = plan_memory(GEMMA_7B, WORK, "multi-device", devices=gpus(1000, 1000))
    first, last = plan.placement.devices
    assert plan.placement.device_of("LM head") == plan.placement.device_of("embeddings") == "cuda:0"
    assert plan.placement.device_of("final norm") == "cuda:1"
    assert first.parts[0] == "embeddings" and first.parts[-1] == "LM head"
    assert first.activations >= tied_head.activations  # the logits are on the embeddings' device
    assert sum(d.weights for d in plan.placement.devices) == plan.weights  # the shared matrix counted once


def test_auto_spreads_only_when_one_gpu_is_too_small_and_the_spread_fits():
    # the 70B model does not fit one 80 GB GPU: with four, auto spreads it
    assert choose_mode(LLAMA_70B, WORK, devices=gpus(80, 80, 80, 80)).mode == "multi-device"
    # one GPU holds it (its free memory): in memory, as before
    assert choose_mode(LLAMA_70B, WORK, devices=gpus(200, 80)).mode == "in-memory"
    # the spread does not fit either: today's choice (in memory without budgets, block by block with them)
    assert choose_mode(LLAMA_70B, WORK, devices=gpus(80, 80)).mode == "in-memory"
    assert choose_mode(LLAMA_70B, WORK, devices=gpus(80, 80), device_budget=80 * GB).mode == "block-by-block"
    # one GPU, no device list, or a CPU job: never spread by auto
    for kwargs in ({"devices": gpus(80)}, {"devices": None}):
        assert choose_mode(LLAMA_70B, WORK, device_budget=80 * GB, **kwargs).mode == "block-by-block"
    cpu = Workload(dtype="bfloat16", device="cpu")
    assert choose_mode(LLAMA_70B, cpu, devices=gpus(80, 80, 80, 80)).mode == "in-memory"
    # the device budget caps every GPU: four GPUs of 80 GB with a 30 GB budget cannot hold it, block by block
    assert choose_mode(LLAMA_70B, WORK, devices=gpus(80, 80, 80, 80), device_budget=30 * GB).mode == "block-by-block"
    # a host budget below the checkpoint (mapped while it loads) keeps it off the GPUs
    assert choose_mode(LLAMA_70B, WORK, devices=gpus(80, 80, 80, 80), host_budget=100 * GB).mode == "block-by-block"


def test_without_several_gpus_the_choice_is_unchanged():
    small = Workload(dtype="bfloat16", seq_len=512, device="cuda")
    for budget in (None, 200 * GB, 20 * GB):
        before = choose_mode(LLAMA_70B, small, device_budget=budget, host_budget=400 * GB)
        after = choose_mode(LLAMA_70B, small, device_budget=budget, host_budget=400 * GB, devices=gpus(80))
        assert before == after and before.mode != "multi-device"


def test_forced_multi_device_that_does_not_fit_is_refused_with_the_devices():
    with pytest.raises(InvalidSpec, match=r"does not fit the devices \(cuda:0 80.00 GB, cuda:1 80.00 GB\)"):
        choose_mode(LLAMA_70B, WORK, execution="multi-device", devices=gpus(80, 80))
    with pytest.raises(InvalidSpec, match="is not one of"):
        choose_mode(LLAMA_70B, WORK, execution="several")


def test_the_plan_of_the_report_holds_the_placement():
    plan = choose_mode(LLAMA_70B, WORK, devices=gpus(80, 80, 80, 80))
    data = plan.as_dict()
    shares = data["placement"]["devices"]
    assert data["placement"]["strategy"] == "balanced" and len(shares) == 4
    assert shares[0]["parts"][0] == "embeddings" and shares[3]["parts"][-1] == "LM head"
    assert all(s["peak"] >= s["weights"] + s["activations"] for s in shares)
    assert plan_memory(LLAMA_70B, WORK, "in-memory").as_dict()["placement"] is None


class _Spec:
    def __init__(self, **fields):
        self.__dict__.update(fields)


@pytest.mark.parametrize(("fields", "needle"), [
    ({"method": "slicegpt"}, "cannot run in multi-device mode"),
    ({"method": "2ssp-refit"}, "cannot run in multi-device mode"),
    ({"method": "2ssp", "heal": object()}, "heal"),
    ({"methods": ["2ssp"]}, "sweeps"),
])
def test_multi_device_refuses_what_it_cannot_do(fields, needle):
    with pytest.raises(InvalidSpec, match=needle):
        check_multi_device(_Spec(**fields))
    check_multi_device(_Spec(method="2ssp", heal=None))


def _job(**fields):
    return parse_spec({"model": "m", "sparsity": 0.5, "seq_len": 2048, "dtype": "bfloat16", "method": "2ssp",
                       **fields})


def test_auto_does_not_spread_a_job_that_multi_device_cannot_run():
    four = gpus(80, 80, 80, 80)
    assert spec_plan(_job(), LLAMA_70B, device="cuda", devices=four).mode == "multi-device"
    # SliceGPT cannot run spread: auto chooses as on one GPU (in memory without budgets, as before)
    assert spec_plan(_job(method="slicegpt"), LLAMA_70B, device="cuda", devices=four).mode == "in-memory"
    with pytest.raises(InvalidSpec, match="cannot run in multi-device mode"):
        spec_plan(_job(method="slicegpt", execution="multi-device"), LLAMA_70B, device="cuda", devices=four)

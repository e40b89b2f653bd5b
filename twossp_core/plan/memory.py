"""Memory budgets and the memory plan of a job (torch-free: the API and the CLI check requests with it).

A job runs in one of three modes:

- `in-memory`: the whole model sits on the compute device (the usual path);
- `block-by-block`: the weights stay in their safetensors files; one decoder block at a time is read onto the
  compute device, the embeddings, final norm and LM head stay resident, and the calibration and evaluation
  activations wait on the host between blocks (see twossp_core/runtime/offload.py and sequential.py);
- `multi-device`: the whole model in memory, its parts spread over several GPUs (twossp_core/plan/placement.py,
  twossp_core/runtime/dispatch.py).

`plan_memory` estimates, from the model's config.json alone, what each mode needs on the host and on the compute
device (with a CPU device both are the same host memory); `choose_mode` picks the mode that fits the budgets
(`in-memory` first) or refuses with the plan in the message. A job with a heal runs in memory only: its plan counts
the heal phase (twossp_core/plan/heal_memory.py), and the job's peak is the larger of the pruning phase's and the
heal's. What a method holds while it runs is its own declaration (twossp_core/plan/declarations.py).
A GGUF file (twossp_core/gguf_source.py) runs in memory only: it is dequantized there, and the other modes read
safetensors files.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from twossp_core.errors import InvalidSpec
from twossp_core.gguf_source import GGUF_KEY
from twossp_core.models.counts import block_counts
from twossp_core.plan.declarations import MethodMemory
from twossp_core.plan.heal_memory import HealWorkload, heal_phases, heal_workload
from twossp_core.plan.methods import method_memory, methods_running
from twossp_core.plan.placement import Part, Placement, check_multi_device, multi_device_refusal, place
from twossp_core.plan.shape import ModelShape, model_shape
from twossp_core.plan.sizes import format_size

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
MODES = ("in-memory", "block-by-block", "multi-device")
EXECUTIONS = ("auto", *MODES)
LOGIT_CHUNK = 512  # positions per LM-head chunk (twossp_core.runtime.forward.LOGIT_CHUNK)
# the least a process holds besides the plan's tensors (the Python interpreter with torch and transformers
# imported, CPU build): used where the job's own process is not running (request checks, routing), so that only
# a job that cannot fit anyway is refused; the job itself plans with its measured RSS
DEFAULT_BASELINE = 256 * 2**20
# allocator slack and small tensors not itemised (masks, rotary tables, token ids, scores)
SLACK_FRACTION = 0.05

LOAD_FACTOR = 2  # host bytes per weight byte while a model loads in memory (a mapped file and its copy)
GGUF_DEQUANT_BYTES = 4  # bytes per parameter of the float32 arrays gguf-py dequantizes a GGUF file into
GGUF_ADVICE = ("convert it once with `twossp convert-gguf FILE --out DIR` and pass DIR to run block by block or "
               "over several devices")


@dataclass(frozen=True)
class Workload:
    """The sizes of the work: windows, batch sizes and precision."""

    dtype: str = "float32"
    seq_len: int = 2048
    calibration_windows: int = 32
    batch_size: int = 4  # windows per forward pass (evaluation batches; stage 1 uses fewer)
    record_windows: int = 1  # windows whose every block input is recorded (2SSP stage 2)
    device: str = "cpu"  # "cpu" or "cuda": where blocks compute
    # what the job's methods declare they hold while they run (one method runs at a time)
    methods: tuple[MethodMemory, ...] = ()
    model_copies: int = 0  # whole copies of the model besides it (a sweep prunes a copy per run, in memory)
    heal: HealWorkload | None = None  # the heal after pruning (in memory only)


Devices = Sequence[tuple[str, int]]  # the GPUs a job may spread over: (name, free bytes), the job's device first


@dataclass(frozen=True)
class MemoryPlan:
    mode: str
    weights: int  # all weights in the job's dtype
    block: int  # one decoder block
    resident: int  # what stays on the compute device besides blocks
    activations: int  # per forward batch, plus recorded block inputs, plus (block mode) host-held windows
    baseline: int  # the process before any tensor: interpreter, torch, transformers
    host_peak: int
    device_peak: int  # equal to host_peak with a CPU device (the same memory)
    device: str
    activation_windows: int | None = None  # block mode: windows held on the host per pass (None: all)
    # multi-device: which parts run on which device and each device's peak (device_peak is the largest)
    placement: Placement | None = None
    # in memory with a heal: the heal phase's peak on the compute device (with a CPU device: on the host, the
    # baseline included); device_peak (host_peak on a CPU) is the larger of it and the pruning phase's
    heal_peak: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        parts = [f"weights {format_size(self.weights)}", f"one block {format_size(self.block)}",
                 f"activations {format_size(self.activations)}", f"baseline {format_size(self.baseline)}"]
        peaks = f"peak host {format_size(self.host_peak)}"
        if self.device != "cpu":
            peaks += f", peak device {format_size(self.device_peak)}"
        text = f"memory plan ({self.mode}): " + ", ".join(parts) + f"; {peaks}"
        if self.heal_peak is not None:
            text += f" (heal phase {format_size(self.heal_peak)}{' on the device' if self.device != 'cpu' else ''})"
        if self.placement is not None:
            text += f"; {self.placement.strategy} placement: {self.placement.describe()}"
        return text


def _block_activations(shape: ModelShape, w: Workload, batch: int) -> int:
    """Transient tensors of one forward batch through one block."""
    item = DTYPE_BYTES[w.dtype]
    tokens = batch * w.seq_len
    block = tokens * (6 * shape.hidden + 3 * shape.intermediate) * item
    attention_scores = batch * shape.heads * w.seq_len * w.seq_len * 4  # eager attention holds the scores
    return block + attention_scores


def _logit_activations(shape: ModelShape, w: Workload, batch: int) -> int:
    """The LM-head chunk of the NLL."""
    return batch * min(LOGIT_CHUNK, w.seq_len) * shape.vocab * 4 * 2  # float32 logits + exp buffer


def _batch_activations(shape: ModelShape, w: Workload, batch: int) -> int:
    """Transient tensors of one forward batch through one block, and the LM-head chunk of the NLL."""
    return _block_activations(shape, w, batch) + _logit_activations(shape, w, batch)


def model_parts(shape: ModelShape, work: Workload) -> tuple[list[Part], Part | None]:
    """The parts of the model in forward order, with what each costs on its device, and (tied embeddings) the LM
    head that runs with the embeddings (twossp_core.plan.placement.place)."""
    item = DTYPE_BYTES[work.dtype]
    recorded = work.record_windows * work.seq_len * shape.hidden * item  # one block's recorded inputs
    transient = _block_activations(shape, work, work.batch_size)
    head = Part("LM head", shape.head_params * item, activations=_logit_activations(shape, work, work.batch_size))
    parts = [Part("embeddings", shape.embedding_params * item)]
    parts += [Part(f"block {i}", shape.block_params * item, recorded, transient, block=i) for i in range(shape.blocks)]
    parts.append(Part("final norm", shape.norm_params * item))
    if shape.tied:
        return parts, head
    return [*parts, head], None


def placement_devices(
    work: Workload, devices: Devices | None, device_budget: int | None
) -> list[tuple[str, int | None]]:
    """The devices a multi-device plan fills and what each may use: the GPUs' free memory capped by the device
    budget (per device). Without a device list (request checks, a routing class of one GPU) one device of the
    budget's size; a CPU job has the host alone."""
    if work.device == "cpu":
        return [("cpu", None)]
    if not devices:
        return [("cuda", device_budget)]
    return [(name, free if device_budget is None else min(free, device_budget)) for name, free in devices]


def method_states(shape: ModelShape, work: Workload) -> int:
    """What the job's methods hold besides the model, the recorded block inputs and the dense blocks: the largest
    declaration (one method runs at a time)."""
    item = DTYPE_BYTES[work.dtype]
    return max((m.state_bytes(shape, item, work.seq_len) for m in work.methods), default=0)


def holds_dense_blocks(work: Workload) -> bool:
    """Whether a method of the job keeps a copy of the dense blocks (MethodMemory.dense_blocks)."""
    return any(m.dense_blocks for m in work.methods)


def load_bytes(cfg: dict[str, Any], shape: ModelShape, item: int) -> int:
    """Host bytes while the model loads in memory. A GGUF file (gguf_source.GGUF_KEY) is dequantized by gguf-py
    into float32 arrays first, which the model's tensors of its dtype are made from (measured on SmolLM2-135M
    Q4_1: 1.82 x the float32 weights above the baseline at the peak, 2.1 x the bfloat16 ones)."""
    weights = shape.total_params * item
    if GGUF_KEY in cfg:
        return shape.total_params * GGUF_DEQUANT_BYTES + weights
    return LOAD_FACTOR * weights


def plan_memory(
    cfg: dict[str, Any], work: Workload, mode: str, *, baseline: int = DEFAULT_BASELINE,
    host_budget: int | None = None, devices: Devices | None = None, device_budget: int | None = None,
) -> MemoryPlan:
    """The estimate of one mode. In block mode with a host budget, the host-held windows are limited to what
    fits (at least one batch): evaluations then run in several passes over the blocks. The multi-device plan
    places the model on `devices` (each capped by `device_budget`)."""
    shape = model_shape(cfg)
    item = DTYPE_BYTES[work.dtype]
    weights = shape.total_params * item
    block = shape.block_params * item
    resident = shape.resident_params * item
    window_hidden = work.seq_len * shape.hidden * item
    transient = _batch_activations(shape, work, work.batch_size)
    records = work.record_windows * shape.blocks * window_hidden  # BlockRunner records (stage 2)
    records += method_states(shape, work)
    on_cpu = work.device == "cpu"
    if mode == "in-memory":
        device_peak = weights * (1 + work.model_copies) + transient + records
        # a method's copies of the dense blocks stay on the host unless they take at most half of a GPU's free
        # memory; on a CPU they are in the one host memory
        device_peak += shape.blocks * block if on_cpu and holds_dense_blocks(work) else 0
        device_peak += int(SLACK_FRACTION * device_peak)
        heal_need = None
        if work.heal is not None:  # a phase after pruning: the job's peak is the larger of the two
            # a GPU job's teacher loads through the host (the host peak below counts that load); with a control,
            # the larger of its phase and the pruned model's
            heal_need = max(phase.peak if on_cpu else phase.training
                            for phase in heal_phases(shape, work.heal, item, LOAD_FACTOR))
            heal_need += int(SLACK_FRACTION * heal_need)
            device_peak = max(device_peak, heal_need)
        # the model is loaded on the host first (then moved to a GPU): while transformers loads it, the file's
        # mapped pages and the copied tensors are both in the process (measured: 1.62 x the weights at the peak)
        load = load_bytes(cfg, shape, item)
        host_peak = baseline + max(device_peak, load) if on_cpu else baseline + load
        heal_peak = None if heal_need is None else heal_need + (baseline if on_cpu else 0)
        return MemoryPlan(mode, weights, block, weights, transient + records, baseline,
                          host_peak, host_peak if on_cpu else device_peak, work.device, heal_peak=heal_peak)
    if mode == "multi-device":
        parts, tied_head = model_parts(shape, work)
        placement = place(parts, placement_devices(work, devices, device_budget), slack=SLACK_FRACTION,
                          tied_head=tied_head)
        activations = sum(d.activations for d in placement.devices)
        if on_cpu:
            host_peak = baseline + max(placement.peak, LOAD_FACTOR * weights)
            device_peak = host_peak
        else:
            # the checkpoint's tensors are read onto the GPUs as they load: the host holds its mapped pages at most
            host_peak, device_peak = baseline + weights, placement.peak
        return MemoryPlan(mode, weights, block, weights, activations, baseline, host_peak, device_peak, work.device,
                          placement=placement)
    if mode != "block-by-block":
        raise ValueError(mode)
    # one block computing plus the next one being read (and a method's dense block); records on the device
    device_fixed = resident + (3 if holds_dense_blocks(work) else 2) * block + transient + records
    device_fixed += int(SLACK_FRACTION * device_fixed)
    host_fixed = baseline + (device_fixed if on_cpu else 2 * block)
    windows = max(work.calibration_windows, work.batch_size)
    if host_budget is not None:
        fit = (host_budget - host_fixed) // max(window_hidden, 1)
        windows = max(work.batch_size, min(windows, fit // work.batch_size * work.batch_size))
    held = windows * window_hidden
    host_peak = host_fixed + held
    device_peak = host_peak if on_cpu else device_fixed
    return MemoryPlan(mode, weights, block, resident, transient + records + held, baseline, host_peak,
                      device_peak, work.device, activation_windows=windows)


def fits(plan: MemoryPlan, host_budget: int | None, device_budget: int | None) -> bool:
    if plan.placement is not None and not plan.placement.fits:
        return False
    if host_budget is not None and plan.host_peak > host_budget:
        return False
    if device_budget is not None and plan.device != "cpu" and plan.device_peak > device_budget:
        return False
    return True


def _spreads(work: Workload, devices: Devices | None) -> bool:
    """Whether `auto` may spread the job over several GPUs."""
    return work.device == "cuda" and devices is not None and len(devices) >= 2


def choose_mode(
    cfg: dict[str, Any], work: Workload, *, execution: str = "auto", host_budget: int | None = None,
    device_budget: int | None = None, baseline: int = DEFAULT_BASELINE, devices: Devices | None = None,
) -> MemoryPlan:
    """The plan to run with: `execution` forces a mode; `auto` takes in-memory when it fits (or when no budget is
    set), else block-by-block. With two GPUs or more (`devices`: each one's name and free bytes, the job's device
    first) `auto` takes multi-device when in memory does not fit the first GPU (its free memory, capped by the
    device budget) and the placement over all of them fits. Raises InvalidSpec when the chosen mode does not fit
    the budgets."""
    if execution not in EXECUTIONS:
        raise InvalidSpec(f"execution {execution!r} is not one of {', '.join(EXECUTIONS)}")
    if GGUF_KEY in cfg:  # dequantized in memory: the other modes read safetensors files
        if execution not in ("auto", "in-memory"):
            raise InvalidSpec(f"a GGUF file runs in memory only, not {execution}: {GGUF_ADVICE}")
        execution = "in-memory"
    plans = {mode: plan_memory(cfg, work, mode, baseline=baseline, host_budget=host_budget, devices=devices,
                               device_budget=device_budget) for mode in MODES}
    one_gpu = device_budget
    if _spreads(work, devices):
        assert devices is not None
        one_gpu = devices[0][1] if device_budget is None else min(devices[0][1], device_budget)
    if execution != "auto":
        chosen = plans[execution]
    elif work.heal is not None:
        chosen = plans["in-memory"]  # a heal trains the whole model at once: in memory only
    elif fits(plans["in-memory"], host_budget, one_gpu):
        chosen = plans["in-memory"]
    elif _spreads(work, devices) and fits(plans["multi-device"], host_budget, device_budget):
        chosen = plans["multi-device"]
    elif fits(plans["in-memory"], host_budget, device_budget):
        chosen = plans["in-memory"]  # no budget set: in memory, as on one GPU
    else:
        chosen = plans["block-by-block"]
    if fits(chosen, host_budget, device_budget):
        return chosen
    budgets = ", ".join(f"{name} {format_size(b)}" for name, b in (("host", host_budget), ("device", device_budget))
                        if b is not None)
    needs = f"host {format_size(chosen.host_peak)}"
    if chosen.device != "cpu":
        needs += f", device {format_size(chosen.device_peak)}"
    if chosen.placement is not None and not chosen.placement.fits:
        usable = ", ".join(f"{d.device} {format_size(d.usable)}" for d in chosen.placement.devices)
        raise InvalidSpec(f"the model does not fit the devices ({usable}): {chosen.describe()}; multi-device mode "
                          f"needs at least {format_size(sum(d.peak for d in chosen.placement.devices))} over them")
    raise InvalidSpec(f"the model does not fit the memory budget ({budgets}): {chosen.describe()}; "
                      f"{chosen.mode} mode needs at least {needs}{_heal_advice(chosen, host_budget, device_budget)}"
                      + (f"; a GGUF file runs in memory only: {GGUF_ADVICE}" if GGUF_KEY in cfg else ""))


def _heal_advice(plan: MemoryPlan, host_budget: int | None, device_budget: int | None) -> str:
    """What to change when the heal phase is what does not fit its budget."""
    if plan.heal_peak is None:
        return ""
    budget = host_budget if plan.device == "cpu" else device_budget
    if budget is None or plan.heal_peak <= budget:
        return ""
    return (f"; the heal phase alone needs {format_size(plan.heal_peak)}: lower heal.micro_batch_size or "
            "heal.seq_len, or set heal.gradient_checkpointing or heal.params=lora (heal.loss=lm needs no teacher)")


def job_workload(spec: Any, cfg: dict[str, Any], device: str) -> Workload:
    """The workload of a job spec (PruneSpec, SweepSpec or an evaluation-only JobSpecBase) on `device`."""
    default_seq = 2048
    limit = cfg.get("max_position_embeddings")
    seq_len = spec.seq_len or default_seq
    if limit:
        seq_len = min(seq_len, int(limit))
    methods = tuple(method_memory(name, options, spec.calibration_windows)
                    for name, options in spec.pruning().options.items())
    heal = heal_workload(spec, seq_len, block_counts(cfg).blocks, int(limit) if limit else None,
                         dense_student=not all(m.sized_by_sparsity for m in methods))
    return Workload(dtype=spec.dtype, seq_len=seq_len, calibration_windows=spec.calibration_windows,
                    record_windows=max([m.record_windows for m in methods] or [0]), device=device,
                    methods=methods, heal=heal, model_copies=1 if hasattr(spec, "methods") else 0)


def check_block_mode(spec: Any) -> None:
    """Refuse what block-by-block execution cannot do (yet): sweeps, heal, methods that edit weights outside the
    offloading hooks. Every export format is written one block at a time (twossp_core/export)."""
    if hasattr(spec, "methods"):
        raise InvalidSpec("sweeps run in memory; the model needs block-by-block execution here: run twossp prune "
                          "once per method and sparsity, or raise the memory budget")
    if getattr(spec, "heal", None) is not None:
        raise InvalidSpec("heal trains the whole model at once and cannot run block by block; raise the memory budget "
                          "or prune without heal")
    method = getattr(spec, "method", None)
    allowed = methods_running("block-by-block")
    if method is not None and method not in allowed:
        raise InvalidSpec(f"method {method!r} cannot run block by block (it edits weights across blocks); "
                          f"block-by-block methods: {', '.join(allowed)}")
    if method is not None:
        refusal = method_memory(method, spec.options, spec.calibration_windows).block_mode_refusal
        if refusal is not None:
            raise InvalidSpec(refusal)


def spec_plan(
    spec: Any, cfg: dict[str, Any], *, device: str, baseline: int = DEFAULT_BASELINE, devices: Devices | None = None,
) -> MemoryPlan:
    """The plan a job spec runs with (its budgets and `execution`; `devices`: the GPUs it may spread over), or
    InvalidSpec when it cannot fit or its mode cannot run it. `auto` never spreads a job that multi-device mode
    cannot run: it chooses as on one GPU."""
    if spec.execution == "auto" and multi_device_refusal(spec) is not None:
        devices = None
    plan = choose_mode(cfg, job_workload(spec, cfg, device), execution=spec.execution,
                       host_budget=spec.max_host_memory, device_budget=spec.max_device_memory, baseline=baseline,
                       devices=devices)
    if plan.mode == "block-by-block":
        check_block_mode(spec)
    if plan.mode == "multi-device":
        check_multi_device(spec)
    return plan

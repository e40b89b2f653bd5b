"""What a heal holds at its peak (torch-free: the memory plan counts it, twossp_core/plan/memory.py).

The heal runs after pruning and evaluation (twossp_core/pipeline.py `heal_pruned`, the loop in
twossp_core/heal/loop.py), so the job's peak is the larger of the pruning phase's and the heal phase's. At the heal's
peak, one micro batch has run forward and its backward pass is running; the memory holds:

- the student (the pruned model). Its size is estimated from the target sparsity: the kept fraction of the block
  parameters is `1 - sparsity` plus one block (no method is further from its target than one whole block: block
  removal rounds to whole blocks, the others are finer), the dense size for a method that declares its pruned
  blocks unbounded by the sparsity (SliceGPT: its target is a fraction of the hidden size, and its shortcut
  matrices add parameters; MethodMemory.sized_by_sparsity) and for jobs without a sparsity. Full fine-tuning
  holds per parameter: the float32 weight (plus the job-dtype weight it was cast from in bfloat16/float16, an
  upper bound for the moment of the cast), its float32 gradient and AdamW's two float32 states. LoRA holds the
  student in the job's dtype plus the adapters: rank x (in + out) per linear layer of the blocks (every one, at
  their dense widths: 11 x hidden + 3 x intermediate bounds in + out summed over a block's linears), float32, with
  their gradients and two AdamW states;
- the dense model when it is in memory: the kd teacher, which a single job loads again from the source once its
  own model was pruned in place (`dense_teacher`: while it loads, the mapped file and the copied tensors are both
  in the process, as at the job's first load), and the workspace's dense model of a sweep (it prunes copies);
- the tensors the backward pass saves, float32 (full fine-tuning runs the model in float32; under autocast the
  norms and softmaxes save float32 too): measured on Llama blocks with SDPA attention, at most
  14 x hidden + 5 x intermediate values per token per block, at the dense widths of every block. With gradient
  checkpointing each block keeps its input only, and one block's saved tensors exist again while it recomputes.
  LoRA saves each adapter's rank-wide intermediate besides. Then the backward pass's transient tensors, twice one
  block's saved tensors (measured: a LoRA backward, which sums two gradients per adapted linear, peaks above a
  full one's), and one block's attention scores (heads x seq_len^2 per window: SDPA's math path materialises
  them; its fused kernels do not);
- the float32 logits of the micro batch and their buffers: kd 8 x tokens x vocab (student and teacher logits,
  their temperature-scaled copies and log-softmaxes, the KL terms, the gradient), lm 5 x (logits, the shifted
  copy, the log-softmax, two gradients).

The heal's control (heal.control, twossp_core/pipeline.py `heal_control`) is a second heal phase, before pruning:
its student is a copy of the dense model (the whole model trains: kept 1.0), and the dense model stays in memory
beside it (the kd teacher, and in any case the model the job prunes next), so nothing is loaded again. The job's
heal peak is the larger of the two phases'.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from twossp_core.plan.shape import ModelShape

F32 = 4
FULL_STATES = 3 * F32  # float32 gradient + AdamW exp_avg + exp_avg_sq per trained parameter
SAVED_PER_HIDDEN, SAVED_PER_INTERMEDIATE = 14, 5  # values saved for backward per token per block (Llama, SDPA)
LORA_PER_HIDDEN, LORA_PER_INTERMEDIATE = 11, 3  # in + out summed over a block's linear layers, at most
LORA_LINEARS = 7  # linear layers per block (q, k, v, o, gate, up, down; Phi has 6)
BACKWARD_BLOCKS = 2  # the backward pass's transient tensors, in blocks' saved tensors
LOGIT_BUFFERS = {"kd": 8, "lm": 5}


@dataclass(frozen=True)
class HealWorkload:
    """The sizes of a heal."""

    loss: str  # "kd" or "lm"
    params: str  # "full" or "lora"
    micro_batch: int  # windows per forward pass
    seq_len: int
    gradient_checkpointing: bool = False
    lora_rank: int = 16
    kept: float = 1.0  # upper bound on the fraction of the block parameters the student keeps
    dense_held: bool = False  # the dense model is in memory during the heal (kd teacher, a sweep's model)
    teacher_loaded: bool = False  # the kd teacher is loaded again while the student is held (a single job)
    control: bool = False  # the dense model is healed the same way too, before pruning (heal.control)


@dataclass(frozen=True)
class HealPhase:
    """The heal phase's tensors (bytes), at its training peak and while the teacher loads."""

    student: int  # weights, gradients, optimizer states (LoRA: the frozen weights and the adapters' three)
    teacher: int  # the dense model, when it is held
    activations: int  # saved for backward, one block's transient tensors and attention scores
    logits: int
    loading: int  # while the teacher loads: the student's weights and the load of the dense model

    @property
    def training(self) -> int:
        return self.student + self.teacher + self.activations + self.logits

    @property
    def peak(self) -> int:
        return max(self.training, self.loading)


def kept_fraction(spec: Any, blocks: int, dense_student: bool) -> float:
    """Upper bound on the fraction of block parameters a pruned student keeps (module docstring); `dense_student`:
    a method of the job does not bound its pruned blocks by the sparsity."""
    pruning = spec.pruning()
    if not pruning.sparsities or dense_student:
        return 1.0
    return min(1.0, 1.0 - min(pruning.sparsities) + 1.0 / max(blocks, 1))


def heal_workload(
    spec: Any, seq_len: int, blocks: int, context: int | None, *, dense_student: bool
) -> HealWorkload | None:
    """The heal of a job spec (None without one); `seq_len` is the job's, capped by `context`; `dense_student`: see
    kept_fraction."""
    config = getattr(spec, "heal", None)
    if config is None or not (hasattr(spec, "method") or hasattr(spec, "methods")):  # evaluations never heal
        return None
    heal_seq = config.seq_len or seq_len
    if context:
        heal_seq = min(heal_seq, context)
    sweep = hasattr(spec, "methods")
    return HealWorkload(
        loss=config.loss, params=config.params, micro_batch=config.micro_batch_size or config.batch_size,
        seq_len=heal_seq, gradient_checkpointing=config.gradient_checkpointing, lora_rank=config.lora_rank,
        kept=kept_fraction(spec, blocks, dense_student), dense_held=config.loss == "kd" or sweep,
        teacher_loaded=config.loss == "kd" and not sweep, control=bool(config.control),
    )


def heal_phases(shape: ModelShape, heal: HealWorkload, item: int, load_factor: float) -> list[HealPhase]:
    """The heal phases of a job: the pruned model's heal, and the control's when it has one (module docstring)."""
    phases = [heal_phase(shape, heal, item, load_factor)]
    if heal.control:
        control = replace(heal, kept=1.0, dense_held=True, teacher_loaded=False, control=False)
        phases.append(heal_phase(shape, control, item, load_factor))
    return phases


def heal_phase(shape: ModelShape, heal: HealWorkload, item: int, load_factor: float) -> HealPhase:
    """The heal's tensors for a model of `shape` held in `item` bytes per value (the job's dtype)."""
    student_params = shape.resident_params + int(heal.kept * shape.blocks * shape.block_params)
    if heal.params == "full":
        per_param = F32 + FULL_STATES + (item if item != F32 else 0)
        student = student_params * per_param
    else:
        adapters = shape.blocks * heal.lora_rank * (LORA_PER_HIDDEN * shape.hidden
                                                    + LORA_PER_INTERMEDIATE * shape.intermediate)
        student = student_params * item + adapters * (F32 + FULL_STATES)
    dense = shape.total_params * item
    tokens = heal.micro_batch * heal.seq_len
    per_block = tokens * (SAVED_PER_HIDDEN * shape.hidden + SAVED_PER_INTERMEDIATE * shape.intermediate) * F32
    if heal.gradient_checkpointing:
        saved = shape.blocks * tokens * shape.hidden * F32 + per_block
    else:
        saved = shape.blocks * per_block
    saved += 4 * tokens * shape.hidden * F32  # the embeddings' output, the final norm's and the LM head's inputs
    if heal.params == "lora":
        saved += shape.blocks * LORA_LINEARS * tokens * heal.lora_rank * F32
    scores = heal.micro_batch * shape.heads * heal.seq_len * heal.seq_len * F32
    logits = LOGIT_BUFFERS[heal.loss] * tokens * shape.vocab * F32
    loading = student_params * item + int(load_factor * dense) if heal.teacher_loaded else 0
    return HealPhase(student=student, teacher=dense if heal.dense_held else 0,
                     activations=saved + BACKWARD_BLOCKS * per_block + scores, logits=logits, loading=loading)

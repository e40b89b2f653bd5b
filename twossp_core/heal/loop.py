"""The heal's training loop: the pruned model (student) learns from the dense model (teacher) on text.

Only the values of the remaining weights change: no module is added or removed, so shapes and parameter
counts stay those of the pruned model (LoRA adapters are merged back before returning). The teacher runs
under `torch.no_grad()` and is never modified. On a model held in bfloat16/float16, full fine-tuning trains
float32 master weights (cast back at the end) and both models run under autocast in the job's dtype.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from twossp_core.errors import HealDiverged
from twossp_core.heal.data import TokenStream
from twossp_core.plan.heal_config import HealConfig
from twossp_core.progress import Reporter

STAGE = "heal"
SMOOTHING = 10  # the reported `loss` is the mean of the last steps' losses


@dataclass
class HealResult:
    config: HealConfig
    steps: int
    tokens: int
    seconds: float
    losses: list[float] = field(default_factory=list)

    @property
    def final_loss(self) -> float:
        tail = self.losses[-SMOOTHING:]
        return sum(tail) / len(tail)

    def curve(self) -> list[list[float]]:
        """At most `curve_points` (step, loss) pairs, evenly spaced, first and last step included."""
        n = len(self.losses)
        points = min(n, self.config.curve_points)
        idx = sorted({round(i * (n - 1) / max(points - 1, 1)) for i in range(points)})
        return [[i + 1, self.losses[i]] for i in idx]

    def report(self) -> dict[str, Any]:
        return {
            "method": self.config.loss,
            "params": self.config.params,
            "loss": self.final_loss,
            "first_loss": self.losses[0],
            "steps": self.steps,
            "tokens": self.tokens,
            "lr": self.config.lr,
            "seconds": self.seconds,
            "loss_curve": self.curve(),
            "options": self.config.model_dump(),
        }


def lr_factor(config: HealConfig, step: int, steps: int) -> float:
    """Learning rate of step `step` (0-based) as a fraction of the peak."""
    if config.schedule == "constant":
        return 1.0
    warm = int(config.warmup * steps) if config.schedule == "onecycle" else 0
    if step < warm:
        return (step + 1) / (warm + 1)
    progress = (step - warm) / max(steps - warm - 1, 1)
    low = config.final_lr_ratio
    return low + (1.0 - low) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def _logits(model: Any, input_ids: torch.Tensor) -> torch.Tensor:
    return model(input_ids=input_ids, use_cache=False).logits


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher || student) per token at a temperature, scaled by T^2 (gradients comparable across T)."""
    t = temperature
    s = F.log_softmax(student_logits.float() / t, dim=-1).flatten(0, -2)
    p = F.log_softmax(teacher_logits.float() / t, dim=-1).flatten(0, -2)
    return F.kl_div(s, p, log_target=True, reduction="batchmean") * (t * t)


def lm_loss(student_logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    logits = student_logits[:, :-1].float().flatten(0, 1)
    return F.cross_entropy(logits, input_ids[:, 1:].flatten())


def heal(
    student: Any,
    teacher: Any | None,
    stream: TokenStream,
    config: HealConfig,
    *,
    seed: int,
    reporter: Reporter,
) -> tuple[Any, HealResult]:
    """Train `student` for config.steps (or config.tokens); returns the healed model (the same object for full
    fine-tuning, the merged base model for LoRA) and what happened."""
    if config.loss == "kd" and teacher is None:
        raise ValueError("a kd heal needs the dense model as teacher")
    if config.lr is None:
        raise ValueError("the heal's learning rate is not set: HealConfig.for_model chooses it for the model")
    start = time.perf_counter()
    steps = config.total_steps(stream.seq_len)
    device = next(student.parameters()).device
    job_dtype = next(student.parameters()).dtype
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    autocast = (
        torch.autocast(device_type=device.type, dtype=job_dtype) if job_dtype != torch.float32 else nullcontext()
    )

    was_training = student.training
    if config.gradient_checkpointing:
        student.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if config.params == "lora":
        from twossp_core.heal.lora import wrap_lora

        model = wrap_lora(student, config)
    else:
        model = student.float() if job_dtype != torch.float32 else student
        for p in model.parameters():
            p.requires_grad_(True)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(config, s, steps))
    micro = config.micro_batch_size or config.batch_size
    if teacher is not None:
        teacher.eval()
    model.train()

    result = HealResult(config=config, steps=steps, tokens=steps * config.batch_size * stream.seq_len, seconds=0.0)
    try:
        for step in range(steps):
            reporter.checkpoint()
            batch = stream.batch(config.batch_size, generator).to(device)
            total = 0.0
            for chunk in batch.split(micro):
                with autocast:
                    logits = _logits(model, chunk)
                    if config.loss == "kd":
                        with torch.no_grad():
                            target = _logits(teacher, chunk)
                        loss = kd_loss(logits, target, config.temperature)
                    else:
                        loss = lm_loss(logits, chunk)
                (loss * (chunk.shape[0] / batch.shape[0])).backward()
                total += float(loss.detach()) * chunk.shape[0] / batch.shape[0]
            if not math.isfinite(total):
                raise HealDiverged(
                    f"heal loss became {total} at step {step + 1}/{steps}; lower the learning rate (lr={config.lr})"
                )
            if config.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(trainable, config.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            result.losses.append(total)
            reporter.update(STAGE, (step + 1) / steps, f"step {step + 1}/{steps} loss {total:.4f}")
    finally:
        optimizer.zero_grad(set_to_none=True)
        del optimizer
    model.train(was_training)
    if config.gradient_checkpointing:
        student.gradient_checkpointing_disable()
    if config.params == "lora":
        from twossp_core.heal.lora import merge_lora

        healed = merge_lora(model)
    else:
        healed = model.to(job_dtype) if job_dtype != torch.float32 else model
    for p in healed.parameters():
        p.requires_grad_(False)
    result.seconds = time.perf_counter() - start
    return healed, result

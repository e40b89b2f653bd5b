"""Zero-shot accuracy through lm-eval-harness (optional extra: `pip install 'twossp[zeroshot]'`).

The paper's six tasks are the default. lm-eval fetches task data from the Hugging Face hub, so this needs
network access; the in-memory model (dense or pruned) is evaluated directly, no re-loading.
"""

from __future__ import annotations

from typing import Any

from twossp_core.errors import InvalidSpec

PAPER_TASKS = ("arc_easy", "arc_challenge", "hellaswag", "piqa", "winogrande", "mmlu")


def require_lm_eval() -> None:
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise InvalidSpec("zero-shot tasks need lm-eval-harness: pip install 'twossp[zeroshot]'") from None


def zero_shot(model: Any, tokenizer: Any, tasks: list[str], *, batch_size: int = 8,
              limit: int | None = None) -> dict[str, float]:
    """Accuracy per task (acc_norm where the task reports it, else acc)."""
    require_lm_eval()
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    device = str(next(model.parameters()).device)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=device)
    results = simple_evaluate(model=lm, tasks=list(tasks), num_fewshot=0, limit=limit, log_samples=False)
    scores: dict[str, float] = {}
    for task, metrics in (results or {}).get("results", {}).items():
        for key in ("acc_norm,none", "acc,none"):
            if key in metrics:
                scores[task] = float(metrics[key])
                break
    return scores

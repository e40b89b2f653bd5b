"""`twossp eval` (alias `evaluate`): evaluate any model: perplexity, throughput, zero-shot tasks."""

from __future__ import annotations

import argparse
import json
from typing import Any

from pydantic import ValidationError

from twossp_core.cli.options import add_data_arguments, add_task_arguments, memory_fields, task_data, task_fields
from twossp_core.cli.running import StageBars
from twossp_core.cli.summary import spread_text
from twossp_core.errors import InvalidSpec
from twossp_core.evaluation.zeroshot.summary import summary_lines
from twossp_core.plan.schema import format_validation_error, validation_problems
from twossp_core.plan.spec import JobSpecBase
from twossp_core.progress import Reporter


def cmd_eval(args: argparse.Namespace) -> int:
    from twossp_core.pipeline import prepare  # imports torch: only when a run starts

    data: dict[str, Any] = {
        "model": args.model, "doc_separator": args.doc_separator, "seq_len": args.seq_len,
        "eval_windows": args.eval_windows, "dtype": args.dtype, "device": args.device,
        "measure_throughput": not args.no_throughput, **memory_fields(args), **task_fields(args),
    }
    if args.eval is not None:
        data["eval"] = args.eval
    elif args.tasks:  # zero-shot tasks alone: no perplexity, and no text window to time a forward pass on
        data["eval"], data["measure_throughput"] = [], False
    try:
        spec = JobSpecBase.model_validate(data)  # evaluation only: the calibration fields go unused
    except ValidationError as exc:
        raise InvalidSpec(format_validation_error(exc), parts=validation_problems(exc)) from None
    if not spec.eval and not spec.tasks:
        raise InvalidSpec("eval needs at least one --eval source or --tasks")
    bars = StageBars(enabled=not args.no_progress)
    try:
        ws = prepare(spec.with_task_data(task_data(args)), Reporter(bars), with_calibration=False)
    finally:
        bars.close()
    result = {
        "model": args.model,
        **({"source": ws.source} if ws.source else {}),
        "seq_len": ws.seq_len,
        "perplexity": [{"dataset": k, "perplexity": v} for k, v in ws.dense_perplexity.items()],
        "throughput_tokens_per_s": ws.dense_throughput.median if ws.dense_throughput else None,
        "throughput_spread": ws.dense_throughput.as_dict() if ws.dense_throughput else None,
        "params": ws.dense_params,
        "memory": {"mode": ws.memory_plan.mode if ws.memory_plan else None,
                   "plan": ws.memory_plan.as_dict() if ws.memory_plan else None},
    }
    if ws.zero_shot_tasks:
        from twossp_core.evaluation.zeroshot.evaluate import zero_shot_report  # imports torch (the scoring)

        result["zero_shot"] = zero_shot_report(ws.zero_shot_tasks, spec.task_limit, {"dense": ws.dense_zero_shot})
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        if "zero_shot" in result:
            print("\n".join(summary_lines(result["zero_shot"])))
        for row in result["perplexity"]:
            print(f"perplexity {row['dataset']}: {row['perplexity']:.3f}")
        if ws.dense_throughput:
            tp = ws.dense_throughput
            print(f"throughput: {tp.median:.0f} tokens/s (median of {tp.runs} runs{spread_text(tp.as_dict())})")
        print(f"parameters: blocks {ws.dense_params['blocks']:,}, total {ws.dense_params['total']:,}")
    return 0


def register(sub: Any) -> None:
    e = sub.add_parser("eval", aliases=["evaluate"], help="evaluate any model: perplexity, throughput, zero-shot tasks")
    e.add_argument("--model", required=True, help="Hugging Face hub id, local model directory or .gguf file")
    add_task_arguments(e)
    add_data_arguments(e, calibration=False)
    e.set_defaults(func=cmd_eval)

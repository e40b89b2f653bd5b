"""Zero-shot scoring throughput: twossp's scorer against lm-eval-harness's HF backend, same model, same items.

    .venv/bin/python bench/zeroshot.py [--model DIR] [--limit N] [--tasks paper] [--batch-sizes 8,32]
                                       [--threads 1] [--device cpu|cuda] [--out bench/results/zeroshot.json]

Both sides score the same (context, continuation) requests, built from the local task files (TWOSSP_TEST_DATA or
../shared/data; HellaSwag as the original-schema rows the test builds from the text extraction, so lm-eval can read
it): `twossp` is Encoder + packed log-likelihoods (tokenization included), `lm-eval` is HFLM.loglikelihood on
Instances of the same strings (tokenization included), at every --batch-sizes value. Task by task, the order
alternates (lm-eval, twossp, twossp, lm-eval), the minimum of two runs is kept and the ratio is against the fastest
lm-eval batch size; "all tasks" is the total items over the total of those times (MMLU's 57 subjects make it most
of the items), and the geometric mean of the per-task ratios weighs the tasks alike. Per-request log-likelihoods are
compared (max |difference|) and the accuracies must be identical. Items/s counts questions (MMLU: every subject's
items). Nothing here asserts a timing.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch

from twossp_core.example_data import example_data_dir

REPO = Path(__file__).resolve().parents[1]


def data_dir() -> Path:
    return example_data_dir(REPO, "TWOSSP_TEST_DATA")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=str(data_dir() / "models" / "c4llama-8l"))
    parser.add_argument("--tasks", default="paper")
    parser.add_argument("--limit", type=int, default=40, help="items per task (per MMLU subject)")
    parser.add_argument("--batch-sizes", default="8,32", help="lm-eval batch sizes tried")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "zeroshot.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from twossp_core.evaluation.zeroshot.evaluate import prepare_tasks
    from twossp_core.evaluation.zeroshot.metrics import accuracies
    from twossp_core.evaluation.zeroshot.reference import hellaswag_rows_from_extraction
    from twossp_core.evaluation.zeroshot.scoring import Encoder, item_segments, loglikelihoods, max_length
    from twossp_core.evaluation.zeroshot.sources import TaskData
    from twossp_core.models.registry import adapter_for
    from twossp_core.plan.tasks import parse_tasks

    tasks = parse_tasks(args.tasks)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).to(args.device).eval()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    work = Path(tempfile.mkdtemp())
    (work / "hellaswag").mkdir()
    rows = hellaswag_rows_from_extraction(data_dir() / "tasks" / "hellaswag" / "hellaswag_val_full.txt.bz2", args.limit)
    (work / "hellaswag" / "hellaswag_val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    prepared = prepare_tasks(tokenizer, model.config, dict.fromkeys(tasks, args.limit),
                             TaskData(root=data_dir() / "tasks", paths={"hellaswag": work / "hellaswag"}))
    adapter = adapter_for(model)
    lm_by_size = {b: HFLM(pretrained=model, tokenizer=tokenizer, batch_size=b, device=args.device)
                  for b in (int(x) for x in args.batch_sizes.split(","))}
    context = max_length(model.config, tokenizer)

    def sync() -> None:
        if args.device == "cuda":
            torch.cuda.synchronize()

    def ours(items: list) -> tuple[float, list[list[float]]]:
        t0 = time.perf_counter()
        segments = item_segments(Encoder(tokenizer), items, context)  # tokenization counted, as lm-eval's is
        values = loglikelihoods(adapter, segments)
        sync()
        return time.perf_counter() - t0, values

    def theirs(items: list, batch: int) -> tuple[float, list[list[float]]]:
        instances = [Instance(request_type="loglikelihood", doc={}, arguments=r, idx=0)
                     for item in items for r in item.requests]
        t0 = time.perf_counter()
        flat = [ll for ll, _ in lm_by_size[batch].loglikelihood(instances, disable_tqdm=True)]
        sync()
        seconds = time.perf_counter() - t0
        values, at = [], 0
        for item in items:
            values.append(flat[at : at + len(item.requests)])
            at += len(item.requests)
        return seconds, values

    load = os.getloadavg()
    per_task = {}
    with torch.no_grad():
        for p in prepared:
            items = p.task.items
            times: dict[str, list[float]] = {"twossp": [], **{f"lm-eval batch {b}": [] for b in lm_by_size}}
            for round_ in range(2):  # lm-eval, twossp, twossp, lm-eval
                for side in (["lm", "ours"] if round_ == 0 else ["ours", "lm"]):
                    if side == "ours":
                        seconds, mine = ours(items)
                        times["twossp"].append(seconds)
                    else:
                        for batch in lm_by_size:
                            seconds, reference = theirs(items, batch)
                            times[f"lm-eval batch {batch}"].append(seconds)
            best = {k: min(v) for k, v in times.items()}
            lm_key = min((k for k in best if k.startswith("lm-eval")), key=lambda k: best[k])
            diff = max(abs(a - b) for x, y in zip(mine, reference, strict=True) for a, b in zip(x, y, strict=True))
            per_task[p.task.name] = {
                "items": len(items), "requests": sum(len(i.requests) for i in items), "seconds": times,
                "twossp_items_per_s": len(items) / best["twossp"], "lm_eval_items_per_s": len(items) / best[lm_key],
                "lm_eval_best": lm_key, "speedup": best[lm_key] / best["twossp"],
                "max_abs_loglikelihood_difference": diff,
                "identical_accuracies": accuracies(items, mine, p.task.metrics)
                == accuracies(items, reference, p.task.metrics),
            }
            row = per_task[p.task.name]
            print(f"{p.task.name:<14} {len(items):5d} items  twossp {row['twossp_items_per_s']:7.1f}/s  "
                  f"{lm_key} {row['lm_eval_items_per_s']:7.1f}/s  x{row['speedup']:.2f}  "
                  f"max |ll diff| {diff:.1e}  same acc: {row['identical_accuracies']}", flush=True)
    total_items = sum(r["items"] for r in per_task.values())
    ours_s = sum(r["items"] / r["twossp_items_per_s"] for r in per_task.values())
    theirs_s = sum(r["items"] / r["lm_eval_items_per_s"] for r in per_task.values())
    result = {
        "model": args.model, "device": args.device, "threads": args.threads, "tasks": tasks, "limit": args.limit,
        "per_task": per_task,
        "all_tasks": {"items": total_items, "twossp_items_per_s": total_items / ours_s,
                      "lm_eval_items_per_s": total_items / theirs_s, "speedup": theirs_s / ours_s},
        "geometric_mean_speedup_over_tasks": math.exp(
            sum(math.log(r["speedup"]) for r in per_task.values()) / len(per_task)),
        "identical_accuracies": all(r["identical_accuracies"] for r in per_task.values()),
        "machine": {"cpu_count": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
                    "load_average_start": load, "load_average_end": os.getloadavg(),
                    "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    a = result["all_tasks"]
    print(f"all tasks      {a['items']:5d} items  twossp {a['twossp_items_per_s']:7.1f}/s  "
          f"lm-eval {a['lm_eval_items_per_s']:7.1f}/s  x{a['speedup']:.2f}")
    print(f"geometric mean of the per-task ratios: x{result['geometric_mean_speedup_over_tasks']:.2f}")

if __name__ == "__main__":
    main()

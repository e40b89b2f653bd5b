"""The flags the commands share and the request fields they become (the spelling of twossp_core/plan/spec.py)."""

from __future__ import annotations

import argparse
import json
import stat
from pathlib import Path
from typing import Any

from twossp_core.errors import InvalidSpec
from twossp_core.local_inputs import UnusablePath, stat_path
from twossp_core.plan.exports import FORMATS
from twossp_core.plan.tasks import TaskData, parse_task_limits, parse_tasks


def option_value(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise InvalidSpec(f"--option expects KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(raw)
    except json.JSONDecodeError:
        return key, raw


def add_data_arguments(p: argparse.ArgumentParser, *, calibration: bool = True) -> None:
    if calibration:
        p.add_argument("--calibration", nargs="+", action="extend", metavar="SRC",
                       help="calibration data: wikitext2 | c4 | fineweb-edu | PATH[:START:END] (default: c4)")
        p.add_argument("--calibration-windows", type=int, default=32, help="windows for stage 1 (default 32)")
    p.add_argument("--eval", nargs="+", action="extend", metavar="SRC",
                   help="evaluation data, same spelling (default: wikitext2; with --tasks, none)")
    p.add_argument("--eval-windows", type=int, default=None, help="cap on evaluation windows per dataset")
    p.add_argument("--doc-separator", default=None, help="split .txt files into documents on this string")
    p.add_argument("--seq-len", type=int, default=None, help="window length (default 2048, capped by context)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--no-throughput", action="store_true", help="skip the throughput measurement")
    p.add_argument("--max-device-memory", default=None, metavar="SIZE",
                   help="memory budget of the compute device (bytes, or 800MB, 0.8GB, 2GiB)")
    p.add_argument("--max-host-memory", default=None, metavar="SIZE",
                   help="budget of this process's peak RSS (bytes or a size); a model that does not fit in memory "
                   "runs block by block")
    p.add_argument("--execution", default="auto", choices=["auto", "in-memory", "block-by-block", "multi-device"],
                   help="auto (default): in memory unless that does not fit the budgets (with several GPUs: spread "
                   "over them when the first does not hold the model); block-by-block: one decoder block in memory "
                   "at a time, weights read from the safetensors files; multi-device: the model spread over the "
                   "visible GPUs")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument("--json", action="store_true", help="print the report as JSON on stdout")


def add_task_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tasks", default=None, metavar="TASKS",
                   help="zero-shot tasks scored as lm-eval-harness 0.4 scores them, comma-separated: winogrande, "
                   "arc_easy, arc_challenge, hellaswag, piqa, mmlu, or 'paper' for the six")
    p.add_argument("--task-limit", action="append", default=None, metavar="N|TASK=N",
                   help="score the first N items of each task (of each MMLU subject) in file order (default all); "
                   "TASK=N for one task, e.g. --task-limit 200,mmlu=5 (repeatable)")
    p.add_argument("--task-data", default=None, metavar="DIR",
                   help="task files, one folder per task (default $TWOSSP_TASK_DATA; a task without local files "
                   "is read from the Hugging Face Hub)")
    p.add_argument("--task-file", action="append", metavar="TASK=PATH",
                   help="a task's own file or folder, e.g. hellaswag=PATH/hellaswag_val.jsonl (repeatable)")


def task_data(args: argparse.Namespace) -> TaskData:
    """The task data the command reads (--task-data, else TWOSSP_TASK_DATA; --task-file), for the spec's
    `with_task_data`."""
    paths = {}
    for text in args.task_file or []:
        task, sep, path = text.partition("=")
        names = parse_tasks(task) if sep and path and task.strip() != "paper" else []
        if len(names) != 1:
            raise InvalidSpec(f"--task-file expects TASK=PATH for one task, got {text!r}")
        paths[names[0]] = Path(path).expanduser()
    root = Path(args.task_data).expanduser() if args.task_data else TaskData.from_environment().root
    return TaskData(root=root, paths=paths)


def add_export_argument(p: argparse.ArgumentParser, *, flag: str = "--export", default: str = "compact") -> None:
    p.add_argument(flag, default=default, choices=list(FORMATS),
                   help="; ".join(f"{name}: {entry.summary}" for name, entry in FORMATS.items())
                   + f" (default {default})")
    p.add_argument("--export-option", action="append", metavar="KEY=VALUE",
                   help="export format option, e.g. type=q8_0 for gguf (f32, f16, bf16, q8_0)")


def export_option_values(args: argparse.Namespace) -> dict[str, Any]:
    return dict(option_value(o) for o in (args.export_option or []))


def add_heal_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--heal", choices=["kd", "lm"], default=None,
                   help="train the pruned model afterwards: kd = distillation from the dense model, lm = next-token "
                   "loss on the text (docs/heal.md)")
    p.add_argument("--heal-option", action="append", metavar="KEY=VALUE",
                   help="heal option, e.g. steps=300, lr=1e-3, params=lora, data=PATH:0:500 (needs --heal)")
    p.add_argument("--heal-control", action=argparse.BooleanOptionalAction, default=None,
                   help="also heal the dense model the same way and report the healed model against it on every "
                   "set (default: on in a sweep, once for all its runs; off in a prune; needs --heal)")


def add_out_arguments(p: argparse.ArgumentParser, what: str) -> None:
    """--out (`what`: its help) and --overwrite."""
    p.add_argument("--out", required=True, help=what)
    p.add_argument("--overwrite", action="store_true", help="allow a non-empty --out directory")


def heal_field(args: argparse.Namespace) -> dict[str, Any] | None:
    """The request's `heal` object from --heal / --heal-option (None without --heal)."""
    options = [option_value(o) for o in (args.heal_option or [])]
    control = getattr(args, "heal_control", None)
    if args.heal is None:
        if options:
            raise InvalidSpec("--heal-option needs --heal kd|lm")
        if control is not None:
            raise InvalidSpec(f"--{'' if control else 'no-'}heal-control needs --heal kd|lm")
        return None
    heal: dict[str, Any] = {"loss": args.heal}
    if control is not None:
        heal["control"] = control
    for key, value in options:
        if key == "loss":
            raise InvalidSpec("the heal loss is given by --heal kd|lm, not --heal-option loss=...")
        if key in ("data", "lora_targets") and not isinstance(value, list):
            heal.setdefault(key, []).append(str(value))  # repeatable: data=SRC1 --heal-option data=SRC2
        else:
            heal[key] = value
    return heal


def job_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The request fields `prune` and `sweep` share (model, data options, device, dtype, seed)."""
    data: dict[str, Any] = {
        "model": args.model,
        "doc_separator": args.doc_separator,
        "seq_len": args.seq_len,
        "calibration_windows": args.calibration_windows,
        "eval_windows": args.eval_windows,
        "dtype": args.dtype,
        "device": args.device,
        "seed": args.seed,
        "measure_throughput": not args.no_throughput,
        "heal": heal_field(args),
        "export": args.export,
        "export_options": export_option_values(args),
        **memory_fields(args),
        **task_fields(args),
    }
    if args.calibration:
        data["calibration"] = args.calibration
    if args.eval is not None:
        data["eval"] = args.eval
    return data


def task_fields(args: argparse.Namespace) -> dict[str, Any]:
    every, per_task = parse_task_limits(args.task_limit)
    return {"tasks": args.tasks or [], "task_limit": every, "task_limits": per_task}


def memory_fields(args: argparse.Namespace) -> dict[str, Any]:
    return {"max_device_memory": args.max_device_memory, "max_host_memory": args.max_host_memory,
            "execution": args.execution}


def check_out_dir(out: Path, overwrite: bool) -> None:
    try:
        found = stat_path(out)
    except UnusablePath as exc:
        raise InvalidSpec(f"--out {out}: {exc}") from None
    if found is not None and not stat.S_ISDIR(found.st_mode):
        raise InvalidSpec(f"--out {out}: exists and is not a directory")
    if found is not None and any(out.iterdir()) and not overwrite:
        raise InvalidSpec(f"--out {out}: directory is not empty (pass --overwrite to replace its files)")

"""The `twossp` command line: prune, eval, and subcommands contributed through the `twossp.commands`
entry-point group (the service adds `serve` and `keys`)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from twossp_core.errors import InvalidSpec, TwosspError

EXIT_USER_ERROR = 2


class StageBars:
    """One progress bar per stage, on stderr."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.stage: str | None = None
        self.bar: Any = None

    def __call__(self, stage: str, fraction: float, detail: str | None = None) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        if stage != self.stage:
            self.close()
            self.stage = stage
            self.bar = tqdm(total=100, desc=f"{stage:<16}", unit="%", file=sys.stderr,
                            bar_format="{desc} {percentage:3.0f}%|{bar}| {elapsed}{postfix}")
        if detail is not None:
            self.bar.set_postfix_str(detail, refresh=False)
        percent = round(fraction * 100)
        if percent > self.bar.n:
            self.bar.update(percent - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


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
                   help="evaluation data, same spelling (default: wikitext2)")
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
    p.add_argument("--task-limit", type=int, default=None, metavar="N",
                   help="score the first N items of each task (of each MMLU subject) in file order (default all)")
    p.add_argument("--task-data", default=None, metavar="DIR",
                   help="task files, one folder per task (default $TWOSSP_TASK_DATA; a task without local files "
                   "is read from the Hugging Face Hub)")
    p.add_argument("--task-file", action="append", metavar="TASK=PATH",
                   help="a task's own file or folder, e.g. hellaswag=PATH/hellaswag_val.jsonl (repeatable)")


def task_data(args: argparse.Namespace) -> Any:
    """The task data the command reads (--task-data, --task-file), for `using_task_data`."""
    from twossp_core.evaluation.zeroshot.registry import parse_tasks
    from twossp_core.evaluation.zeroshot.sources import TaskData

    paths = {}
    for text in args.task_file or []:
        task, sep, path = text.partition("=")
        names = parse_tasks(task) if sep and path and task.strip() != "paper" else []
        if len(names) != 1:
            raise InvalidSpec(f"--task-file expects TASK=PATH for one task, got {text!r}")
        paths[names[0]] = Path(path).expanduser()
    return TaskData(root=Path(args.task_data).expanduser() if args.task_data else None, paths=paths)


def add_export_argument(p: argparse.ArgumentParser, *, flag: str = "--export", default: str = "compact") -> None:
    from twossp_core.export.registry import FORMATS

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
    return {"tasks": args.tasks or [], "task_limit": args.task_limit}


def memory_fields(args: argparse.Namespace) -> dict[str, Any]:
    return {"max_device_memory": args.max_device_memory, "max_host_memory": args.max_host_memory,
            "execution": args.execution}


def spec_from_args(args: argparse.Namespace, *, sparsity: float, method: str) -> Any:
    from twossp_core.spec import parse_spec

    options = dict(option_value(o) for o in (args.option or []))
    return parse_spec({**job_fields(args), "sparsity": sparsity, "method": method, "options": options})


def check_out_dir(out: Path, overwrite: bool) -> None:
    import stat

    from twossp_core.local_inputs import UnusablePath, stat_path

    try:
        found = stat_path(out)
    except UnusablePath as exc:
        raise InvalidSpec(f"--out {out}: {exc}") from None
    if found is not None and not stat.S_ISDIR(found.st_mode):
        raise InvalidSpec(f"--out {out}: exists and is not a directory")
    if found is not None and any(out.iterdir()) and not overwrite:
        raise InvalidSpec(f"--out {out}: directory is not empty (pass --overwrite to replace its files)")


def _spread(stats: dict[str, Any] | None) -> str:
    """` ±3%`: half the range of the per-run rates, relative to their median."""
    if not stats:
        return ""
    return f" ±{(stats['max'] - stats['min']) / 2 / stats['median'] * 100:.0f}%"


def format_summary(report: dict[str, Any]) -> str:
    p = report["params"]
    lines = [
        f"method {report['method']}  sparsity target {report['sparsity_target']:.4f}  "
        f"achieved {report['sparsity_achieved']:.4f}",
        f"block params {p['blocks_before']:,} -> {p['blocks_after']:,}   "
        f"total {p['total_before']:,} -> {p['total_after']:,}",
    ]
    if report.get("removed_attention"):
        lines.append(f"removed attention blocks: {report['removed_attention']}")
    if report.get("removed_mlp"):
        lines.append(f"removed FFN blocks: {report['removed_mlp']}")
    if report.get("removed_blocks"):
        lines.append(f"removed blocks: {report['removed_blocks']}")
    if report.get("kept_ffn_neurons") is not None:
        lines.append(f"kept FFN neurons per block: {report['kept_ffn_neurons']}")
    for row in report["perplexity"]:
        healed = f" -> healed {row['healed']:.3f}" if "healed" in row else ""
        if row.get("dense_healed"):
            healed += (f" (dense healed the same way {row['dense_healed']:.3f}: "
                       f"healed/control x{row['healed'] / row['dense_healed']:.3f})")
        domain = f" [{row['domain']}]" if row.get("domain") else ""
        lines.append(f"perplexity {row['dataset']}{domain}: dense {row['dense']:.3f} -> pruned {row['pruned']:.3f}"
                     f"{healed}")
    held_out = report.get("held_out")
    if held_out:
        healed_ratio = f" -> healed x{held_out['healed_ratio']:.3f}" if held_out.get("healed_ratio") else ""
        lines.append(f"held-out summary (geometric mean of pruned/dense perplexity over {len(held_out['datasets'])} "
                     f"set{'s' if len(held_out['datasets']) != 1 else ''}): x{held_out['ratio']:.3f}{healed_ratio}")
    if "heal" in report:
        h = report["heal"]
        lines.append(f"heal {h['method']} ({h['params']}): {h['steps']} steps, {h['tokens']:,} tokens, lr {h['lr']:g}, "
                     f"loss {h['first_loss']:.4f} -> {h['loss']:.4f}, {h['seconds']:.1f}s")
        if "control" in h:
            c = h["control"]
            lines.append(f"heal control (the dense model healed the same way): {c['steps']} steps, "
                         f"loss {c['first_loss']:.4f} -> {c['loss']:.4f}, {c['seconds']:.1f}s")
    if report.get("zero_shot"):
        from twossp_core.evaluation.zeroshot.summary import summary_lines

        lines += summary_lines(report["zero_shot"])
    tp = report.get("throughput_tokens_per_s") or {}
    if tp.get("dense") and tp.get("pruned"):
        from twossp_core.evaluation.throughput_check import unreliable_reasons

        spread = report.get("throughput_spread") or {}
        runs = min((s["runs"] for s in spread.values()), default=None)
        unreliable = unreliable_reasons(spread)
        measured = (f"dense {tp['dense']:.0f}{_spread(spread.get('dense'))} -> "
                    f"pruned {tp['pruned']:.0f}{_spread(spread.get('pruned'))}")
        if unreliable:  # the figures, but no speed-up: it would say more about the machine than the models
            lines.append(f"throughput tokens/s: not a reliable comparison ({'; '.join(unreliable)}); measured "
                         f"{measured}, no speed-up stated")
        else:
            lines.append(f"throughput tokens/s{f', median of {runs} runs' if runs else ''}: {measured} "
                         f"(x{tp['pruned'] / tp['dense']:.2f})")
    t = report["timings"]
    parts = [f"{k[:-2]} {v:.2f}s" for k, v in t.items() if k.endswith("_s")]
    lines.append("timings: " + ", ".join(parts))
    memory = report.get("memory")
    if memory:
        from twossp_core.memory import format_size

        measured = memory["measured"]
        line = f"memory: {memory['mode']}, peak RSS {format_size(measured['host_peak_rss'])}"
        if measured.get("device_peak_allocated") is not None:
            line += f", device peak {format_size(measured['device_peak_allocated'])}"
        lines.append(line + f" (planned {format_size(memory['plan']['host_peak'])})")
    return "\n".join(lines)


def run_into_out_dir(args: argparse.Namespace, run: Callable[..., dict[str, Any]], spec: Any) -> dict[str, Any]:
    """Check --out, then run a job (run_prune or run_sweep) into it with progress bars."""
    out = Path(args.out)
    check_out_dir(out, args.overwrite)
    bars = StageBars(enabled=not args.no_progress)
    from twossp_core.evaluation.zeroshot.sources import using_task_data

    try:
        with using_task_data(task_data(args)):
            return run(spec, out, progress=bars)
    finally:
        bars.close()


def cmd_prune(args: argparse.Namespace) -> int:
    from twossp_core.pipeline import run_prune

    spec = spec_from_args(args, sparsity=args.sparsity, method=args.method)
    out = Path(args.out)
    report = run_into_out_dir(args, run_prune, spec)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_summary(report))
        print(f"pruned model and report.json written to {out}")
    for warning in report.get("warnings", []):
        print(f"twossp: warning: {warning}", file=sys.stderr)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from twossp_core.pipeline import prepare
    from twossp_core.progress import Reporter
    from twossp_core.spec import JobSpecBase, format_validation_error

    data: dict[str, Any] = {
        "model": args.model, "doc_separator": args.doc_separator, "seq_len": args.seq_len,
        "eval_windows": args.eval_windows, "dtype": args.dtype, "device": args.device,
        "measure_throughput": not args.no_throughput, **memory_fields(args), **task_fields(args),
    }
    if args.eval is not None:
        data["eval"] = args.eval
    try:
        spec = JobSpecBase.model_validate(data)  # evaluation only: the calibration fields go unused
    except ValidationError as exc:
        raise InvalidSpec(format_validation_error(exc)) from None
    if not spec.eval:
        raise InvalidSpec("eval needs at least one --eval source")
    from twossp_core.evaluation.zeroshot.sources import using_task_data

    bars = StageBars(enabled=not args.no_progress)
    try:
        with using_task_data(task_data(args)):
            ws = prepare(spec, Reporter(bars), with_calibration=False)
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
        from twossp_core.evaluation.zeroshot.evaluate import zero_shot_report

        result["zero_shot"] = zero_shot_report(ws.zero_shot_tasks, spec.task_limit, {"dense": ws.dense_zero_shot})
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        if "zero_shot" in result:
            from twossp_core.evaluation.zeroshot.summary import summary_lines

            print("\n".join(summary_lines(result["zero_shot"])))
        for row in result["perplexity"]:
            print(f"perplexity {row['dataset']}: {row['perplexity']:.3f}")
        if ws.dense_throughput:
            tp = ws.dense_throughput
            print(f"throughput: {tp.median:.0f} tokens/s (median of {tp.runs} runs{_spread(tp.as_dict())})")
        print(f"parameters: blocks {ws.dense_params['blocks']:,}, total {ws.dense_params['total']:,}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from twossp_core import __version__
    from twossp_core.pruning.registry import method_names

    parser = argparse.ArgumentParser(prog="twossp", description="2SSP structured pruning for causal LMs")
    parser.add_argument("--version", action="version", version=f"twossp {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prune", help="prune a model to a target sparsity and save it")
    p.add_argument("--model", required=True, help="Hugging Face hub id, local model directory or .gguf file")
    p.add_argument("--sparsity", type=float, required=True, help="fraction of block parameters to remove")
    # checked with the request (one line naming the methods), not by argparse (which prints the usage)
    p.add_argument("--method", default="2ssp", help=f"one of {', '.join(method_names())} (default 2ssp)")
    p.add_argument("--option", action="append", metavar="KEY=VALUE",
                   help="method option, e.g. alpha=1.5, num_attention_to_prune=2, stage2_windows=1")
    p.add_argument("--seed", type=int, default=0)
    add_data_arguments(p)
    add_heal_arguments(p)
    add_task_arguments(p)
    p.add_argument("--out", required=True, help="output directory for the pruned model and report.json")
    p.add_argument("--overwrite", action="store_true", help="allow a non-empty --out directory")
    add_export_argument(p)
    p.set_defaults(func=cmd_prune)

    e = sub.add_parser("eval", aliases=["evaluate"], help="evaluate any model: perplexity, throughput, zero-shot tasks")
    e.add_argument("--model", required=True, help="Hugging Face hub id, local model directory or .gguf file")
    add_task_arguments(e)
    add_data_arguments(e, calibration=False)
    e.set_defaults(func=cmd_eval)

    from twossp_core.export_cli import register as register_export
    from twossp_core.gguf_cli import register as register_convert_gguf
    from twossp_core.sweep_cli import register as register_sweep

    register_sweep(sub)
    register_export(sub)
    register_convert_gguf(sub)

    for ep in entry_points(group="twossp.commands"):
        try:
            register: Callable[[Any], None] = ep.load()
        except ImportError as exc:  # an install older than the source tree: the other commands still work
            print(f"twossp: warning: command {ep.name!r} unavailable ({ep.value}: {exc}); reinstall twossp",
                  file=sys.stderr)
            continue
        register(sub)
    return parser


def show_notices() -> None:
    """The library's notices (the memory plan) go to stderr, before the work starts."""
    import logging

    logger = logging.getLogger("twossp")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    show_notices()
    try:
        return int(args.func(args) or 0)
    except TwosspError as exc:  # the library names the request's fields; say them as this command's flags
        from twossp_core.cli_terms import flags_of, in_cli_terms

        message = in_cli_terms(str(exc), flags_of(parser), sweep=args.command == "sweep")
        print(f"twossp: error: {message}", file=sys.stderr)
        return EXIT_USER_ERROR
    except OSError as exc:  # a path the file system refuses: no permission, a disk full, a loop in an output path
        print(f"twossp: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("twossp: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""The whole job: load → data → dense evaluation → prune → pruned evaluation → [heal → healed evaluation] →
export + report.json.

`run_prune` is what the CLI and the service workers call. `Workspace` holds what several runs on one model
can share (the dense model, tokenized data, dense measurements), which sweeps reuse.
"""

from __future__ import annotations

import copy
import gc
import json
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel

from twossp_core import __version__
from twossp_core.data.held_out import domains, held_out_summary
from twossp_core.data.windows import load_windows
from twossp_core.errors import DataError
from twossp_core.evaluation.perplexity import perplexity
from twossp_core.evaluation.throughput import Throughput, forward_throughput, measure_throughput
from twossp_core.evaluation.throughput_check import unreliable_reasons
from twossp_core.gguf_source import model_source
from twossp_core.models.base import ModelAdapter
from twossp_core.models.registry import adapter_for
from twossp_core.plan.memory import MemoryPlan
from twossp_core.plan.sources import ModelInput
from twossp_core.plan.spec import DEFAULT_SEQ_LEN, JobSpecBase, PruneSpec
from twossp_core.preflight import check_data, check_local_model, check_model
from twossp_core.progress import CancelFn, PrefixReporter, ProgressFn, Reporter
from twossp_core.pruning.base import PruneContext, PruneOutcome
from twossp_core.pruning.registry import method_class
from twossp_core.runtime.hub import require_hub_datasets
from twossp_core.runtime.loading import load_model
from twossp_core.runtime.modes import job_plan, load_for_plan, memory_report
from twossp_core.runtime.offload import is_offloaded, offloader_of
from twossp_core.runtime.peaks import PeakMeter

REPORT_FILE = "report.json"
EVAL_BATCH = 4  # windows per evaluation forward pass
SPARSITY_TOLERANCE = 0.01  # a larger gap between achieved and target sparsity is reported as a warning


@dataclass
class Workspace:
    spec: JobSpecBase
    model: Any
    tokenizer: Any
    seq_len: int
    calibration: torch.Tensor
    evals: dict[str, torch.Tensor]
    dense_perplexity: dict[str, float] = field(default_factory=dict)
    dense_throughput: Throughput | None = None
    dense_params: dict[str, int] = field(default_factory=dict)
    cache: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    model_is_dense: bool = True  # False once a run pruned `model` in place (then a heal reloads the teacher)
    memory_plan: MemoryPlan | None = None
    source: dict[str, Any] | None = None  # the GGUF file the model came from (gguf_source.model_source)
    control: HealRun | StoredControl | None = None  # the heal's control, once run (`heal_control`) or read
    zero_shot_tasks: list[Any] = field(default_factory=list)  # the spec's tasks, read and tokenized (PreparedTask)
    dense_zero_shot: dict[str, Any] = field(default_factory=dict)  # the dense model's scores per task
    shared: list[dict[str, Any]] = field(default_factory=list)  # the shared artifacts it read or stored (shared.py)

    @property
    def device(self) -> torch.device:
        return ws_device(self.model)

    def throughput_input(self) -> torch.Tensor:
        first = next(iter(self.evals.values()), self.calibration)
        return first[:1]


def context_length(config: Any) -> int | None:
    value = getattr(config, "max_position_embeddings", None)
    return int(value) if value else None


def effective_seq_len(spec: JobSpecBase, config: Any) -> int:
    limit = context_length(config)
    wanted = spec.seq_len or DEFAULT_SEQ_LEN
    return min(wanted, limit) if limit else wanted


def prepare(
    spec: JobSpecBase, reporter: Reporter, *, with_calibration: bool = True, plan_spec: Any | None = None,
    measure: bool = True,
) -> Workspace:
    """Load the model and data, and (`measure`) measure the dense model (`measure_dense`). The memory plan is
    `plan_spec`'s (a sweep's: it holds a pruned copy besides the dense model), by default `spec`'s."""
    check_local_model(spec.model_input())
    sources = [*(spec.calibration_sources() if with_calibration else []), *spec.eval_sources()]
    check_data(sources, spec.doc_separator)
    require_hub_datasets(sorted({s.name for s in sources if s.is_hub and not s.open_path.exists()}))
    task_data = spec.task_data()  # where the zero-shot tasks are read from, the same for the check and the reading
    if spec.tasks:
        from twossp_core.evaluation.zeroshot.sources import check_sources

        check_sources(spec.tasks, task_data)
    torch.manual_seed(spec.seed)
    t0 = time.perf_counter()
    plan = job_plan(plan_spec or spec)  # refuses a job that cannot fit its memory budgets before anything is loaded
    reporter.update("load", 0.0)
    model, tokenizer = load_for_plan(spec, plan)
    reporter.update("load", 1.0)
    t1 = time.perf_counter()
    seq_len = effective_seq_len(spec, model.config)

    reporter.checkpoint()
    reporter.update("calibration", 0.0)
    parts, remaining = [torch.empty((0, seq_len), dtype=torch.long)], spec.calibration_windows
    for source in spec.calibration_sources() if with_calibration else []:
        if remaining <= 0:
            break
        windows = load_windows(
            source, tokenizer, seq_len=seq_len, role="calibration", doc_separator=spec.doc_separator,
            max_windows=remaining, checkpoint=reporter.checkpoint,
        )
        parts.append(windows)
        remaining -= windows.shape[0]
    device = ws_device(model)
    calibration = torch.cat(parts).to(device)
    evals: dict[str, torch.Tensor] = {}
    for source in spec.eval_sources():
        if source.label in evals:
            raise DataError(f"evaluation source {source.label!r} is listed twice")
        evals[source.label] = load_windows(
            source, tokenizer, seq_len=seq_len, role="eval", doc_separator=spec.doc_separator,
            max_windows=spec.eval_windows, checkpoint=reporter.checkpoint,
        ).to(device)
    reporter.update("calibration", 1.0)
    t2 = time.perf_counter()

    ws = Workspace(spec=spec, model=model, tokenizer=tokenizer, seq_len=seq_len, calibration=calibration, evals=evals,
                   memory_plan=plan, source=model_source(spec.model_input()))
    adapter = adapter_for(model)
    ws.dense_params = {"blocks": adapter.blocks_params(), "total": adapter.total_params()}
    ws.timings.update(load_s=t1 - t0, data_s=t2 - t1)
    if spec.tasks:
        from twossp_core.evaluation.zeroshot.evaluate import prepare_tasks

        t3 = time.perf_counter()
        ws.zero_shot_tasks = prepare_tasks(tokenizer, model.config, spec.task_limit_map(), task_data)
        ws.timings["zero_shot_dense_s"] = time.perf_counter() - t3
    if measure:
        measure_dense(ws, reporter)
    return ws


def measure_dense(ws: Workspace, reporter: Reporter) -> None:
    """The dense model's measurements: perplexity on every evaluation set, throughput, zero-shot scores."""
    t0 = time.perf_counter()
    adapter = adapter_for(ws.model)
    ws.dense_perplexity = evaluate_perplexity(ws, adapter, "evaluate_dense", reporter)
    if measures_throughput(ws):
        ws.dense_throughput = forward_throughput(adapter, ws.throughput_input(), checkpoint=reporter.checkpoint)
    ws.timings["evaluate_dense_s"] = time.perf_counter() - t0
    if ws.zero_shot_tasks:
        from twossp_core.evaluation.zeroshot.evaluate import score_model

        t1 = time.perf_counter()
        ws.dense_zero_shot = score_model(ws.model, ws.zero_shot_tasks, reporter, "zero_shot_dense")
        ws.timings["zero_shot_dense_s"] = ws.timings.get("zero_shot_dense_s", 0.0) + time.perf_counter() - t1


def ws_device(model: Any) -> torch.device:
    offloader = offloader_of(model)
    return offloader.device if offloader is not None else next(model.parameters()).device


def measures_throughput(ws: Workspace) -> bool:
    """Throughput is measured in memory only: block by block, a forward pass times the weight reads."""
    return ws.spec.measure_throughput and not is_offloaded(adapter_for(ws.model))


def evaluate_perplexity(ws: Workspace, adapter: ModelAdapter, stage: str, reporter: Reporter) -> dict[str, float]:
    results: dict[str, float] = {}
    n = len(ws.evals)
    for i, (label, windows) in enumerate(ws.evals.items()):
        reporter.checkpoint()

        def batch_done(fraction: float, i: int = i) -> None:  # a cancel stops between evaluation batches
            reporter.update(stage, (i + fraction) / n)
            reporter.checkpoint()

        results[label] = perplexity(adapter, windows, batch_size=EVAL_BATCH, on_progress=batch_done)
    reporter.update(stage, 1.0)
    return results


def prune_model(
    ws: Workspace, method: str, sparsity: float, options: BaseModel, reporter: Reporter, *, copy_model: bool
) -> tuple[Any, PruneOutcome, float]:
    """Prune the workspace's model (or a copy of it) with the method's validated options (its config model, as the
    parsed spec holds them); returns (model, outcome, seconds)."""
    model = copy.deepcopy(ws.model) if copy_model else ws.model
    ws.model_is_dense = ws.model_is_dense and copy_model
    adapter = adapter_for(model)
    ctx = PruneContext(adapter=adapter, calibration=ws.calibration, reporter=reporter, cache=ws.cache)
    start = time.perf_counter()
    outcome = method_class(method)(options).prune(ctx, sparsity)
    return model, outcome, time.perf_counter() - start


def measure_pruned(
    ws: Workspace, model: Any, method: str, sparsity: float, options: BaseModel, outcome: PruneOutcome,
    prune_s: float, reporter: Reporter,
) -> dict[str, Any]:
    """Evaluate a pruned model and build its report (the keys of report.json)."""
    adapter = adapter_for(model)
    t0 = time.perf_counter()
    pruned_ppl = evaluate_perplexity(ws, adapter, "evaluate_pruned", reporter)
    throughput: dict[str, Throughput | None] = {"dense": None, "pruned": None}
    if measures_throughput(ws):
        throughput = measure_pruned_throughput(ws, model, adapter, reporter)
    blocks_after, total_after = adapter.blocks_params(), adapter.total_params()
    blocks_before = ws.dense_params["blocks"]
    achieved = 1.0 - blocks_after / blocks_before
    rows = perplexity_rows(ws, pruned_ppl)
    report = {
        "method": method,
        "model": ws.spec.model,
        **({"source": ws.source} if ws.source else {}),
        "sparsity_target": sparsity,
        "sparsity_achieved": achieved,
        "warnings": [*sparsity_warnings(sparsity, achieved), *overlap_warnings(rows)],
        "removed_attention": sorted(outcome.removed_attention),
        "removed_mlp": sorted(outcome.removed_mlp),
        "removed_blocks": sorted(outcome.removed_blocks),
        "kept_ffn_neurons": outcome.kept_ffn_neurons,
        "params": {
            "blocks_before": blocks_before,
            "blocks_after": blocks_after,
            "total_before": ws.dense_params["total"],
            "total_after": total_after,
        },
        "perplexity": rows,
        "held_out": held_out_summary(rows),
        "timings": {**outcome.timings, "prune_s": prune_s, "evaluate_pruned_s": time.perf_counter() - t0},
        "throughput_tokens_per_s": {key: tp.median if tp else None for key, tp in throughput.items()},
        "throughput_spread": {key: tp.as_dict() for key, tp in throughput.items() if tp},
        "throughput_unreliable": unreliable_reasons({key: tp.as_dict() for key, tp in throughput.items() if tp}),
        "options": options.model_dump(),
        "method_details": outcome.details,
        "data": {
            "seq_len": ws.seq_len,
            "calibration": ws.spec.calibration,
            "calibration_windows": int(ws.calibration.shape[0]),
            "eval": {label: int(w.shape[0]) for label, w in ws.evals.items()},
            "doc_separator": ws.spec.doc_separator,
        },
        "runtime": runtime_info(ws),
    }
    if ws.zero_shot_tasks:
        add_zero_shot(ws, model, report, "pruned", reporter)
    return report


def add_zero_shot(ws: Workspace, model: Any, report: dict[str, Any], label: str, reporter: Reporter) -> None:
    """Score `model` on the workspace's zero-shot items (the dense model's) and add it as `label` (pruned, healed)
    to the report's `zero_shot` block, with the time it took."""
    from twossp_core.evaluation.zeroshot.evaluate import add_scores, score_model, zero_shot_report

    t0 = time.perf_counter()
    scores = score_model(model, ws.zero_shot_tasks, reporter, f"zero_shot_{label}")
    if "zero_shot" in report:
        add_scores(report["zero_shot"], label, scores)
    else:
        report["zero_shot"] = zero_shot_report(ws.zero_shot_tasks, ws.spec.task_limit,
                                               {"dense": ws.dense_zero_shot, label: scores})
    report["timings"][f"zero_shot_{label}_s"] = time.perf_counter() - t0


def perplexity_rows(ws: Workspace, pruned: dict[str, float]) -> list[dict[str, Any]]:
    """The report's perplexity entries: dense and pruned per evaluation set, with the set's domain relative to the
    data the run fitted on (calibration, and a heal's data)."""
    domain = domains(ws.spec.eval_sources(), [*ws.spec.calibration_sources(), *ws.spec.heal_sources()])
    return [
        {"dataset": label, "domain": domain.get(label, "out-of-domain"), "dense": ws.dense_perplexity[label],
         "pruned": pruned[label]}
        for label in ws.evals
    ]


def dense_teacher(ws: Workspace) -> Any:
    """The dense model, for distillation: the workspace's own while it is still dense (a sweep prunes copies),
    else loaded again from the source (a single job pruned it in place), so it is never held twice."""
    if ws.model_is_dense:
        return ws.model
    model, _ = load_model(ws.spec.model_input(), dtype=ws.spec.dtype, device=ws.spec.device)
    return model


def heal_pruned(ws: Workspace, model: Any, report: dict[str, Any], reporter: Reporter) -> tuple[Any, list[float]]:
    """The heal stage: train the pruned model (ws.spec.heal), evaluate it again, and add to its report
    `healed` perplexities, a `heal` block and the timings; with the workspace's control (`heal_control`), each
    perplexity entry's `dense_healed` and the heal block's `control`. Returns the healed model (the same object
    for full fine-tuning) and the loss of every step (`write_loss_plot` draws them)."""
    from twossp_core.heal.plot import LOSS_PLOT

    run = heal_and_evaluate(ws, model, lambda: dense_teacher(ws), reporter)
    model, result, healed = run.model, run.result, run.perplexity
    for entry in report["perplexity"]:
        entry["healed"] = healed[entry["dataset"]]
        if ws.control is not None:
            entry["dense_healed"] = ws.control.perplexity[entry["dataset"]]
    if report.get("held_out"):
        report["held_out"]["healed_ratio"] = held_out_summary(report["perplexity"], key="healed")["ratio"]
    report.setdefault("warnings", []).extend(heal_warnings(report["perplexity"], result.config.lr))
    report["heal"] = {**result.report(), "data": [s.label for s in ws.spec.heal_sources()],
                      "data_tokens": run.data_tokens, "seq_len": run.seq_len, "plot": LOSS_PLOT}
    if ws.control is not None:
        report["heal"]["control"] = ws.control.report()
    report["timings"].update(run.timings)
    if ws.zero_shot_tasks:
        add_zero_shot(ws, model, report, "healed", reporter)
    return model, result.losses


@dataclass
class HealRun:
    """One heal and the evaluation of its model."""

    model: Any  # the healed model
    result: Any  # twossp_core.heal.loop.HealResult
    perplexity: dict[str, float]  # per evaluation set
    seq_len: int
    data_tokens: int
    timings: dict[str, float]  # heal_data_s, heal_s, evaluate_healed_s

    def report(self) -> dict[str, Any]:
        """The heal block's `control` (the other settings are the heal's own): its losses, steps and time."""
        heal = self.result.report()
        return {**{k: heal[k] for k in ("loss", "first_loss", "steps", "tokens", "seconds", "loss_curve")},
                "seq_len": self.seq_len, "data_tokens": self.data_tokens, "timings": self.timings}


@dataclass
class StoredControl:
    """A heal's control read back from where an earlier run stored it: its perplexities and its report."""

    perplexity: dict[str, float]
    summary: dict[str, Any]

    def report(self) -> dict[str, Any]:
        return self.summary


def heal_and_evaluate(ws: Workspace, student: Any, teacher: Callable[[], Any], reporter: Reporter) -> HealRun:
    """Train `student` with ws.spec.heal (a kd heal distills `teacher()`, called once the data is read) and
    evaluate it on every evaluation set, reporting the stages `heal_data`, `heal`, `evaluate_healed`."""
    from twossp_core.heal.data import load_stream
    from twossp_core.heal.loop import heal

    assert ws.spec.heal is not None
    config = ws.spec.heal.for_model(ws.dense_params["total"])  # a heal and its control: the same learning rate
    reporter.checkpoint()
    reporter.update("heal_data", 0.0)
    t0 = time.perf_counter()
    seq_len = config.seq_len or ws.seq_len
    limit = context_length(student.config)
    seq_len = min(seq_len, limit) if limit else seq_len
    steps = config.total_steps(seq_len)
    stream = load_stream(
        ws.spec.heal_sources(), ws.tokenizer, seq_len=seq_len, doc_separator=ws.spec.doc_separator,
        max_tokens=steps * config.batch_size * seq_len,
    )
    dense = teacher() if config.loss == "kd" else None
    reporter.update("heal_data", 1.0)
    params_before = adapter_for(student).total_params()
    seed = ws.spec.seed if config.seed is None else config.seed
    t1 = time.perf_counter()
    model, result = heal(student, dense, stream, config, seed=seed, reporter=reporter)
    del dense
    adapter = adapter_for(model)
    if adapter.total_params() != params_before:  # the heal only changes values; anything else is a bug
        raise RuntimeError(f"heal changed the parameter count: {params_before} -> {adapter.total_params()}")
    t2 = time.perf_counter()
    healed = evaluate_perplexity(ws, adapter, "evaluate_healed", reporter)
    timings = {"heal_data_s": t1 - t0, "heal_s": t2 - t1, "evaluate_healed_s": time.perf_counter() - t2}
    return HealRun(model, result, healed, seq_len, stream.num_tokens, timings)


def heal_control(ws: Workspace, reporter: Reporter) -> HealRun | StoredControl:
    """The heal's control (heal.control): a copy of the dense model healed with the same settings, data and seed
    (a kd heal distills the dense model into its own copy) and evaluated on every set, so that a healed model is
    judged against what the same heal does to the model it was pruned from. Run once per workspace, before
    anything is pruned (a sweep's runs share it: it does not depend on the method), under the stages
    `control/...`; the random state is restored afterwards, so the pruning is the same with or without it."""
    from twossp_core.plan.stages import CONTROL

    if ws.control is not None:
        return ws.control
    if not ws.model_is_dense:
        raise RuntimeError("the heal's control runs before the workspace's model is pruned")
    devices = [ws.device] if ws.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        run = heal_and_evaluate(ws, copy.deepcopy(ws.model), lambda: ws.model, PrefixReporter(reporter, CONTROL))
    run.model = None  # only its measurements are kept
    gc.collect()
    ws.control = run
    ws.timings.update({f"control_{k}": v for k, v in run.timings.items()})
    return run


def write_loss_plot(losses: list[float], report: dict[str, Any], out_dir: Path) -> None:
    """The heal's loss curve as out_dir/heal_loss.png (the report's heal.plot)."""
    from twossp_core.heal.plot import plot_loss

    heal = report["heal"]
    title = f"{report['method']} at {report['sparsity_target']:g}: heal ({heal['method']}, {heal['params']})"
    plot_loss(losses, Path(out_dir) / heal["plot"], title=title)


def sparsity_warnings(target: float, achieved: float) -> list[str]:
    """A warning when the achieved sparsity is more than SPARSITY_TOLERANCE away from the target."""
    gap = achieved - target
    if abs(gap) <= SPARSITY_TOLERANCE:
        return []
    side = "below" if gap < 0 else "above"
    return [f"achieved sparsity {achieved:.4f} is {abs(gap) * 100:.1f} points {side} the target {target:.4f}: "
            "the nearest this method reaches on this model"]


def overlap_warnings(rows: list[dict[str, Any]]) -> list[str]:
    """A warning for each evaluation set that shares documents with the data the run fitted on."""
    return [f"evaluation set {row['dataset']!r} overlaps the calibration data: its perplexity is not a held-out "
            "score" for row in rows if row.get("domain") == "overlaps-calibration"]


HEAL_WORSE_TOLERANCE = 0.01  # a heal is said to make a model worse on a set where it rose by more than 1 %


def heal_warnings(rows: list[dict[str, Any]], lr: float) -> list[str]:
    """Warnings when a heal made a model worse: the healed model more than HEAL_WORSE_TOLERANCE above the pruned
    one, or the control (the dense model healed the same way) above the dense one, on any evaluation set. Both mean
    these heal settings damage the model they train (most often a learning rate too high for its size), which a
    user must not miss; a rise within the tolerance is the noise of a short heal, not damage."""

    def worse(after: str, before: str) -> list[str]:
        return [f"{r['dataset']} {r[before]:.3f} -> {r[after]:.3f}" for r in rows
                if r.get(after) is not None and r.get(before) is not None
                and r[after] > r[before] * (1 + HEAL_WORSE_TOLERANCE)]

    warnings = []
    over = f"{HEAL_WORSE_TOLERANCE:.0%}".replace("%", " %")
    healed, control = worse("healed", "pruned"), worse("dense_healed", "dense")
    if healed:
        warnings.append(f"the heal raised the pruned model's perplexity by over {over} on {len(healed)} of {len(rows)} "
                        f"evaluation sets ({'; '.join(healed)}): the unhealed pruned model is better there; a lower "
                        f"heal.lr (this heal's: {lr:g}) or fewer steps may help")
    if control:
        warnings.append(f"the control heal raised the dense model's perplexity by over {over} on {len(control)} of "
                        f"{len(rows)} evaluation sets ({'; '.join(control)}): these heal settings (lr {lr:g}) damage "
                        "any model, not only the pruned one")
    return warnings


def measure_pruned_throughput(
    ws: Workspace, model: Any, adapter: ModelAdapter, reporter: Reporter
) -> dict[str, Throughput | None]:
    """Dense and pruned throughput on the same input: measured in turn now when the dense model is still at hand
    (sweeps prune a copy), else the pruned one now and the dense one from before pruning."""
    if ws.model_is_dense:
        both = measure_throughput(
            {"dense": adapter_for(ws.model), "pruned": adapter}, ws.throughput_input(), checkpoint=reporter.checkpoint
        )
        return {"dense": both["dense"], "pruned": both["pruned"]}
    pruned = forward_throughput(adapter, ws.throughput_input(), checkpoint=reporter.checkpoint)
    return {"dense": ws.dense_throughput, "pruned": pruned}


def runtime_info(ws: Workspace) -> dict[str, Any]:
    import transformers

    return {
        "device": str(ws.device),
        "dtype": ws.spec.dtype,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "twossp": __version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
    }


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)


METADATA_KEYS = (
    "method", "model", "sparsity_target", "sparsity_achieved", "removed_attention", "removed_mlp", "removed_blocks",
    "kept_ffn_neurons", "params", "perplexity", "held_out", "options", "data", "source", "zero_shot", "warnings",
)


def export_metadata(report: dict[str, Any]) -> dict[str, Any]:
    """What an export keeps about its run (config.json's `twossp` block, GGUF metadata, the model card)."""
    metadata = {key: report[key] for key in METADATA_KEYS if key in report}
    if "heal" in report:
        metadata["heal"] = {k: v for k, v in report["heal"].items() if k not in ("loss_curve", "plot")}
        if "control" in metadata["heal"]:
            metadata["heal"]["control"] = {k: v for k, v in metadata["heal"]["control"].items() if k != "loss_curve"}
    runtime = report.get("runtime") or {}
    metadata["versions"] = {k: runtime[k] for k in ("torch", "transformers", "twossp") if k in runtime}
    return metadata


def export_model(
    model: Any, tokenizer: Any, out_dir: Path, metadata: dict[str, Any], export: str, options: BaseModel | None = None,
    source: ModelInput | None = None,
) -> dict[str, Any]:
    """Save a pruned model in the requested export format with its validated options (the format's options model;
    None: its defaults); returns the report's `export` entry. `source`: the model it was pruned from (the
    metadata's `model`) with where it is opened (None: at that name)."""
    from twossp_core.export.registry import run_export

    return run_export(export, model, tokenizer, Path(out_dir), {**metadata, "export": export}, options, source)


def run_cell(
    ws: Workspace, cell: PruneSpec, reporter: Reporter, *, model_dir: Path | None, plot_dir: Path, copy_model: bool,
) -> tuple[dict[str, Any], Any]:
    """One cell on a prepared workspace: prune → measure → [heal] → [export]. A prune job is one cell; a sweep runs
    one per (method, sparsity) on a copy of the dense model (`copy_model`). The pruned (healed) model is exported
    into `model_dir` in the cell's format (None: not exported) and the heal's loss plot drawn into `plot_dir`.
    Returns the report (the keys of report.json) and the model; a target the method cannot reach raises
    InfeasibleTarget or UnsupportedModel."""
    options = cell.method_options()
    model, outcome, prune_s = prune_model(ws, cell.method, cell.sparsity, options, reporter, copy_model=copy_model)
    reporter.checkpoint()
    report = measure_pruned(ws, model, cell.method, cell.sparsity, options, outcome, prune_s, reporter)
    losses: list[float] = []
    if cell.heal is not None:
        model, losses = heal_pruned(ws, model, report, reporter)
    if model_dir is not None:
        reporter.checkpoint()
        reporter.update("export", 0.0)
        t_export = time.perf_counter()
        report["export"] = export_model(
            model, ws.tokenizer, model_dir, export_metadata(report), cell.export, cell.export_options,
            ws.spec.model_input(),
        )
        report["timings"]["export_s"] = time.perf_counter() - t_export
        reporter.update("export", 1.0)
    if losses:
        plot_dir.mkdir(parents=True, exist_ok=True)
        write_loss_plot(losses, report, plot_dir)
    return report, model


def run_prune(
    spec: PruneSpec,
    out_dir: Path,
    *,
    progress: ProgressFn | None = None,
    should_cancel: CancelFn | None = None,
) -> dict[str, Any]:
    """Run one pruning job end to end; writes the pruned model and report.json into out_dir."""
    reporter = Reporter(progress, should_cancel)
    start = time.perf_counter()
    check_model(spec)
    meter = PeakMeter("cpu" if spec.device == "cpu" or not torch.cuda.is_available() else "cuda")
    ws = prepare(spec, reporter)
    if spec.heal is not None and spec.heal.control:
        heal_control(ws, reporter)
    reporter.checkpoint()
    report, model = run_cell(ws, spec, reporter, model_dir=Path(out_dir), plot_dir=Path(out_dir), copy_model=False)
    report["timings"].update(ws.timings, total_s=time.perf_counter() - start)
    assert ws.memory_plan is not None
    report["memory"] = memory_report(spec, ws.memory_plan, meter, model)
    write_json_atomic(Path(out_dir) / REPORT_FILE, report)
    return report

"""What a pruning run is asked to do: the one request schema shared by the CLI, the API and the worker.

Torch-free on purpose, so the API can validate requests before anything is queued.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Self, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from twossp_core.errors import FieldProblem, InvalidSpec, joined_problems
from twossp_core.plan.exports import check_methods, export_options
from twossp_core.plan.heal_config import HealConfig
from twossp_core.plan.limits import (
    MAX_EVAL_WINDOWS,
    MAX_SEED,
    MAX_SEQ_LEN,
    MAX_SWEEP_MODELS,
    MAX_TASK_LIMIT,
    MAX_WINDOWS,
)
from twossp_core.plan.methods import method_config, method_names
from twossp_core.plan.problems import registry_problems
from twossp_core.plan.schema import OptionsObject, format_validation_error, validation_problems
from twossp_core.plan.sizes import parse_size
from twossp_core.plan.sources import DataSource, ModelInput
from twossp_core.plan.tasks import TASK_NAMES, TaskData, parse_tasks

DEFAULT_SEQ_LEN = 2048


@dataclass(frozen=True)
class Pruning:
    """What a job prunes with: each method with its options, and the target sparsities (one of each for a prune;
    a sweep's, which it runs pair by pair; none for an evaluation)."""

    options: dict[str, BaseModel]  # method name -> its validated options (its config model), in the job's order
    sparsities: list[float]

    @property
    def methods(self) -> list[str]:
        return list(self.options)


class JobSpecBase(BaseModel):
    """What every job on one model shares: the model, its data, precision, device and seed."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    # whether a heal also heals the dense model (heal.control) when the request leaves it null
    heal_control_default: ClassVar[bool] = False

    model: str = Field(min_length=1, max_length=4096, description="Hugging Face hub id or local model directory")
    calibration: list[str] = Field(default_factory=lambda: ["c4"], min_length=1, max_length=16)
    eval: list[str] = Field(default_factory=lambda: ["wikitext2"], max_length=16)
    doc_separator: str | None = Field(
        None, min_length=1, max_length=1000, description="splits a .txt file into documents (non-empty)"
    )
    seq_len: int | None = Field(
        None, ge=8, le=MAX_SEQ_LEN, description=f"window length; default {DEFAULT_SEQ_LEN}, capped by context"
    )
    calibration_windows: int = Field(32, ge=1, le=MAX_WINDOWS, description="windows used to score (stage 1)")
    eval_windows: int | None = Field(
        None, ge=1, le=MAX_EVAL_WINDOWS, description="cap on evaluation windows per dataset"
    )
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    seed: int = Field(0, ge=0, le=MAX_SEED, description="random seed (0 to 2**63-1)")
    measure_throughput: bool = True
    max_device_memory: int | None = Field(
        None, description="memory budget of the compute device in bytes (or a size such as 800MB, 0.8GB)"
    )
    max_host_memory: int | None = Field(
        None, description="budget of the process's host memory (peak RSS) in bytes (or a size such as 800MB)"
    )
    execution: Literal["auto", "in-memory", "block-by-block", "multi-device"] = Field(
        "auto",
        description="in-memory: the whole model on the device; block-by-block: one decoder block at a time, "
        "weights read from safetensors; multi-device: the whole model spread over the visible GPUs; auto: "
        "in-memory unless it does not fit the budgets (or, with several GPUs, the first GPU)",
    )
    export: str = Field(
        "compact",
        description="export format (twossp_core.plan.exports): compact (only what remains, with "
        "modeling_twossp.py; trust_remote_code), portable (the plain base architecture, removed submodules as "
        "zeros), gguf (one model.gguf for llama.cpp), decilm (DeciLM block_configs layout for vLLM)",
    )
    # the format's options model once parsed (plan/exports.py); a JSON object in requests and storage
    export_options: OptionsObject = Field(
        default_factory=dict, description="options of the export format, e.g. gguf: {\"type\": \"q8_0\"}"
    )
    heal: HealConfig | None = Field(
        None, description="train the pruned model after pruning (every run of a sweep); {} takes the defaults: "
        "distillation from the dense model (see docs/heal.md)",
    )
    tasks: list[str] = Field(
        default_factory=list, max_length=16,
        description="zero-shot tasks scored on the dense model and on every pruned (and healed) one, as "
        "lm-eval-harness 0.4 scores them: winogrande, arc_easy, arc_challenge, hellaswag, piqa, mmlu, or 'paper' for "
        "the six",
    )
    task_limit: int | None = Field(
        None, ge=1, le=MAX_TASK_LIMIT,
        description="score the first N items of each zero-shot task (of each MMLU subject), in file order; default all",
    )
    task_limits: dict[str, Annotated[int, Field(ge=1, le=MAX_TASK_LIMIT)]] = Field(
        default_factory=dict, max_length=len(TASK_NAMES),
        description="items for the named tasks, instead of task_limit, e.g. {\"mmlu\": 5}: the first 5 of each MMLU "
        "subject (each name one of tasks)",
    )
    # local input name (the model, a data file, a zero-shot task's file or folder) -> the path the job opens instead
    # (`with_opened`); never part of a request, its dump or a report
    _opened: Mapping[str, Path] = PrivateAttr(default_factory=dict)
    # where the job reads its zero-shot tasks (`with_task_data`; None: TWOSSP_TASK_DATA); never part of a request
    _task_data: TaskData | None = PrivateAttr(default=None)

    @field_validator("calibration", "eval")
    @classmethod
    def _parse_sources(cls, value: list[str], info: ValidationInfo) -> list[str]:
        for index, item in enumerate(value):
            try:
                DataSource.parse(item)
            except InvalidSpec as exc:
                raise exc.with_field(f"{info.field_name}.{index}") from None
        return value

    @field_validator("tasks", mode="before")
    @classmethod
    def _parse_tasks(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, str) and info.context and info.context.get("strict"):
            raise ValueError("must be a JSON array of task names, e.g. [\"piqa\", \"arc_easy\"] or [\"paper\"]")
        if not isinstance(value, str | list):
            return value
        try:
            return parse_tasks(value)
        except InvalidSpec as exc:
            raise ValueError(str(exc)) from None

    @field_validator("task_limits")
    @classmethod
    def _check_task_limits(cls, value: dict[str, int], info: ValidationInfo) -> dict[str, int]:
        tasks = info.data.get("tasks")
        if tasks is None:  # the tasks were refused: their own error says why
            return value
        for name in value:
            if name not in tasks:
                where = f"task_limits.{name}"
                known = f"the job's tasks are {', '.join(tasks)}" if tasks else "the job scores no task"
                reason = f"{name!r} is not a task of this job ({known})"
                raise InvalidSpec(f"{where}: {reason}", parts=[FieldProblem(where, f"{where}: {reason}", reason)])
        return value

    def task_limit_for(self, task: str) -> int | None:
        """How many items of `task` (of each MMLU subject) the job scores: its own limit, else task_limit (None:
        all)."""
        return self.task_limits.get(task, self.task_limit)

    def task_limit_map(self) -> dict[str, int | None]:
        """Each of the job's tasks with the items it scores (task_limit_for)."""
        return {task: self.task_limit_for(task) for task in self.tasks}

    @field_validator("max_device_memory", "max_host_memory", mode="before")
    @classmethod
    def _parse_size(cls, value: Any) -> int | None:
        if value is None:
            return None
        try:
            return parse_size(value)
        except InvalidSpec as exc:
            raise ValueError(str(exc)) from None

    def with_opened(self, opened: Mapping[str, Path]) -> Self:
        """This request with its local inputs read from other paths: `opened` maps the name of a model or data file
        to the path the job opens instead (the service's worker: the files it opened and checked). The request, its
        dump and everything a run reports keep the names."""
        spec = self.model_copy()
        spec._opened = dict(opened)
        return spec

    def with_task_data(self, data: TaskData) -> Self:
        """This request with its zero-shot tasks read from `data` (the CLI's --task-data and --task-file, the
        service's settings) instead of the default, the directory TWOSSP_TASK_DATA names. Like `with_opened`, it
        says only where files are read: the request, its dump and its reports are unchanged."""
        spec = self.model_copy()
        spec._task_data = data
        return spec

    def task_data(self) -> TaskData:
        """Where the job reads its zero-shot tasks (`with_task_data`; by default TWOSSP_TASK_DATA), with the paths
        it opens their files at (`with_opened`)."""
        data = self._task_data if self._task_data is not None else TaskData.from_environment()
        return data.opened_at(self._opened)

    def model_input(self, model: str | None = None) -> ModelInput:
        """The model (`model`, one of a sweep's models; by default `self.model`) with where the job opens it."""
        name = self.model if model is None else model
        return ModelInput(name, self._opened.get(name))

    def _source(self, text: str) -> DataSource:
        source = DataSource.parse(text)
        return source.opened_at(self._opened.get(source.name))

    def calibration_sources(self) -> list[DataSource]:
        return [self._source(s) for s in self.calibration]

    def eval_sources(self) -> list[DataSource]:
        return [self._source(s) for s in self.eval]

    def heal_sources(self) -> list[DataSource]:
        """What a heal trains on: its own `data`, or else the calibration sources (empty without a heal)."""
        if self.heal is None:
            return []
        return [self._source(s) for s in self.heal.data] if self.heal.data else self.calibration_sources()

    @model_validator(mode="after")
    def _check_export(self, info: ValidationInfo) -> JobSpecBase:
        self.export_options = export_options(self.export, self.export_options, strict=_strict(info))
        return self

    @model_validator(mode="after")
    def _resolve_heal_control(self) -> JobSpecBase:
        if self.heal is not None and self.heal.control is None:
            self.heal = self.heal.model_copy(update={"control": self.heal_control_default})
        return self

    def shared_fields(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in JobSpecBase.model_fields}

    def pruning(self) -> Pruning:
        """The methods and sparsities the job prunes with (none: an evaluation)."""
        return Pruning(options={}, sparsities=[])


class PruneSpec(JobSpecBase):
    """A request to prune one model to one target sparsity with one method."""

    sparsity: float = Field(gt=0.0, lt=1.0, description="fraction of transformer-block parameters to remove")
    method: str = Field("2ssp", description="pruning method name")
    # the method's config model once parsed (plan/methods.py); a JSON object in requests and storage
    options: OptionsObject = Field(default_factory=dict, description="method-specific options")

    @model_validator(mode="after")
    def _check_method(self, info: ValidationInfo) -> PruneSpec:
        self.options = method_config(self.method, self.options, strict=_strict(info))
        check_methods(self.export, [self.method])
        return self

    def method_options(self) -> BaseModel:
        """The method's validated options (its config model)."""
        return self.options  # type: ignore[return-value]  # a model once validated (_check_method)

    def pruning(self) -> Pruning:
        return Pruning(options={self.method: self.options}, sparsities=[self.sparsity])


class SweepSpec(JobSpecBase):
    """A request to compare methods x sparsities on one model (data and dense statistics shared)."""

    heal_control_default: ClassVar[bool] = True  # one control per sweep, shared by its runs

    methods: list[str] = Field(default_factory=lambda: ["all"], min_length=1,
                               description="method names, or ['all'] (also a comma-separated string)")
    sparsities: list[float] = Field(min_length=1, max_length=64, description="target sparsities, each in (0, 1)")
    # each method's config model once parsed; JSON objects in requests and storage
    options: dict[str, OptionsObject] = Field(default_factory=dict, description="per-method options")
    save_models: bool = Field(False, description="also export every pruned model under models/")
    models: list[str] = Field(
        default_factory=list, max_length=MAX_SWEEP_MODELS,
        description="several models to compare in one sweep (hub ids or local model directories; `model` may be left "
        "out and is then the first): every method and sparsity runs on each, and the comparison has a model column "
        "and one plot per model",
    )

    @model_validator(mode="before")
    @classmethod
    def _first_model(cls, data: Any) -> Any:
        """`model` left out of a request that names `models`: the first of them."""
        if isinstance(data, dict) and "model" not in data and isinstance(data.get("models"), list) and data["models"]:
            data = {**data, "model": data["models"][0]}
        return data

    @model_validator(mode="after")
    def _check_models(self) -> SweepSpec:
        models = list(dict.fromkeys(self.models))
        if models and self.model not in models:
            raise ValueError(f"model {self.model!r} is not one of models: leave it out, or list it there")
        if any(not m.strip() for m in models):
            raise ValueError("models: every model must be a non-empty hub id or path")
        # one model is the plain sweep; with several, `model` is the first
        self.models = models if len(models) > 1 else []
        if self.models:
            self.model = self.models[0]
        return self

    def model_list(self) -> list[str]:
        """The models the sweep runs on, in order."""
        return list(self.models) or [self.model]

    @field_validator("methods", mode="before")
    @classmethod
    def _expand_methods(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, list) and "all" in value:
            value = method_names()
        return value

    @field_validator("sparsities", mode="before")
    @classmethod
    def _split_sparsities(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, str):
            if _strict(info):
                raise ValueError("must be a JSON array of numbers, e.g. [0.25, 0.5] (comma-separated text is the "
                                 "CLI's spelling)")
            value = [v.strip() for v in value.split(",") if v.strip()]
        return value

    @model_validator(mode="after")
    def _check_methods(self, info: ValidationInfo) -> SweepSpec:
        self.methods = list(dict.fromkeys(self.methods))
        self.sparsities = sorted(set(self.sparsities))
        if any(not 0.0 < s < 1.0 for s in self.sparsities):
            raise InvalidSpec("every sparsity must be strictly between 0 and 1", field="sparsities")
        unknown = sorted(set(self.options) - set(self.methods))
        if unknown:
            raise InvalidSpec(f"options given for methods not in the sweep: {', '.join(unknown)}", field="options")
        for name in self.methods:
            self.options[name] = method_config(name, self.options.get(name), strict=_strict(info),
                                               field=f"options.{name}", method_field="methods")
        check_methods(self.export, self.methods)
        return self

    def prune_spec(self, method: str, sparsity: float, model: str | None = None) -> PruneSpec:
        """The single-run request one cell of the sweep corresponds to (on `model`, one of the sweep's; by default
        its first), reading its inputs where the sweep does (`with_opened`, `with_task_data`)."""
        fields = {**self.shared_fields(), "model": model or self.model}
        cell = PruneSpec(**fields, sparsity=sparsity, method=method, options=self.options[method])
        cell._task_data = self._task_data
        return cell.with_opened(self._opened)

    def pruning(self) -> Pruning:
        return Pruning(options={m: self.options[m] for m in self.methods}, sparsities=list(self.sparsities))


SpecT = TypeVar("SpecT", bound=JobSpecBase)


def _strict(info: ValidationInfo) -> bool:
    return bool(info.context and info.context.get("strict"))


def _validate(spec_cls: type[SpecT], data: dict[str, Any], strict: bool) -> SpecT:
    """`data` as a `spec_cls`; InvalidSpec with pydantic's errors in one line, and each with its field (the
    error's problems). strict=True (the service's JSON
    requests): every value must have its JSON type, a number a JSON number ("0.5" is not a sparsity) and a boolean
    a JSON boolean, the method and export options included; the CLI and stored specs are validated as before."""
    try:
        if strict:
            where = _lone_surrogate(data)
            if where is not None:  # JSON text can escape one, but it is no Unicode character
                reason = "not valid Unicode text (a lone surrogate)"
                raise InvalidSpec(f"{where}: {reason}", parts=[FieldProblem(where, f"{where}: {reason}", reason)])
            return spec_cls.model_validate_json(json.dumps(data), strict=True, context={"strict": True})
        return spec_cls.model_validate(data)
    except (ValidationError, InvalidSpec) as exc:  # with the cross-field checks pydantic did not reach
        if isinstance(exc, ValidationError):
            first = InvalidSpec(format_validation_error(exc), parts=validation_problems(exc))
        else:
            first = exc
        errors = {str(first): first}
        for problem in registry_problems(data, sweep=spec_cls is SweepSpec):
            errors.setdefault(str(problem), problem)
        raise InvalidSpec("; ".join(errors), parts=joined_problems(errors.values())) from None


def _lone_surrogate(value: Any, where: str = "") -> str | None:
    """Where in `value` (`heal.data.0`) a string holds a lone UTF-16 surrogate, if anywhere."""
    if isinstance(value, str):
        return where or "value" if any("\ud800" <= ch <= "\udfff" for ch in value) else None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        found = _lone_surrogate(key, where or "value") or _lone_surrogate(item, f"{where}.{key}" if where else str(key))
        if found is not None:
            return found
    return None


def parse_spec(data: dict[str, Any], strict: bool = False) -> PruneSpec:
    """Validate a request, turning pydantic's errors into one readable InvalidSpec."""
    return _validate(PruneSpec, data, strict)


def parse_sweep_spec(data: dict[str, Any], strict: bool = False) -> SweepSpec:
    """Validate a sweep request, turning pydantic's errors into one readable InvalidSpec."""
    return _validate(SweepSpec, data, strict)


def parse_job_spec(kind: str, data: dict[str, Any]) -> PruneSpec | SweepSpec:
    """A job's stored spec (its request as validated and dumped when it was submitted) as the typed request again:
    what a worker runs. `kind`: the job's kind ("prune" or "sweep")."""
    return parse_sweep_spec(data) if kind == "sweep" else parse_spec(data)


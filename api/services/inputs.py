"""Checks on a job request before anything is queued: the spec itself, model ids, local paths, feasibility."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from stat import S_ISREG
from typing import Any, Literal

from api.errors import InputRejected
from service.db.models import JobKind
from service.paths import ROOTS_RULE, PathRefused, check_tree, resolve_allowed
from service.settings import Settings
from twossp_core.errors import InfeasibleTarget, ModelNotFound
from twossp_core.gguf_source import gguf_file_of, is_gguf_name
from twossp_core.local_inputs import UnusablePath, stat_path
from twossp_core.plan.sources import DataSource
from twossp_core.plan.spec import PruneSpec, SweepSpec, parse_spec, parse_sweep_spec
from twossp_core.preflight import is_hub_id, looks_local

JobSpec = PruneSpec | SweepSpec

def resolve_local(
    value: str, settings: Settings, what: str, kind: Literal["model directory", "file"], field: str
) -> Path:
    """The real path of `value` if it is absolute, inside an allowed root and a readable `kind`; InputRejected
    (about the request's `field`) otherwise."""
    try:
        return resolve_allowed(value, settings.resolved_roots(), what, kind)
    except PathRefused as exc:
        raise InputRejected(str(exc), field=field) from None


def check_model_id(model: str, settings: Settings) -> str:
    """Return the model id to store: a real local path, or the hub id unchanged."""
    if looks_local(model):
        if is_gguf_name(Path(model)):  # a GGUF file: the preflight reads its header
            return str(resolve_local(model, settings, "model", "file", "model"))
        path = resolve_local(model, settings, "model", "model directory", "model")
        try:
            config = stat_path(path / "config.json")
        except UnusablePath as exc:
            raise ModelNotFound(f"model {model!r}: config.json {exc}", field="model") from None
        if (config is None or not S_ISREG(config.st_mode)) and gguf_file_of(path) is None:
            raise ModelNotFound(f"model {model!r}: a local model directory must contain config.json (or one .gguf "
                                "file)", field="model")
        try:
            check_tree(path, settings.resolved_roots(), "model")
        except PathRefused as exc:
            raise InputRejected(str(exc), field="model") from None
        return str(path)
    if not is_hub_id(model):
        raise InputRejected(
            f"model {model!r}: not a Hugging Face hub id (`org/name`) nor an absolute local path ({ROOTS_RULE})",
            field="model",
        )
    if not settings.allow_hub:
        raise InputRejected(f"model {model!r}: hub models are disabled (TWOSSP_ALLOW_HUB=false); {ROOTS_RULE}",
                            field="model")
    return model


def check_source(text: str, settings: Settings, what: str, field: str) -> str:
    """The source to store (a real local path, or the hub dataset's name); InputRejected about `field` (the
    request's item it came from: `eval.1`) when it is refused."""
    source = DataSource.parse(text)
    if source.is_hub:
        if not settings.allow_hub:
            raise InputRejected(f"{what} {text!r}: hub datasets are disabled (TWOSSP_ALLOW_HUB=false)", field=field)
        return text
    path = resolve_local(source.name, settings, what, "file", field)
    rng = "" if source.start is None and source.end is None else source.label[len(source.name) :]
    return f"{path}{rng}"


def preflight(spec: JobSpec) -> None:
    """Reject unsupported architectures, infeasible targets and missing files before queueing (torch-free).

    A sweep is checked cell by cell, so an infeasible (method, sparsity) pair is reported before anything runs.
    """
    from twossp_core.preflight import check_model

    # relative_paths=False: a hub id is never looked up in the API's working directory (no existence oracle)
    if isinstance(spec, PruneSpec):
        check_model(spec, relative_paths=False)
        return
    for method in spec.methods:
        for sparsity in spec.sparsities:
            try:
                check_model(spec.prune_spec(method, sparsity), relative_paths=False)
            except InfeasibleTarget as exc:
                raise InfeasibleTarget(f"{method} at sparsity {sparsity:g}: {exc}", field="sparsities") from None

    for model in spec.models[1:]:  # a sweep's other models: each of their cells too
        for method in spec.methods:
            for sparsity in spec.sparsities:
                try:
                    check_model(spec.prune_spec(method, sparsity, model), relative_paths=False)
                except InfeasibleTarget as exc:
                    raise InfeasibleTarget(f"{model}: {method} at sparsity {sparsity:g}: {exc}") from None


def job_kind(body: dict[str, Any]) -> JobKind:
    if "kind" not in body and {"methods", "sparsities"} & body.keys():
        raise InputRejected('methods and sparsities are fields of a sweep: add "kind": "sweep" to the request',
                            field="kind")
    kind = body.get("kind", JobKind.prune.value)
    if kind not in [k.value for k in JobKind]:
        raise InputRejected(f"kind: must be one of {', '.join(repr(k.value) for k in JobKind)}, not {kind!r}",
                            field="kind")
    return JobKind(kind)


def validate_request(body: Any, settings: Settings) -> tuple[JobKind, JobSpec]:
    """The job kind and normalized spec for a request body, or an exception that maps to a 4xx with the reason."""
    if not isinstance(body, dict):
        raise InputRejected("request body must be a JSON object")
    kind = job_kind(body)
    fields = {k: v for k, v in body.items() if k != "kind"}
    # strict: numbers must be JSON numbers, booleans JSON booleans ("0.5" is no sparsity)
    spec: JobSpec = parse_sweep_spec(fields, strict=True) if kind is JobKind.sweep else parse_spec(fields, strict=True)
    spec.model = check_model_id(spec.model, settings)
    if isinstance(spec, SweepSpec) and spec.models:  # several models: each checked; `model` is the first
        spec.models = [check_model_id(model, settings) for model in spec.models]
        spec.model = spec.models[0]
    spec.calibration = [check_source(s, settings, "calibration source", f"calibration.{i}")
                        for i, s in enumerate(spec.calibration)]
    spec.eval = [check_source(s, settings, "eval source", f"eval.{i}") for i, s in enumerate(spec.eval)]
    if spec.heal is not None and spec.heal.data:
        spec.heal.data = [check_source(s, settings, "heal data source", f"heal.data.{i}")
                          for i, s in enumerate(spec.heal.data)]
    preflight(spec)
    return kind, spec


def request_hash(kind: JobKind, spec: JobSpec) -> str:
    canonical = json.dumps({"kind": kind.value, **spec.model_dump(mode="json")}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()

"""Checks a request can run before anything is queued or loaded (torch-free).

Local models: config.json (or a GGUF file's header) must exist and name a supported architecture, and the
method's own preflight (from the method registry, e.g. 2SSP's balance plan) must pass. Local data files must
exist. Hub ids and hub datasets are checked when the job runs.
"""

from __future__ import annotations

import json
import re
import stat
from pathlib import Path

from twossp_core.data.sources import check_txt_range
from twossp_core.errors import DataError, InfeasibleTarget, InvalidSpec, ModelNotFound, UnsupportedModel
from twossp_core.export.compact_config import to_base
from twossp_core.gguf_source import gguf_file_of, local_gguf_config
from twossp_core.local_inputs import UnusablePath, stat_path
from twossp_core.models.counts import block_counts
from twossp_core.models.registry import check_supported
from twossp_core.plan.exports import check_family, check_ffn_width
from twossp_core.plan.memory import spec_plan
from twossp_core.plan.methods import method_preflight
from twossp_core.plan.sources import DataSource, ModelInput
from twossp_core.plan.spec import PruneSpec

MAX_CONFIG_BYTES = 16 * 2**20  # a config.json larger than this is not read
# `name` or `org/name`: letters, digits, `-`, `_`, `.`; no `--`/`..` runs, at most 96 characters per part
HUB_ID_RE = re.compile(r"^(?:[A-Za-z0-9][A-Za-z0-9._-]{0,95}/)?[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")


def looks_local(model: str) -> bool:
    """Whether `model` is spelled as a path (absolute, ./, ../, ~, backslashes) rather than a hub id."""
    return model.startswith(("/", "./", "../", "~", "\\")) or model in {".", ".."} or "\\" in model


def is_hub_id(model: str) -> bool:
    return not looks_local(model) and ".." not in model and "--" not in model and bool(HUB_ID_RE.fullmatch(model))


def local_config(source: ModelInput | str, relative_paths: bool = True) -> dict | None:
    """The config.json of a local model directory (a compact export's as its base), read where `source` says to
    open it; None for a hub id. With relative_paths=False only an absolute name is looked up on disk; anything
    else is a hub id."""
    model_input = ModelInput.of(source)
    model, path = model_input.name, model_input.open_path
    if not relative_paths and not Path(model).is_absolute():
        return None
    try:
        found = stat_path(path)
        config = stat_path(path / "config.json") if found is not None and stat.S_ISDIR(found.st_mode) else None
    except UnusablePath as exc:
        raise ModelNotFound(f"model {model!r}: {exc}", field="model") from None
    if found is None:
        if not is_hub_id(model):
            raise ModelNotFound(f"model {model!r}: no such local model directory", field="model")
        return None
    gguf = gguf_file_of(path) if config is None else None  # a .gguf file, or a directory holding one
    if gguf is not None:  # its header, checked readable (architecture, tensor types) in one line
        return local_gguf_config(gguf)
    if not stat.S_ISDIR(found.st_mode):
        raise ModelNotFound(
            f"model {model!r}: not a directory (a local model is a directory with config.json)", field="model"
        )
    if config is None or not stat.S_ISREG(config.st_mode):
        raise ModelNotFound(
            f"model {model!r}: a local model directory must contain config.json (a regular file)", field="model"
        )
    if config.st_size > MAX_CONFIG_BYTES:
        raise ModelNotFound(
            f"model {model!r}: config.json is larger than {MAX_CONFIG_BYTES // 2**20} MiB", field="model"
        )
    try:
        return to_base(json.loads((path / "config.json").read_text()))  # a compact export is checked as its base
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelNotFound(f"model {model!r}: config.json is unreadable ({exc})", field="model") from None


def check_data(
    sources: list[DataSource], doc_separator: str | None, relative_paths: bool = True, *, field: str | None = None
) -> None:
    """Local data files exist and their document ranges select something (hub datasets are checked later).
    `field`: the request's list they come from (`eval`); a DataError is about its item (`eval.1`)."""
    for index, source in enumerate(sources):
        try:
            _check_source(source, doc_separator, relative_paths)
        except DataError as exc:
            raise exc if field is None else exc.with_field(f"{field}.{index}") from None


def _check_source(source: DataSource, doc_separator: str | None, relative_paths: bool) -> None:
    if source.is_hub and not relative_paths:
        return
    try:
        found = stat_path(source.open_path)
    except UnusablePath as exc:
        raise DataError(f"data source {source.label!r}: {exc}") from None
    if source.is_hub and found is None:
        return
    if found is None:
        raise DataError(f"data source {source.label!r}: no such file")
    if not stat.S_ISREG(found.st_mode):
        raise DataError(f"data source {source.label!r}: not a regular file (a directory, FIFO or device)")
    try:
        check_txt_range(source, doc_separator)
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"data source {source.label!r}: cannot be read ({exc})") from None


def check_local_model(model: ModelInput | str, relative_paths: bool = True) -> dict | None:
    """A local model's config.json (None for a hub id); ModelNotFound / UnsupportedModel when it cannot run."""
    try:
        cfg = local_config(model, relative_paths)
        if cfg is not None:
            check_supported(cfg.get("model_type"))
    except (ModelNotFound, UnsupportedModel) as exc:
        raise exc.with_field("model") from None
    return cfg


def hub_config(model: str, *, fetch: bool) -> dict | None:
    """A hub model's config.json (as its base, for a compact export on the hub): from the hub cache, or with
    `fetch` from the hub when it answers; None when neither has it. What a run checks before it loads weights."""
    try:
        from huggingface_hub import hf_hub_download, try_to_load_from_cache

        path = try_to_load_from_cache(model, "config.json")
        if not isinstance(path, str) and fetch:
            from twossp_core.runtime.hub import hub_unreachable

            path = hf_hub_download(model, "config.json") if hub_unreachable() is None else None
        config = json.loads(Path(path).read_text()) if isinstance(path, str) else None
    except Exception:  # noqa: BLE001 - no such repository, no access, a broken cache: the load will say why
        return None
    return to_base(config) if isinstance(config, dict) else None


def check_model(spec: PruneSpec, *, relative_paths: bool = True) -> None:
    """Raise UnsupportedModel / InfeasibleTarget / ModelNotFound / DataError when the request cannot run.

    relative_paths=False (the service): relative names are never resolved against the working directory."""
    check_data(spec.calibration_sources(), spec.doc_separator, relative_paths, field="calibration")
    check_data(spec.eval_sources(), spec.doc_separator, relative_paths, field="eval")
    if spec.heal is not None and spec.heal.data:  # else it trains on the calibration sources, checked above
        check_data(spec.heal_sources(), spec.doc_separator, relative_paths, field="heal.data")
    cfg = check_local_model(spec.model_input(), relative_paths)
    if cfg is None:  # a hub id: its config when at hand (the service never downloads it here)
        cfg = hub_config(spec.model, fetch=relative_paths)
        if cfg is None:
            return
        try:
            check_supported(cfg.get("model_type"))
        except UnsupportedModel as exc:
            raise exc.with_field("model") from None
    check_family(spec.export, cfg.get("model_type"))
    if spec.max_host_memory is not None or spec.max_device_memory is not None or spec.execution != "auto":
        # refuse a job that fits its budgets on none of the devices it may run on, before it is queued
        devices = {"cpu": ["cpu"], "cuda": ["cuda"]}.get(spec.device, ["cuda", "cpu"])
        errors = []
        for device in devices:
            try:
                spec_plan(spec, cfg, device=device)
                break
            except InvalidSpec as exc:
                errors.append(exc)
        else:
            raise errors[0]
    check = method_preflight(spec.method)
    try:
        width = check(block_counts(cfg), spec.sparsity, spec.method_options()) if check is not None else None
    except InfeasibleTarget as exc:  # the target the method cannot reach on this model
        raise exc.with_field("sparsity") from None
    if width is not None:  # the method decides the FFN width it keeps
        check_ffn_width(spec.export, width, hint=" (2SSP: set `options.round_to=256`)")
    elif "round_to" not in type(spec.method_options()).model_fields:  # methods that keep the FFN width
        check_ffn_width(spec.export, int(cfg.get("intermediate_size") or 0))

"""Checks a request can run before anything is queued or loaded (torch-free).

Local models: config.json must exist and name a supported architecture, and the method's own preflight
(from the method registry, e.g. 2SSP's balance plan) must pass. Local data files must exist. Hub ids and
hub datasets are checked when the job runs.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from twossp_core.data.sources import check_txt_range
from twossp_core.errors import DataError, InvalidSpec, ModelNotFound
from twossp_core.export.compact_config import to_base
from twossp_core.export.registry import check_family, check_ffn_width
from twossp_core.local_inputs import local_path
from twossp_core.memory import spec_plan
from twossp_core.models.counts import block_counts
from twossp_core.models.registry import check_supported
from twossp_core.pruning.registry import method_preflight
from twossp_core.spec import DataSource, PruneSpec

# `name` or `org/name`: letters, digits, `-`, `_`, `.`; no `--`/`..` runs, at most 96 characters per part
HUB_ID_RE = re.compile(r"^(?:[A-Za-z0-9][A-Za-z0-9._-]{0,95}/)?[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")


def looks_local(model: str) -> bool:
    """Whether `model` is spelled as a path (absolute, ./, ../, ~, backslashes) rather than a hub id."""
    return model.startswith(("/", "./", "../", "~", "\\")) or model in {".", ".."} or "\\" in model


def is_hub_id(model: str) -> bool:
    return not looks_local(model) and ".." not in model and "--" not in model and bool(HUB_ID_RE.fullmatch(model))


def local_config(model: str, relative_paths: bool = True) -> dict | None:
    """The config.json of a local model directory (a compact export's as its base), None for a hub id.
    With relative_paths=False only an absolute path is looked up on disk; anything else is a hub id."""
    path = local_path(model)
    if not relative_paths and not Path(model).is_absolute():
        return None
    if not path.exists():
        if not is_hub_id(model):
            raise ModelNotFound(f"{model}: no such local model directory")
        return None
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ModelNotFound(f"{model}: a local model directory must contain config.json")
    try:
        return to_base(json.loads(config_file.read_text()))  # a compact export is checked as its base
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelNotFound(f"{model}: config.json is unreadable ({exc})") from None


def check_data(sources: list[DataSource], doc_separator: str | None, relative_paths: bool = True) -> None:
    """Local data files exist and their document ranges select something (hub datasets are checked later)."""
    for source in sources:
        if source.is_hub and (not relative_paths or not local_path(source.name).exists()):
            continue
        if not local_path(source.name).is_file():
            raise DataError(f"data source {source.label!r}: no such file")
        check_txt_range(source, doc_separator)


def check_local_model(model: str, relative_paths: bool = True) -> dict | None:
    """A local model's config.json (None for a hub id); ModelNotFound / UnsupportedModel when it cannot run."""
    cfg = local_config(model, relative_paths)
    if cfg is not None:
        check_supported(cfg.get("model_type"))
    return cfg


def check_model(spec: PruneSpec, *, relative_paths: bool = True) -> None:
    """Raise UnsupportedModel / InfeasibleTarget / ModelNotFound / DataError when the request cannot run.

    relative_paths=False (the service): relative names are never resolved against the working directory."""
    sources = [*spec.calibration_sources(), *spec.eval_sources(), *spec.heal_sources()]
    check_data(sources, spec.doc_separator, relative_paths)
    cfg = check_local_model(spec.model, relative_paths)
    if cfg is None:
        return
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
    width = check(block_counts(cfg), spec.sparsity, spec.method_options()) if check is not None else None
    if width is not None:  # the method decides the FFN width it keeps
        check_ffn_width(spec.export, width, hint=" (2SSP: pass --option round_to=256)")
    elif "round_to" not in type(spec.method_options()).model_fields:  # methods that keep the FFN width
        check_ffn_width(spec.export, int(cfg.get("intermediate_size") or 0))

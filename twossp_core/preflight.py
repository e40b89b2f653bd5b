"""Checks a request can run before anything is queued or loaded (torch-free).

Local models: config.json must exist and name a supported architecture; for 2SSP the balance plan must
be feasible. Local data files must exist. Hub ids and hub datasets are checked when the job runs.
"""

from __future__ import annotations

import json
from pathlib import Path

from twossp_core.errors import DataError, ModelNotFound
from twossp_core.export.compact_config import to_base
from twossp_core.models.counts import block_counts
from twossp_core.models.registry import check_supported
from twossp_core.pruning.twossp.balance import plan_balance
from twossp_core.spec import PruneSpec


def local_config(model: str) -> dict | None:
    path = Path(model).expanduser()
    if not path.exists():
        return None
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ModelNotFound(f"{model}: a local model directory must contain config.json")
    try:
        return to_base(json.loads(config_file.read_text()))  # a compact export is checked as its base
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelNotFound(f"{model}: config.json is unreadable ({exc})") from None


def check_data(spec: PruneSpec) -> None:
    for source in [*spec.calibration_sources(), *spec.eval_sources(), *spec.heal_sources()]:
        if source.is_hub and not Path(source.name).exists():
            continue
        if not Path(source.name).expanduser().is_file():
            raise DataError(f"data source {source.label!r}: no such file")


def check_model(spec: PruneSpec) -> None:
    """Raise UnsupportedModel / InfeasibleTarget / ModelNotFound / DataError when the request cannot run."""
    check_data(spec)
    cfg = local_config(spec.model)
    if cfg is None:
        return
    check_supported(cfg.get("model_type"))
    if spec.method in ("2ssp", "2ssp-refit"):
        counts = block_counts(cfg)
        options = spec.method_options()
        plan_balance(
            blocks=counts.blocks,
            sparsity=spec.sparsity,
            mlp_params=counts.mlp,
            attn_params=counts.attention,
            block_params_total=counts.blocks_total,
            intermediate_size=counts.intermediate_size,
            alpha=options.alpha,  # type: ignore[attr-defined]
            num_attention=options.num_attention_to_prune,  # type: ignore[attr-defined]
            round_to=options.round_to,  # type: ignore[attr-defined]
        )

"""The model card (README.md with Hugging Face card metadata) written into every export directory.

It is built from the export metadata (the report's method, sparsity, structure, perplexities, data and
options), so a directory says what it is, how it was made and how to load it, wherever it is copied.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twossp_core.export.source_files import hub_id_of, is_local, source_json, source_name, source_sha256
from twossp_core.plan.sources import ModelInput

CARD_FILE = "README.md"

CITATION = """@article{sandri2025twossp,
  title   = {2SSP: A Two-Stage Framework for Structured Pruning of LLMs},
  author  = {Sandri, Fabrizio and Cunegatti, Elia and Iacca, Giovanni},
  journal = {arXiv preprint arXiv:2501.17771},
  year    = {2025}
}"""



@dataclass(frozen=True)
class CardSection:
    """What an export format puts into its model card; each exporter supplies its own (its module's `CARD`)."""

    format: str  # the export format's name, as the card says the model was saved
    # "How to load" (Markdown), given the files the exporter wrote (the GGUF file's name, say); THIS_DIR stands for
    # the directory
    usage: Callable[[list[str]], str]
    tags: tuple[str, ...] = ()  # the card metadata's tags the format adds
    library_name: str = "transformers"
    # the card metadata's base_model_relation when the source is a hub model
    base_model_relation: str = "finetune"


def _base_card_text(source: ModelInput) -> str | None:
    """The base model's own README.md, from its local directory or the hub cache (never downloaded here)."""
    if is_local(source):
        path = source.open_path / CARD_FILE
        return path.read_text(errors="replace") if path.is_file() else None
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(source.name, CARD_FILE)
    except Exception:  # noqa: BLE001 - an invalid repo id or a broken cache: no base card
        return None
    return Path(cached).read_text(errors="replace") if isinstance(cached, str) else None


def base_license(model: ModelInput | str) -> str | None:
    """The `license:` of the base model's card metadata, when its card is at hand (a GGUF file's
    `general.license`)."""
    from twossp_core.gguf_source import local_gguf, read_header

    source = ModelInput.of(model)
    gguf = local_gguf(source) if is_local(source) else None
    if gguf is not None:
        value = read_header(gguf).metadata.get("general.license")
        return value if isinstance(value, str) and value else None
    text = _base_card_text(source)
    if not text or not text.startswith("---"):
        return None
    header = text.split("---", 2)[1]
    for line in header.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "license" and value.strip():
            return value.strip().strip("'\"")
    return None


def _sparsity_tag(target: Any) -> list[str]:
    return [f"sparsity-{float(target) * 100:.4g}"] if target is not None else []


def _source_model(metadata: dict[str, Any], source: ModelInput | None) -> ModelInput:
    """The model the export was pruned from: `source` (its name and where it is opened), else the metadata's
    `model`, opened at its name."""
    return source if source is not None else ModelInput(str(metadata.get("model") or ""))


def source_metadata(metadata: dict[str, Any], source: ModelInput | None = None) -> dict[str, Any]:
    """What the card's metadata says about the source model (`source`, else the metadata's `model`): `base_model`
    (a hub id) when it came from the hub, else `source_model` {name, sha256 (of its weights, or of the GGUF file it
    was read from), sha256_of}."""
    model = _source_model(metadata, source)
    if not model.name:
        return {}
    hub_id = hub_id_of(model)
    if hub_id:
        return {"base_model": hub_id}
    record: dict[str, Any] = {"name": source_name(model)}
    gguf = metadata.get("source")
    if isinstance(gguf, dict) and gguf.get("sha256"):  # a GGUF file (gguf_source.source_record)
        record.update(sha256=gguf["sha256"], sha256_of=gguf.get("file"))
    elif (digest := source_sha256(model)) is not None:
        record.update(sha256=digest[0], sha256_of=digest[1])
    return {"source_model": record}


def source_license(model: ModelInput | str) -> str | None:
    """The source's license: its card's `license:`, else its config.json's `license` (None when neither says)."""
    source = ModelInput.of(model)
    if not source.name:
        return None
    value = base_license(source) or source_json(source, "config.json").get("license")
    return str(value) if value else None


def _front_matter(metadata: dict[str, Any], section: CardSection, source: ModelInput | None = None) -> str:
    """The card metadata (YAML), written with huggingface_hub's ModelCardData so the hub's parser reads it back."""
    from huggingface_hub import ModelCardData

    model = _source_model(metadata, source)
    fields: dict[str, Any] = source_metadata(metadata, model)
    if "base_model" in fields:
        fields["base_model_relation"] = section.base_model_relation
    license_ = source_license(model)
    if license_:
        fields["license"] = license_
    else:  # the card's text says so too
        fields.update(license="other", license_name="unknown")
    fields["library_name"] = section.library_name
    fields["pipeline_tag"] = "text-generation"
    tags = ["twossp", "pruned", "structured-pruning", str(metadata.get("method", "unknown")),
            *_sparsity_tag(metadata.get("sparsity_target")), *section.tags]
    fields["tags"] = list(dict.fromkeys(tags))
    if metadata.get("zero_shot"):  # the exported model's zero-shot accuracy as model-index results
        from twossp_core.evaluation.zeroshot.model_card import eval_results

        results = eval_results(metadata["zero_shot"])
        if results:
            fields.update(model_name=f"{source_name(model)} pruned with {metadata.get('method', 'unknown')}",
                          eval_results=results)
    return "---\n" + ModelCardData(**fields).to_yaml() + "\n---"


def _structure(metadata: dict[str, Any], config: Any) -> list[str]:
    rows = []
    n_blocks = getattr(config, "num_hidden_layers", None)
    for key, label in (
        ("removed_blocks", "blocks deleted whole (indices in the dense model)"),
        ("removed_attention", "blocks without attention (indices in the pruned model)"),
        ("removed_mlp", "blocks without FFN (indices in the pruned model)"),
    ):
        value = metadata.get(key)
        rows.append(f"| {label} | {value if value else 'none'} |")
    if metadata.get("kept_ffn_neurons") is not None:
        rows.append(f"| FFN neurons kept in every block | {metadata['kept_ffn_neurons']} |")
    if n_blocks is not None:
        rows.append(f"| blocks in this model | {n_blocks} |")
    params = metadata.get("params") or {}
    if params:
        rows.append(f"| block parameters | {params['blocks_before']:,} → {params['blocks_after']:,} |")
        rows.append(f"| total parameters | {params['total_before']:,} → {params['total_after']:,} |")
    return ["| | |", "|---|---|", *rows]


def _perplexity(metadata: dict[str, Any]) -> list[str]:
    rows = metadata.get("perplexity") or []
    if not rows:
        return ["Not measured for this export."]
    healed = any(r.get("healed") is not None for r in rows)
    control = any(r.get("dense_healed") is not None for r in rows)
    head = "| dataset | dense | pruned |" + (" healed |" if healed else "")
    head += " dense healed (control) |" if control else ""
    sep = "|---|---|---|" + ("---|" if healed else "") + ("---|" if control else "")
    out = [head, sep]
    for r in rows:
        line = f"| {r['dataset']} | {r['dense']:.3f} | {r['pruned']:.3f} |"
        if healed:
            line += f" {r['healed']:.3f} |" if r.get("healed") is not None else " – |"
        if control:
            line += f" {r['dense_healed']:.3f} |" if r.get("dense_healed") is not None else " – |"
        out.append(line)
    return out + _heal_net(rows)


def _zero_shot(block: dict[str, Any]) -> list[str]:
    from twossp_core.evaluation.zeroshot.model_card import card_table

    return card_table(block)


def _relative(value: float, reference: float) -> str:
    ratio = value / reference
    return f"{abs(ratio - 1):.1%} {'below' if ratio < 1 else 'above'}"


def _heal_net(rows: list[dict[str, Any]]) -> list[str]:
    """The heal's gain net of its control, per evaluation set (or that there was no control)."""
    healed = [r for r in rows if r.get("healed") is not None]
    if not healed:
        return []
    controlled = [r for r in healed if r.get("dense_healed") is not None]
    if not controlled:
        return ["", "The heal ran without a control (`heal.control`): the healed perplexity is compared with the "
                "dense model as it was, not with the dense model healed the same way, so a gain over the dense "
                "model may be what this heal does to any model rather than a recovery from pruning."]
    lines = ["", "The heal's gain net of its control (the dense model healed with the same settings, data and "
             "seed):", ""]
    for r in controlled:
        lines.append(f"- {r['dataset']}: healed {r['healed']:.3f} is {_relative(r['healed'], r['dense_healed'])} "
                     f"the control's {r['dense_healed']:.3f} (and {_relative(r['healed'], r['dense'])} the "
                     f"unhealed dense model's {r['dense']:.3f})")
    return lines


def _source(metadata: dict[str, Any]) -> list[str]:
    """The GGUF file the base model was read from (gguf_source.source_record), when it was."""
    source = metadata.get("source")
    if not isinstance(source, dict) or source.get("format") != "gguf":
        return []
    return [f"- base model read from the GGUF file `{source.get('file')}` ({source.get('quantization')}, sha256 "
            f"`{source.get('sha256')}`), dequantized before pruning"]


def _data(metadata: dict[str, Any]) -> list[str]:
    data = metadata.get("data") or {}
    lines = _source(metadata)
    if data:
        lines.append(f"- calibration: {', '.join(map(str, data.get('calibration', [])))} "
                     f"({data.get('calibration_windows', '?')} windows of {data.get('seq_len', '?')} tokens)")
        evals = data.get("eval") or {}
        if evals:
            lines.append("- evaluation: " + ", ".join(f"{k} ({v} windows)" for k, v in evals.items()))
        if data.get("doc_separator"):
            lines.append(f"- documents split on {data['doc_separator']!r}")
    options = metadata.get("options")
    if options:
        lines.append(f"- method options: `{json.dumps(options, sort_keys=True)}`")
    versions = metadata.get("versions")
    if versions:
        lines.append("- made with " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    return lines or ["Not recorded."]


def render_card(
    metadata: dict[str, Any], section: CardSection, config: Any, files: list[str] | None = None,
    source: ModelInput | None = None,
) -> str:
    """The model card of an export: the run's metadata, and what the format (`section`) says about itself.
    `source`: the model pruned (the metadata's `model`) with where it is opened, when not at its name."""
    method = metadata.get("method", "unknown")
    model = source if source is not None else ModelInput(str(metadata.get("model", "the base model")))
    target, achieved = metadata.get("sparsity_target"), metadata.get("sparsity_achieved")
    sparsity = ""
    if target is not None and achieved is not None:
        sparsity = f" at target sparsity {target:.4f} (achieved {achieved:.4f} of the transformer-block parameters)"
    license_note = [] if source_license(model) else [
        "License: the source model's card and config state none, so the metadata says `license: other`; the "
        "source model's own terms apply."
    ]
    parts = [
        _front_matter(metadata, section, source),
        f"# {source_name(model)} pruned with {method}",
        f"`{source_name(model)}` structurally pruned with **{method}**{sparsity} by "
        f"[twossp](https://arxiv.org/abs/2501.17771), saved in the **{section.format}** export format.",
        *license_note,
        *(["## Warnings", "\n".join(f"- {w}" for w in metadata["warnings"])] if metadata.get("warnings") else []),
        "## What was removed",
        "\n".join(_structure(metadata, config)),
        "## Perplexity",
        "\n".join(_perplexity(metadata)),
        *(["## Zero-shot accuracy", "\n".join(_zero_shot(metadata["zero_shot"]))] if metadata.get("zero_shot") else []),
        "## Calibration and settings",
        "\n".join(_data(metadata)),
        "## How to load",
        section.usage(files or []),
        "## Citation",
        "2SSP (Sandri, Cunegatti, Iacca, 2025):\n\n```bibtex\n" + CITATION + "\n```",
    ]
    return "\n\n".join(parts) + "\n"


def write_card(
    out_dir: Path, metadata: dict[str, Any], section: CardSection, config: Any, files: list[str] | None = None,
    source: ModelInput | None = None,
) -> Path:
    path = Path(out_dir) / CARD_FILE
    tmp = path.with_name(f".{CARD_FILE}.tmp")
    tmp.write_text(render_card(metadata, section, config, files, source))
    tmp.replace(path)
    return path

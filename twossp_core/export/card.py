"""The model card (README.md with Hugging Face card metadata) written into every export directory.

It is built from the export metadata (the report's method, sparsity, structure, perplexities, data and
options), so a directory says what it is, how it was made and how to load it, wherever it is copied.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from twossp_core.export.source_files import source_name
from twossp_core.local_inputs import local_path

CARD_FILE = "README.md"

CITATION = """@article{sandri2025twossp,
  title   = {2SSP: A Two-Stage Framework for Structured Pruning of LLMs},
  author  = {Sandri, Fabrizio and Cunegatti, Elia and Iacca, Giovanni},
  journal = {arXiv preprint arXiv:2501.17771},
  year    = {2025}
}"""

FORMAT_TAGS = {
    "compact": ["custom_code"],
    "portable": [],
    "gguf": ["gguf", "llama.cpp"],
    "decilm": ["custom_code", "nemotron-nas", "vllm"],
}


def _is_local(model: str) -> bool:
    return local_path(model).exists() or model.startswith((".", "/", "~"))


def _base_card_text(model: str) -> str | None:
    """The base model's own README.md, from its local directory or the hub cache (never downloaded here)."""
    if _is_local(model):
        path = local_path(model) / CARD_FILE
        return path.read_text(errors="replace") if path.is_file() else None
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(model, CARD_FILE)
    except Exception:  # noqa: BLE001 - an invalid repo id or a broken cache: no base card
        return None
    return Path(cached).read_text(errors="replace") if isinstance(cached, str) else None


def base_license(model: str) -> str | None:
    """The `license:` of the base model's card metadata, when its card is at hand."""
    text = _base_card_text(model)
    if not text or not text.startswith("---"):
        return None
    header = text.split("---", 2)[1]
    for line in header.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "license" and value.strip():
            return value.strip().strip("'\"")
    return None


def _front_matter(metadata: dict[str, Any], fmt: str) -> str:
    model = str(metadata.get("model") or "")
    lines = ["---"]
    if model and not _is_local(model):
        lines.append(f"base_model: {model}")
        lines.append("base_model_relation: quantized" if fmt == "gguf" else "base_model_relation: finetune")
    license_ = base_license(model) if model else None
    if license_:
        lines.append(f"license: {license_}")
    lines.append("library_name: " + ("gguf" if fmt == "gguf" else "transformers"))
    lines.append("pipeline_tag: text-generation")
    tags = ["twossp", "pruned", "structured-pruning", str(metadata.get("method", "unknown")), *FORMAT_TAGS.get(fmt, [])]
    lines.append("tags:")
    lines.extend(f"- {tag}" for tag in dict.fromkeys(tags))
    lines.append("---")
    return "\n".join(lines)


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


def _data(metadata: dict[str, Any]) -> list[str]:
    data = metadata.get("data") or {}
    lines = []
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


def _usage(fmt: str, files: list[str]) -> str:
    if fmt == "gguf":
        gguf = files[0] if files else "model.gguf"
        return f"""llama.cpp (the tokenizer is inside the file):

```bash
llama-cli -m {gguf} -p "Once upon a time" -n 64
llama-server -m {gguf}
```

llama-cpp-python:

```python
from llama_cpp import Llama
llm = Llama(model_path="{gguf}")
print(llm("Once upon a time", max_tokens=64)["choices"][0]["text"])
```"""
    if fmt == "decilm":
        return """vLLM (the `nemotron_nas` DeciLM implementation reads `block_configs`):

```bash
vllm serve THIS_DIR --trust-remote-code
```

transformers (runs `modeling_decilm.py` shipped here; the tokenizer needs no code, and given the model's config
AutoTokenizer does not ask about the directory's code again):

```python
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained("THIS_DIR", trust_remote_code=True)
tokenizer = AutoTokenizer.from_pretrained("THIS_DIR", config=model.config)
```"""
    if fmt == "portable":
        return """Any runtime that reads the base architecture (no remote code):

```python
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained("THIS_DIR")
tokenizer = AutoTokenizer.from_pretrained("THIS_DIR")
```

The removed submodules are stored as zeros, so this runs at the speed of the dense model; the `gguf` and
`decilm` exports skip them."""
    return """twossp:

```python
from twossp_core.export.load import load_pruned
model, tokenizer = load_pruned("THIS_DIR")
```

or transformers with the `modeling_twossp.py` shipped here (the tokenizer needs no code, and given the model's config
AutoTokenizer does not ask about the directory's code again):

```python
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained("THIS_DIR", trust_remote_code=True)
tokenizer = AutoTokenizer.from_pretrained("THIS_DIR", config=model.config)
```"""


def render_card(metadata: dict[str, Any], fmt: str, config: Any, files: list[str] | None = None) -> str:
    method = metadata.get("method", "unknown")
    model = metadata.get("model", "the base model")
    target, achieved = metadata.get("sparsity_target"), metadata.get("sparsity_achieved")
    sparsity = ""
    if target is not None and achieved is not None:
        sparsity = f" at target sparsity {target:.4f} (achieved {achieved:.4f} of the transformer-block parameters)"
    parts = [
        _front_matter(metadata, fmt),
        f"# {source_name(str(model))} pruned with {method}",
        f"`{model}` structurally pruned with **{method}**{sparsity} by "
        "[twossp](https://arxiv.org/abs/2501.17771), saved in the **{fmt}** export format.".replace("{fmt}", fmt),
        "## What was removed",
        "\n".join(_structure(metadata, config)),
        "## Perplexity",
        "\n".join(_perplexity(metadata)),
        "## Calibration and settings",
        "\n".join(_data(metadata)),
        "## How to load",
        _usage(fmt, files or []),
        "## Citation",
        "2SSP (Sandri, Cunegatti, Iacca, 2025):\n\n```bibtex\n" + CITATION + "\n```",
    ]
    return "\n\n".join(parts) + "\n"


def write_card(out_dir: Path, metadata: dict[str, Any], fmt: str, config: Any, files: list[str] | None = None) -> Path:
    path = Path(out_dir) / CARD_FILE
    tmp = path.with_name(f".{CARD_FILE}.tmp")
    tmp.write_text(render_card(metadata, fmt, config, files))
    tmp.replace(path)
    return path

"""Loading a GGUF file as a plain transformers model, and writing it once as a plain Hugging Face directory.

transformers' GGUF reader (`from_pretrained(..., gguf_file=...)`) dequantizes every tensor with gguf-py and returns
a model that is marked as GGUF-quantized, which refuses `save_pretrained`. We rebuild a plain model of the same
class from its config and state dict (the tensors are moved, not copied), so that pruning, every export format and
a heal treat it like any other model. The tokenizer comes from the same file, chat template included.

Block-by-block and multi-device execution read safetensors files: a GGUF file runs in memory, and `twossp
convert-gguf FILE --out DIR` (`convert_gguf`) writes the directory those modes (and faster loads) need.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

import torch

from twossp_core.errors import ModelNotFound
from twossp_core.gguf_source import SOURCE_KEY, check_readable, read_header, source_record

# GGUF pre-tokenizer names transformers' reader does not rebuild (it falls back to the plain GPT-2 split), and the
# pre-tokenizer of the model they come from. SmolLM's splits every digit on its own before the GPT-2 split, as
# its tokenizer.json does (llama.cpp: LLAMA_VOCAB_PRE_TYPE_SMOLLM).
DIGIT_SPLITTING_PRE = ("smollm",)


def _restore_pre_tokenizer(tokenizer: Any, pre: str | None) -> None:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if pre not in DIGIT_SPLITTING_PRE or backend is None:
        return
    from tokenizers import pre_tokenizers

    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
    ])


def _plain_copy(loaded: Any, dtype: torch.dtype, name: str) -> Any:
    """A model of the same class, built from `loaded`'s config without the GGUF quantization marker, holding
    `loaded`'s tensors."""
    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(loaded.config)
    for attribute in ("quantization_config", "_model_name_or_path"):
        if hasattr(config, attribute):
            delattr(config, attribute)
    config._name_or_path = name
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config, dtype=dtype)
    plain.load_state_dict(loaded.state_dict(), strict=True, assign=True)
    for buffer_name, buffer in loaded.named_buffers():  # rotary tables and other non-persistent buffers
        module_name, _, attribute = buffer_name.rpartition(".")
        plain.get_submodule(module_name)._buffers[attribute] = buffer
    if getattr(config, "tie_word_embeddings", False):
        plain.tie_weights()
    left = [n for n, t in [*plain.named_parameters(), *plain.named_buffers()] if t.is_meta]
    if left:
        raise ModelNotFound(f"{name}: the GGUF file did not fill {', '.join(left[:5])}")
    if getattr(loaded, "generation_config", None) is not None:
        plain.generation_config = copy.deepcopy(loaded.generation_config)
    return plain


def dequantize_gguf(
    path: Path, *, dtype: torch.dtype = torch.float32, name: str | None = None
) -> tuple[Any, Any]:
    """(plain model on the CPU in `dtype`, tokenizer) from a GGUF file. UnsupportedModel in one line, before any
    tensor is read, for an architecture or a tensor type we cannot read. `name`: what the config records as the
    model's path (the name the user gave)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from twossp_core.models.registry import check_supported
    from twossp_core.runtime.quiet import quiet_transformers

    header = read_header(path)
    check_readable(header)
    quiet_transformers()
    directory, file = str(path.parent), path.name
    try:
        config = AutoConfig.from_pretrained(directory, gguf_file=file)
        check_supported(getattr(config, "model_type", None))
        kwargs: dict[str, Any] = {"config": config, "dtype": dtype}
        try:  # transformers >= 5 could keep the weights packed where a kernel exists: always unpack them
            from transformers import GgufConfig

            kwargs["quantization_config"] = GgufConfig(dequantize=True)
        except ImportError:
            pass
        loaded = AutoModelForCausalLM.from_pretrained(directory, gguf_file=file, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=file)
    except (OSError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelNotFound(f"cannot load the GGUF file {file!r}: {first}") from None
    model = _plain_copy(loaded, dtype, name or str(path))
    del loaded
    _restore_pre_tokenizer(tokenizer, header.metadata.get("tokenizer.ggml.pre"))
    return model, tokenizer


def _readme(record: dict[str, Any], license_: str | None) -> str:
    front = f"---\nlicense: {license_}\n---\n\n" if license_ else ""
    return (f"{front}# {record.get('name') or record['file']}\n\nDequantized from the GGUF file `{record['file']}` "
            f"({record['quantization']}, sha256 `{record['sha256']}`) by `twossp convert-gguf`; config.json keeps "
            f"the source under `{SOURCE_KEY}`.\n")


def convert_gguf(path: Path, out_dir: Path, *, dtype: str = "float32",
                 progress: Any = None) -> dict[str, Any]:
    """Write the GGUF file `path` as a plain Hugging Face directory (config.json with the source record,
    model.safetensors, tokenizer files with the chat template, README.md) into `out_dir`, atomically. Returns the
    source record with the seconds taken."""
    from twossp_core.export.staging import staged_into
    from twossp_core.runtime.devices import resolve_dtype

    start = time.perf_counter()
    report = progress or (lambda stage, fraction: None)
    header = read_header(path)
    check_readable(header)
    report("read", 0.0)
    model, tokenizer = dequantize_gguf(path, dtype=resolve_dtype(dtype), name=str(out_dir))
    report("read", 1.0)
    record = source_record(path, header)
    report("write", 0.0)
    with staged_into(Path(out_dir)) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        config_path = tmp / "config.json"
        config = json.loads(config_path.read_text())
        config[SOURCE_KEY] = record
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        license_ = header.metadata.get("general.license")
        (tmp / "README.md").write_text(_readme(record, license_ if isinstance(license_, str) else None))
    report("write", 1.0)
    return {**record, "seconds": time.perf_counter() - start}

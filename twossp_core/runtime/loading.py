"""Loading causal LMs and tokenizers from a hub id or a local directory (pruned ones included)."""

from __future__ import annotations

from typing import Any

import torch

from twossp_core.errors import InvalidSpec, ModelNotFound
from twossp_core.export.compact_config import is_compact, to_base
from twossp_core.export.remote_modeling import STRUCTURE_KEY, pruned_class
from twossp_core.gguf_source import local_gguf
from twossp_core.models.registry import check_supported
from twossp_core.plan.sources import ModelInput
from twossp_core.runtime.devices import resolve_device, resolve_dtype
from twossp_core.runtime.hub import require_hub_model
from twossp_core.runtime.quiet import quiet_transformers


def load_config(model: ModelInput | str) -> Any:
    """The model's config (read where `model` says to open it); a compact twossp export's as its base
    architecture's (its structure attached)."""
    from transformers import CONFIG_MAPPING, AutoConfig, PretrainedConfig

    quiet_transformers()

    model_input = ModelInput.of(model)
    model_id, local = model_input.name, model_input.open_path
    gguf = local_gguf(model_input)
    if gguf is not None:
        return gguf_config_object(gguf)
    if local.exists() and not (local / "config.json").is_file():
        raise ModelNotFound(f"{model_id}: a local model directory must contain config.json")
    source = str(local) if local.exists() else model_id
    if not local.exists():
        require_hub_model(model_id)
    try:
        config_dict, _ = PretrainedConfig.get_config_dict(source)
        if is_compact(config_dict):
            base = to_base(config_dict)
            check_supported(base["model_type"])
            return CONFIG_MAPPING[base["model_type"]].from_dict(base)
        # never trust_remote_code: the adapters only cover architectures transformers ships
        return AutoConfig.from_pretrained(source, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        where = "local directory" if local.exists() else "Hugging Face hub id (or no network to reach the hub)"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelNotFound(f"cannot load model config for {model_id!r} as a {where}: {first}") from None


def gguf_config_object(path: Any) -> Any:
    """The config transformers' GGUF reader builds for a GGUF file (UnsupportedModel, in one line, for what we
    cannot read)."""
    from transformers import AutoConfig

    from twossp_core.gguf_source import check_readable, read_header

    check_readable(read_header(path))
    try:
        return AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelNotFound(f"cannot read the config of the GGUF file {path.name!r}: {first}") from None


def model_class(model_id: str, config: Any) -> Any:
    """The class that builds the model of `config`: a pruned twossp directory's own, else the Auto class."""
    import transformers
    from transformers import AutoModelForCausalLM

    if getattr(config, STRUCTURE_KEY, None):
        base = getattr(transformers, (config.architectures or [""])[0], None)
        if base is None:
            raise ModelNotFound(f"{model_id}: unknown architecture {config.architectures!r} in config.json")
        return pruned_class(base)
    return AutoModelForCausalLM


def empty_model(model_id: str, config: Any, dtype: torch.dtype) -> Any:
    """The model's modules on the meta device (no memory)."""
    cls = model_class(model_id, config)
    with torch.device("meta"):
        if getattr(config, STRUCTURE_KEY, None):
            return cls._from_config(config, dtype=dtype)
        return cls.from_config(config, dtype=dtype)


def load_model(
    source: ModelInput | str, *, dtype: str = "float32", device: str = "cpu", device_map: dict[str, Any] | None = None
) -> tuple[Any, Any]:
    """Return (model in eval mode on `device`, tokenizer), read where `source` says to open it. Pruned twossp
    directories load too. With `device_map` (module name -> device, accelerate's form) every module is read onto
    its device instead (`device` is unused)."""
    from transformers import AutoTokenizer

    quiet_transformers()

    model_input = ModelInput.of(source)
    model_id = model_input.name
    torch_dtype = resolve_dtype(dtype)
    target = resolve_device(device) if device_map is None else None
    gguf = local_gguf(model_input)
    if gguf is not None:  # dequantized in memory (runtime/gguf_load.py); the memory plan keeps it there
        if device_map is not None:
            raise InvalidSpec(f"{model_id}: a GGUF file runs in memory on one device; convert it once with "
                              "`twossp convert-gguf FILE --out DIR` and pass DIR")
        from twossp_core.runtime.gguf_load import dequantize_gguf

        model, tokenizer = dequantize_gguf(gguf, dtype=torch_dtype, name=model_id)
        return finish_loading(model, tokenizer, target)
    config = load_config(model_input)
    check_supported(getattr(config, "model_type", None))
    local = model_input.open_path
    where = str(local) if local.exists() else model_id
    kwargs: dict[str, Any] = {"dtype": torch_dtype, "trust_remote_code": False}
    if device_map is not None:
        kwargs["device_map"] = device_map
    try:
        model = model_class(model_id, config).from_pretrained(where, config=config, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(where, trust_remote_code=False)
    except OSError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelNotFound(f"cannot load {model_id!r}: {first}") from None
    return finish_loading(model, tokenizer, target)


def finish_loading(model: Any, tokenizer: Any, target: torch.device | None) -> tuple[Any, Any]:
    tokenizer.model_max_length = int(1e30)  # we cut windows ourselves; silence the length warning
    if target is not None:
        model.to(target)
    model.eval()
    model.config.use_cache = False
    return model, tokenizer

"""The config.json of a compact export (torch-free: the service's checks read it).

A compact directory stores only what remains of the model, so the base architecture must never load it: plain
transformers would re-create the removed modules with random weights and report only "missing" keys. Its config
therefore names its own `model_type` ("twossp_" + the base's) and architecture, both mapped through `auto_map`
to `modeling_twossp.py`: `AutoModelForCausalLM.from_pretrained(dir)` refuses without `trust_remote_code=True`,
and twossp (`load_pruned`) reads the base architecture back from `twossp_base`.
"""

from __future__ import annotations

from typing import Any

MODELING_FILE = "modeling_twossp.py"
MODEL_CLASS = "TwosspPrunedForCausalLM"
CONFIG_CLASS = "TwosspPrunedConfig"
MODEL_TYPE_PREFIX = "twossp_"
BASE_KEY = "twossp_base"  # {"model_type": "llama", "architecture": "LlamaForCausalLM"}


def is_compact(config: dict[str, Any]) -> bool:
    return isinstance(config.get(BASE_KEY), dict)


def to_compact(config: dict[str, Any]) -> dict[str, Any]:
    """`config` (a base-architecture config.json dict) as a compact export's config.json."""
    config = to_base(config)
    base = {"model_type": config["model_type"], "architecture": config["architectures"][0]}
    module = MODELING_FILE.removesuffix(".py")
    return {
        **config,
        BASE_KEY: base,
        "model_type": MODEL_TYPE_PREFIX + base["model_type"],
        "architectures": [MODEL_CLASS],
        "auto_map": {"AutoConfig": f"{module}.{CONFIG_CLASS}", "AutoModelForCausalLM": f"{module}.{MODEL_CLASS}"},
    }


def to_base(config: dict[str, Any]) -> dict[str, Any]:
    """The base architecture's config dict of a compact export's config.json (other configs unchanged)."""
    if not is_compact(config):
        return config
    base = config[BASE_KEY]
    plain = {key: value for key, value in config.items() if key not in (BASE_KEY, "auto_map")}
    return {**plain, "model_type": base["model_type"], "architectures": [base["architecture"]]}

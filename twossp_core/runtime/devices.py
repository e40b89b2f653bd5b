"""The device and dtype a request names, as torch's objects."""

from __future__ import annotations

import torch

from twossp_core.errors import InvalidSpec

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InvalidSpec("device 'cuda' was requested but no CUDA device is available")
    return torch.device(name)


def resolve_dtype(name: str) -> torch.dtype:
    try:
        return DTYPES[name]
    except KeyError:
        raise InvalidSpec(f"dtype {name!r} is not one of {', '.join(DTYPES)}") from None

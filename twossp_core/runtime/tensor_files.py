"""Single tensors read from safetensors files with plain file reads.

No memory map: a mapped file's pages count in the process's RSS for as long as the mapping lives, which would
put the whole model back into the peak RSS that block-by-block execution exists to bound. Reading one tensor
allocates exactly that tensor (the page cache holding the file is the kernel's, not the process's).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from twossp_core.errors import ModelNotFound

DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
INDEX_FILE = "model.safetensors.index.json"


@dataclass(frozen=True)
class TensorEntry:
    path: Path
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute byte offsets in the file
    end: int


def read_header(path: Path) -> dict[str, TensorEntry]:
    with open(path, "rb") as fh:
        (length,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(length))
    base = 8 + length
    entries = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        begin, finish = meta["data_offsets"]
        entries[name] = TensorEntry(path, meta["dtype"], tuple(meta["shape"]), base + begin, base + finish)
    return entries


def index_directory(directory: Path) -> dict[str, TensorEntry]:
    """Every tensor of the model's safetensors files (the shards the index names, or every *.safetensors)."""
    directory = Path(directory)
    index = directory / INDEX_FILE
    if index.is_file():
        files = sorted({directory / f for f in json.loads(index.read_text())["weight_map"].values()})
    else:
        files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise ModelNotFound(f"{directory}: block-by-block execution reads safetensors weights, and there are none")
    entries: dict[str, TensorEntry] = {}
    for path in files:
        entries.update(read_header(path))
    return entries


def read_tensor(entry: TensorEntry) -> torch.Tensor:
    dtype = DTYPES[entry.dtype]
    size = entry.end - entry.start
    buffer = torch.empty(size, dtype=torch.uint8)
    if size:
        view = memoryview(buffer.numpy()).cast("B")
        with open(entry.path, "rb", buffering=0) as fh:
            fh.seek(entry.start)
            done = 0
            while done < size:
                n = fh.readinto(view[done:])
                if not n:
                    raise ModelNotFound(f"{entry.path}: truncated safetensors file")
                done += n
    return buffer.view(dtype).reshape(entry.shape)

"""GGUF files as model sources (torch-free: the API and the preflight read them before anything is queued).

A model named by a `.gguf` file, or by a directory that holds exactly one `.gguf` and no config.json, is loaded
through transformers' GGUF reader and dequantized into a plain model (twossp_core/runtime/gguf_load.py). Here:

- `gguf_file_of`: which file a model name points at, if any;
- `read_header`: the file's metadata and tensor table, read with the `gguf` package's types. Its GGUFReader
  builds a numpy view for every element of every array, which takes seconds to tens of seconds on a vocabulary
  of 50k tokens and merges; this scan skips the long arrays and keeps their lengths;
- `check_readable`: one line naming what we cannot read (an architecture that is not a supported family or that
  transformers' GGUF reader does not build, a tensor type gguf-py cannot dequantize), before any work;
- `gguf_config`: the config.json transformers builds from the header, for the preflight and the memory plan;
- `model_source`: what the report and the model card record about the source (file name, sha256, types).
"""

from __future__ import annotations

import json
import mmap
import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twossp_core.errors import ModelNotFound, UnsupportedModel
from twossp_core.file_digests import file_digest
from twossp_core.plan.sources import ModelInput

GGUF_SUFFIX = ".gguf"
GGUF_MAGIC = b"GGUF"
# the key of a config dict (gguf_config) that says the model comes from a GGUF file: the memory plan runs it in
# memory only and counts its dequantization
GGUF_KEY = "twossp_gguf"
# the config.json key of a directory written by `twossp convert-gguf`: the GGUF file it was made from
SOURCE_KEY = "twossp_source"
SHORT_ARRAY = 64  # arrays up to this length are kept as values; longer ones (vocabulary, merges) as lengths
CONVERT_HINT = "twossp convert-gguf FILE --out DIR"


def is_gguf_name(path: Path) -> bool:
    return path.name.lower().endswith(GGUF_SUFFIX)


def has_gguf_magic(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            return handle.read(4) == GGUF_MAGIC
    except OSError:
        return False


def gguf_file_of(path: Path) -> Path | None:
    """The GGUF file a local model path names: the path itself (a `.gguf` file, or any file that starts with the
    GGUF magic, as a blob in the Hugging Face cache does), or the one `.gguf` in a directory without config.json.
    None for anything else (a Hugging Face directory, a missing path). A directory with several `.gguf` files and
    no config.json is ambiguous: ModelNotFound."""
    if path.is_file():
        return path if is_gguf_name(path) or has_gguf_magic(path) else None
    if not path.is_dir() or (path / "config.json").is_file():
        return None
    files = sorted(p for p in path.iterdir() if is_gguf_name(p) and p.is_file() and not p.name.startswith("."))
    if len(files) > 1:
        names = ", ".join(p.name for p in files[:4]) + (", ..." if len(files) > 4 else "")
        raise ModelNotFound(f"{path}: holds {len(files)} .gguf files ({names}) and no config.json; pass one file")
    return files[0] if files else None


def local_gguf(model: ModelInput | str) -> Path | None:
    """The GGUF file of `model`, found where it says to open it, or None."""
    path = ModelInput.of(model).open_path
    return gguf_file_of(path) if path.exists() else None


# -- the header ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # in GGUF order (fastest-moving dimension first)
    type_id: int


@dataclass
class GGUFHeader:
    path: Path
    version: int
    metadata: dict[str, Any]  # scalars, strings and short arrays
    array_lengths: dict[str, int]  # the long arrays, by length only
    tensors: list[TensorInfo] = field(default_factory=list)

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", ""))

    @property
    def tensor_names(self) -> set[str]:
        return {t.name for t in self.tensors}

    def tensor_types(self) -> dict[str, int]:
        """How many tensors are stored in each type (by its ggml name)."""
        return dict(Counter(type_name(t.type_id) for t in self.tensors).most_common())

    def quantization(self) -> str:
        """The file type as llama.cpp names it (`general.file_type`, e.g. Q4_1), else the most common matrix type."""
        import gguf

        file_type = self.metadata.get("general.file_type")
        if isinstance(file_type, int):
            try:
                name = gguf.LlamaFileType(file_type).name
                return name.removeprefix("MOSTLY_").removeprefix("ALL_")
            except ValueError:
                pass
        matrices = Counter(type_name(t.type_id) for t in self.tensors if len(t.shape) >= 2)
        return matrices.most_common(1)[0][0] if matrices else "unknown"


def type_name(type_id: int) -> str:
    import gguf

    try:
        return gguf.GGMLQuantizationType(type_id).name
    except ValueError:
        return f"type {type_id}"


class _Scanner:
    """Little-endian reads over the mapped file."""

    def __init__(self, data: Any, path: Path) -> None:
        self.data, self.pos, self.path = data, 0, path

    def unpack(self, fmt: str) -> tuple[Any, ...]:
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.data):
            raise ModelNotFound(f"{self.path.name}: not a complete GGUF file (its header ends early)")
        values = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += size
        return values

    def string(self) -> str:
        (length,) = self.unpack("<Q")
        if self.pos + length > len(self.data):
            raise ModelNotFound(f"{self.path.name}: not a complete GGUF file (its header ends early)")
        raw = bytes(self.data[self.pos:self.pos + length])
        self.pos += length
        return raw.decode("utf-8", errors="replace")


def _formats() -> dict[int, str]:
    import gguf

    t = gguf.GGUFValueType
    return {t.UINT8: "<B", t.INT8: "<b", t.UINT16: "<H", t.INT16: "<h", t.UINT32: "<I", t.INT32: "<i",
            t.FLOAT32: "<f", t.BOOL: "<?", t.UINT64: "<Q", t.INT64: "<q", t.FLOAT64: "<d"}


def _value(scan: _Scanner, kind: int, formats: dict[int, str]) -> Any:
    import gguf

    if kind == gguf.GGUFValueType.STRING:
        return scan.string()
    fmt = formats.get(kind)
    if fmt is None:
        raise ModelNotFound(f"{scan.path.name}: GGUF metadata value type {kind} is unknown")
    return scan.unpack(fmt)[0]


def read_header(path: Path) -> GGUFHeader:
    """The metadata and tensor table of a GGUF file (no tensor data is read). ModelNotFound when the file is not
    a GGUF file or its header is cut short."""
    import gguf

    formats = _formats()
    try:
        with path.open("rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
            scan = _Scanner(data, path)
            magic, version = scan.unpack("<II")
            if magic != gguf.GGUF_MAGIC:
                raise ModelNotFound(f"{path.name}: not a GGUF file")
            if version not in (2, 3):
                raise ModelNotFound(f"{path.name}: GGUF version {version} cannot be read (versions 2 and 3)")
            tensor_count, kv_count = scan.unpack("<QQ")
            metadata: dict[str, Any] = {}
            lengths: dict[str, int] = {}
            for _ in range(kv_count):
                key = scan.string()
                (kind,) = scan.unpack("<I")
                if kind != gguf.GGUFValueType.ARRAY:
                    metadata[key] = _value(scan, kind, formats)
                    continue
                item, count = scan.unpack("<IQ")
                if count <= SHORT_ARRAY:
                    metadata[key] = [_value(scan, item, formats) for _ in range(count)]
                    continue
                lengths[key] = count
                if item == gguf.GGUFValueType.STRING:
                    for _ in range(count):
                        (length,) = scan.unpack("<Q")
                        scan.pos += length
                elif item in formats:
                    scan.pos += count * struct.calcsize(formats[item])
                else:
                    raise ModelNotFound(f"{path.name}: GGUF array of value type {item} cannot be read")
            tensors = []
            for _ in range(tensor_count):
                name = scan.string()
                (dims,) = scan.unpack("<I")
                shape = scan.unpack(f"<{dims}Q")
                type_id, _offset = scan.unpack("<IQ")
                tensors.append(TensorInfo(name, tuple(int(d) for d in shape), int(type_id)))
    except ValueError:  # mmap of an empty file
        raise ModelNotFound(f"{path.name}: not a GGUF file (empty)") from None
    except OSError as exc:
        raise ModelNotFound(f"{path}: cannot be read ({exc.strerror or exc})") from None
    return GGUFHeader(path, int(version), metadata, lengths, tensors)


# -- what we can read ---------------------------------------------------------------------------------------------

def transformers_architectures() -> set[str]:
    """The GGUF architectures transformers' GGUF reader builds a config for (torch-free import)."""
    from transformers.integrations.ggml import GGUF_CONFIG_MAPPING

    return {arch for arch in GGUF_CONFIG_MAPPING if arch not in ("general", "tokenizer")}


def readable_architectures() -> list[str]:
    """GGUF architectures that are both a supported family and read by transformers (the GGUF name is the
    model_type transformers gives them)."""
    from twossp_core.models.registry import FAMILIES

    return sorted(set(FAMILIES) & transformers_architectures())


def dequantizable(type_id: int) -> bool:
    """Whether gguf-py (which transformers dequantizes with) turns this tensor type into floats."""
    import gguf
    import numpy as np

    try:
        qtype = gguf.GGMLQuantizationType(type_id)
        _, type_size = gguf.GGML_QUANT_SIZES[qtype]
        gguf.quants.dequantize(np.zeros(type_size, dtype=np.uint8), qtype)
    except (ValueError, KeyError, NotImplementedError):
        return False
    return True


def check_readable(header: GGUFHeader) -> None:
    """UnsupportedModel, in one line, for an architecture or a tensor type we cannot read."""
    arch = header.architecture
    if arch not in readable_architectures():
        raise UnsupportedModel(
            f"{header.path.name}: GGUF architecture {arch!r} cannot be pruned from a GGUF file; readable: "
            f"{', '.join(readable_architectures())}"
        )
    refused = sorted({type_name(t.type_id) for t in header.tensors if not dequantizable(t.type_id)})
    if refused:
        raise UnsupportedModel(
            f"{header.path.name}: GGUF tensor type {', '.join(refused)} cannot be dequantized (gguf-py reads F32, "
            "F16, BF16, Q4_0..Q8_0, the K and IQ types)"
        )


def gguf_config(header: GGUFHeader) -> dict[str, Any]:
    """The config dict transformers builds from the header (the keys of its GGUF config mapping, tied embeddings
    when the file has no output.weight, the vocabulary size from the token list), plus GGUF_KEY."""
    from transformers.integrations.ggml import GGUF_CONFIG_MAPPING

    arch = header.architecture
    cfg: dict[str, Any] = {"model_type": arch}
    for suffix, key in GGUF_CONFIG_MAPPING.get(arch, {}).items():
        value = header.metadata.get(f"{arch}.{suffix}")
        if value is not None and isinstance(key, str):
            cfg[key] = value
    cfg["tie_word_embeddings"] = "output.weight" not in header.tensor_names
    if "vocab_size" not in cfg and "tokenizer.ggml.tokens" in header.array_lengths:
        cfg["vocab_size"] = header.array_lengths["tokenizer.ggml.tokens"]
    cfg[GGUF_KEY] = {"file": header.path.name, "bytes": header.path.stat().st_size,
                     "quantization": header.quantization()}
    return cfg


def local_gguf_config(path: Path) -> dict[str, Any]:
    """The config of a GGUF file, after checking that we can read it (UnsupportedModel in one line)."""
    header = read_header(path)
    check_readable(header)
    return gguf_config(header)


# -- the source record --------------------------------------------------------------------------------------------


def source_record(path: Path, header: GGUFHeader | None = None) -> dict[str, Any]:
    """What the report (`source`) and the model card keep about a GGUF file."""
    header = header or read_header(path)
    return {
        "format": "gguf",
        "file": path.name,
        "sha256": file_digest(path),
        "bytes": path.stat().st_size,
        "quantization": header.quantization(),
        "tensor_types": header.tensor_types(),
        "architecture": header.architecture,
        "name": header.metadata.get("general.name"),
    }


def model_source(model: ModelInput | str) -> dict[str, Any] | None:
    """The source record of a model name: a GGUF file's, or the one a directory written by `convert-gguf` keeps in
    its config.json; None for anything else (a hub id, a plain directory)."""
    gguf = local_gguf(model)
    if gguf is not None:
        return source_record(gguf)
    config = ModelInput.of(model).open_path / "config.json"
    if not config.is_file():
        return None
    try:
        recorded = json.loads(config.read_text()).get(SOURCE_KEY)
    except (OSError, json.JSONDecodeError):
        return None
    return recorded if isinstance(recorded, dict) else None

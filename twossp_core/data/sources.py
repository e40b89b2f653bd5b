"""Reading documents from a `DataSource`: local .txt/.jsonl/.parquet files or hub dataset names."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path
from typing import Literal

from twossp_core.errors import DataError
from twossp_core.plan.sources import HUB_DATASETS, DataSource

Role = Literal["calibration", "eval"]
TEXT_FIELD = "text"

# (dataset path, config name, data_files, split, streaming) per role; documents are dataset rows.
_HUB: dict[str, dict[Role, dict]] = {
    "wikitext2": {
        "calibration": {"path": "wikitext", "name": "wikitext-2-raw-v1", "split": "train"},
        "eval": {"path": "wikitext", "name": "wikitext-2-raw-v1", "split": "test"},
    },
    "c4": {
        "calibration": {
            "path": "allenai/c4",
            "data_files": {"train": "en/c4-train.00000-of-01024.json.gz"},
            "split": "train",
        },
        "eval": {
            "path": "allenai/c4",
            "data_files": {"validation": "en/c4-validation.00000-of-00008.json.gz"},
            "split": "validation",
        },
    },
    "fineweb-edu": {
        # one stream; evaluation reads documents after the first FINEWEB_EVAL_OFFSET used for calibration
        "calibration": {"path": "HuggingFaceFW/fineweb-edu", "name": "sample-10BT", "split": "train"},
        "eval": {"path": "HuggingFaceFW/fineweb-edu", "name": "sample-10BT", "split": "train"},
    },
}
FINEWEB_EVAL_OFFSET = 100_000


def _check_file(path: Path, label: str) -> None:
    if not path.exists():
        known = ", ".join(HUB_DATASETS)
        raise DataError(f"data source {label!r}: no such file (hub datasets are: {known})")
    if not path.is_file():
        raise DataError(f"data source {label!r}: not a regular file")


def _txt_documents(path: Path, separator: str | None) -> list[str]:
    text = path.read_text(encoding="utf-8", errors="replace")
    if separator is None:
        return [text]
    return [piece.strip() for piece in text.split(separator) if piece.strip()]


def check_txt_range(source: DataSource, doc_separator: str | None) -> None:
    """Refuse a document range of a local .txt file that selects nothing, before any model is loaded: without a
    separator the file is one document (the usual slip is a forgotten --doc-separator)."""
    path = source.open_path
    if path.suffix.lower() != ".txt" or not source.start or not path.is_file():
        return
    if doc_separator is None:
        raise DataError(
            f"data source {source.label!r}: a .txt file without a document separator (`doc_separator`) is one "
            f"document, so the range {source.start}:{source.end if source.end is not None else ''} selects nothing; "
            "pass the separator that splits it into documents"
        )
    count = len(_txt_documents(path, doc_separator))
    if source.start >= count:
        raise DataError(
            f"data source {source.label!r}: the range starts at document {source.start} but the file has only "
            f"{count} documents separated by {doc_separator!r}"
        )


def _jsonl_documents(path: Path) -> Iterator[str]:
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}: line {lineno} is not JSON ({exc.msg})") from None
            if not isinstance(row, dict) or not isinstance(row.get(TEXT_FIELD), str):
                raise DataError(f"{path}: line {lineno} has no string field {TEXT_FIELD!r}")
            yield row[TEXT_FIELD]


def _parquet_documents(path: Path) -> list[str]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path, columns=[TEXT_FIELD])
    except Exception as exc:  # pyarrow raises several types for bad files / missing columns
        raise DataError(f"{path}: cannot read column {TEXT_FIELD!r} from parquet ({exc})") from None
    return [str(t) for t in table.column(TEXT_FIELD).to_pylist() if t is not None]


def _hub_documents(source: DataSource, role: Role) -> Iterator[str]:
    try:
        import datasets
    except ImportError:
        raise DataError(
            f"data source {source.name!r} comes from the Hugging Face hub: install the 'datasets' package "
            "or pass a local .txt/.jsonl/.parquet file"
        ) from None
    args = dict(_HUB[source.name][role])
    split = args.pop("split")
    try:
        ds = datasets.load_dataset(**args, split=split, streaming=True)
    except Exception as exc:  # network or hub errors come in many types
        raise DataError(f"cannot load hub dataset {source.name!r} ({type(exc).__name__}: {exc})") from None
    rows = (row[TEXT_FIELD] for row in ds)
    if source.name == "fineweb-edu" and role == "eval":
        rows = islice(rows, FINEWEB_EVAL_OFFSET, None)
    return rows


def iter_documents(source: DataSource, role: Role, doc_separator: str | None = None) -> Iterator[str]:
    """Documents START..END-1 of the source (a local file read where the source says to open it), in order."""
    docs: Iterable[str]
    path = source.open_path
    if source.is_hub and not path.exists():
        docs = _hub_documents(source, role)
    else:
        _check_file(path, source.label)
        suffix = path.suffix.lower()
        if suffix == ".txt":
            docs = _txt_documents(path, doc_separator)
        elif suffix == ".jsonl":
            docs = _jsonl_documents(path)
        elif suffix == ".parquet":
            docs = _parquet_documents(path)
        else:
            raise DataError(f"data source {source.label!r}: unsupported file type {suffix!r} (.txt, .jsonl, .parquet)")
    return islice(docs, source.start or 0, source.end)

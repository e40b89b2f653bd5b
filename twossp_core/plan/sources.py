"""A job's inputs as a request names them: text sources (a hub dataset or a local file, with an optional document
range) and the model (a hub id, a local directory or GGUF file).

Each also says where a job opens it: at its name, unless the caller gave it another path (the service's worker opens
and checks a job's local files first, and has the job read exactly those: worker/inputs.py). Reports, labels and
keys use the name; only reading uses the path.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace
from pathlib import Path

from twossp_core.errors import InvalidSpec
from twossp_core.plan.limits import MAX_DOCUMENT_INDEX

HUB_DATASETS = ("wikitext2", "c4", "fineweb-edu")

_SOURCE_RE = re.compile(r"(?P<name>.+?)(?::(?P<start>\d*):(?P<end>\d*))?", re.DOTALL)
# a tail that looks like a document range but is not two plain integers (`:1e23`, `:-1:5`, `:0:1.5`)
_BAD_RANGE_RE = re.compile(r":[^:/\\]*:[^:/\\]*$")


@dataclass(frozen=True)
class DataSource:
    """One text source: a hub dataset name or a local file, with an optional document range."""

    name: str
    start: int | None = None
    end: int | None = None
    path: Path | None = None  # where the job opens the file, when not at its name (`opened_at`)

    @property
    def is_hub(self) -> bool:
        return self.name in HUB_DATASETS

    @property
    def open_path(self) -> Path:
        """The path to open: the one it was given (`opened_at`), else its name."""
        return self.path if self.path is not None else Path(self.name).expanduser()

    def opened_at(self, path: Path | None) -> DataSource:
        """The same source, read from `path` (None: from its name)."""
        return replace(self, path=path)

    @property
    def label(self) -> str:
        if self.start is None and self.end is None:
            return self.name
        return f"{self.name}:{'' if self.start is None else self.start}:{'' if self.end is None else self.end}"

    @classmethod
    def parse(cls, text: str) -> DataSource:
        """Parse `NAME` or `PATH[:START:END]` (documents START..END-1, either bound may be empty)."""
        if not isinstance(text, str) or not text.strip():
            raise InvalidSpec("a data source must be a non-empty string (a dataset name or PATH[:START:END])")
        if any(ch in text for ch in "\x00\n\r"):
            raise InvalidSpec(f"data source {text!r}: control characters are not allowed")
        match = _SOURCE_RE.fullmatch(text.strip())
        assert match is not None
        if match["start"] is None and _BAD_RANGE_RE.search(match["name"]):
            raise InvalidSpec(f"data source {text!r}: a document range is PATH:START:END with plain integers")
        start = int(match["start"]) if match["start"] else None
        end = int(match["end"]) if match["end"] else None
        for bound in (start, end):
            if bound is not None and bound > MAX_DOCUMENT_INDEX:
                raise InvalidSpec(f"data source {text!r}: document indices are at most {MAX_DOCUMENT_INDEX:,}")
        if start is not None and end is not None and end <= start:
            raise InvalidSpec(f"data source {text!r}: END ({end}) must be greater than START ({start})")
        return cls(name=match["name"], start=start, end=end)


@dataclass(frozen=True)
class ModelInput:
    """The model as a request names it (a hub id, a local model directory or GGUF file) and where a job opens it."""

    name: str
    path: Path | None = None  # where the job opens it, when not at its name

    @classmethod
    def of(cls, model: ModelInput | str) -> ModelInput:
        """`model` as a ModelInput; a plain name is opened at itself."""
        return model if isinstance(model, ModelInput) else cls(model)

    @property
    def open_path(self) -> Path:
        """The path to open (a local directory or file; for a hub id, a path that is normally not there)."""
        return self.path if self.path is not None else Path(self.name).expanduser()

    @property
    def named_path(self) -> Path:
        """The path the name stands for, for what to call the model (its directory's name, a hub-cache repository):
        where the name resolves; for a model opened elsewhere, the name itself, made absolute without following
        links (the opened copy's own path says nothing about it)."""
        if self.path is not None:
            return Path(os.path.abspath(os.path.expanduser(self.name)))
        return self.open_path.resolve()

"""Dense work shared across processes: the dense model's measurements, the heal's control and the statistics
methods keep in `Workspace.cache`, stored once as content-addressed artifacts and read by every process that needs
them (the service's sweep cells, on any worker).

The key of an artifact is the sha256 of a canonical JSON (`describe_workspace`) of everything that determines the
dense work: the model's content (the files of a local directory, a GGUF file's sha256, or a hub revision), the
tokens of the calibration and evaluation windows (which fix the data files, ranges, separator, seq_len, windows and
tokenizer), the zero-shot items, dtype, device, memory mode, whether throughput is measured, and the code (torch,
transformers, twossp and a digest of twossp_core's sources). A statistic's key adds the workspace key to the
method's cache key (which names what it depends on: windows, batch size).

This module knows nothing of the store: a caller hands `cell_workspace` an `ArtifactCache` (load / save / lock;
the worker implements it with its artifact store and database). Without one, as in `run_sweep`, everything is
shared in memory only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from twossp_core import __version__
from twossp_core.file_digests import file_digest
from twossp_core.local_inputs import stat_path

log = logging.getLogger(__name__)

DENSE_FILE = "dense.json"
CONTROL_FILE = "control.json"
VALUE_FILE = "value.pt"
# cache entries stored across processes, by the first element of their key: "once" entries are written by the
# process that computed them; "grows" entries (BlockPruner's greedy order, shared across sparsities by its prefix
# property) are extended by later processes under the lock and written again. The EvoPress dense reference is left
# out on purpose: it holds every block's input for every calibration token (gigabytes on a large model), more than
# the one dense forward pass that recomputes it.
PERSISTED: dict[str, str] = {
    "2ssp.neuron_scores": "once",
    "depth.last_token_states": "once",
    "blockpruner.removal_order": "grows",
}


class ArtifactCache(Protocol):
    """Where shared dense work is kept (the service: its artifact store, locks in its database). A cache may delete
    artifacts nobody used for a while (the service's expiry counts each `load` and `save` as a use and never deletes
    one whose lock is held); a `load` that finds the files gone returns None or raises, and the caller computes them
    again."""

    def load(self, key: str, into: Path) -> dict[str, Any] | None:
        """Copy the artifact's files into `into` (checked against its manifest) and return the manifest, or None
        when there is no complete artifact under `key`."""

    def save(self, key: str, files: Path, manifest: dict[str, Any]) -> str:
        """Store the files of `files` under `key` with `manifest` (its `files` are added), replacing what was there;
        returns the artifact's name as reports show it."""

    def lock(self, key: str, checkpoint: Callable[[], None]) -> AbstractContextManager[None]:
        """Held while one process computes `key`; waiting calls `checkpoint` between tries (it may raise to stop)."""

    def file_digest(self, path: Path) -> str:
        """sha256 of a file of the model (a cache may remember them, e.g. with FileDigests)."""


def canonical(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def digest(data: Any) -> str:
    return hashlib.sha256(canonical(data).encode()).hexdigest()


def tensor_digest(tensor: torch.Tensor) -> str:
    t = tensor.detach().to("cpu").contiguous()
    h = hashlib.sha256(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(t.numpy().tobytes())
    return h.hexdigest()


_CODE: str | None = None


def code_digest() -> str:
    """sha256 over twossp_core's Python sources (paths and contents): a change of code is a new key."""
    global _CODE
    if _CODE is None:
        root = Path(__file__).resolve().parent
        h = hashlib.sha256()
        for path in sorted(root.rglob("*.py")):
            h.update(path.relative_to(root).as_posix().encode() + b"\0")
            h.update(path.read_bytes() + b"\0")
        _CODE = h.hexdigest()
    return _CODE


def model_identity(ws: Any, sha256: Callable[[Path], str] = file_digest) -> dict[str, Any] | None:
    """What the model's weights are: a GGUF file's sha256, every file of a local directory (hashed by `sha256`), or
    the hub revision the loader resolved; None when it cannot be told (then nothing is shared)."""
    if ws.source and ws.source.get("sha256"):
        return {"gguf": ws.source["sha256"]}
    path = ws.spec.model_input().open_path
    st = stat_path(path)
    if st is not None:
        if path.is_file():
            return {"file": sha256(path)}
        files = sorted(p for p in path.rglob("*") if p.is_file())
        return {"files": {p.relative_to(path).as_posix(): sha256(p) for p in files}}
    revision = getattr(ws.model.config, "_commit_hash", None)
    return {"hub": ws.spec.model, "revision": revision} if revision else None


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    import platform

    return f"{device.type}:{platform.machine()}"


def describe_workspace(ws: Any, sha256: Callable[[Path], str] = file_digest) -> dict[str, Any] | None:
    """Everything the dense measurements and statistics of a workspace depend on (None: the model's content cannot
    be told, so nothing is shared); `sha256` hashes the model's files (a FileDigests remembers them)."""
    import transformers

    model = model_identity(ws, sha256)
    if model is None:
        return None
    spec = ws.spec
    described = {
        "model": model,
        "seq_len": ws.seq_len,
        "calibration": tensor_digest(ws.calibration),
        "eval": {label: tensor_digest(w) for label, w in ws.evals.items()},
        "eval_order": list(ws.evals),
        "tasks": {"names": list(spec.tasks), "limits": spec.task_limit_map(),
                  "items": hashlib.sha256(repr([t.segments for t in ws.zero_shot_tasks]).encode()).hexdigest()}
        if ws.zero_shot_tasks else None,
        "dtype": spec.dtype,
        "device": device_name(ws.device),
        "mode": ws.memory_plan.mode if ws.memory_plan is not None else None,
        "measure_throughput": spec.measure_throughput,
        "code": {"twossp": __version__, "sources": code_digest(), "torch": torch.__version__,
                 "transformers": transformers.__version__},
    }
    return described


def describe_control(ws: Any, dense_key: str) -> dict[str, Any]:
    """What the heal's control depends on besides the workspace: the heal's settings, its data and the seed."""
    data = []
    for source in ws.spec.heal_sources():
        path = source.open_path
        st = stat_path(path) if not source.is_hub or path.exists() else None
        data.append({"source": source.label, "sha256": file_digest(path) if st is not None and path.is_file()
                     else None})
    assert ws.spec.heal is not None
    heal = ws.spec.heal.for_model(ws.dense_params["total"])  # the rate it runs with, whether chosen or requested
    return {"workspace": dense_key, "heal": heal.model_dump(mode="json"), "data": data, "seed": ws.spec.seed}


@dataclass
class Use:
    """One shared artifact a run used: computed here, or reused from an earlier run."""

    kind: str  # dense, control, or the cache entry's name
    artifact: str
    reused: bool
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "artifact": self.artifact, "reused": self.reused,
                "seconds": round(self.seconds, 3),
                "note": f"reused from {self.artifact}" if self.reused else f"computed and stored as {self.artifact}"}


def load_or_compute(
    cache: ArtifactCache, kind: str, key: str, described: dict[str, Any], checkpoint: Callable[[], None],
    compute: Callable[[Path], None], apply: Callable[[Path], None],
) -> Use:
    """Read the artifact `key` and `apply` its files; when there is none, compute it (`compute` writes the files)
    under the lock, store it, and apply nothing (the computation already filled the workspace). The lock makes one
    process compute it while the others wait and read it."""
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="twossp-shared-") as tmp:
        work = Path(tmp)
        found = _load(cache, key, work / "in")
        if found is None:
            with cache.lock(key, checkpoint):
                found = _load(cache, key, work / "in")
                if found is None:
                    out = work / "out"
                    out.mkdir()
                    compute(out)
                    name = cache.save(key, out, {"kind": kind, "key": key, "describes": described,
                                                 "twossp": __version__})
                    return Use(kind, name, False, time.perf_counter() - start)
        apply(work / "in")
        return Use(kind, found["name"], True, time.perf_counter() - start)


def _load(cache: ArtifactCache, key: str, into: Path) -> dict[str, Any] | None:
    into.mkdir(parents=True, exist_ok=True)
    try:
        return cache.load(key, into)
    except Exception as exc:  # a damaged artifact is computed again (and replaced)
        log.warning("shared artifact %s unreadable (%s: %s); computing it again", key, type(exc).__name__, exc)
        return None


def cache_entry(key: Any) -> tuple[str, str] | None:
    """(name, how it is stored) of a persisted cache key, else None."""
    first = key[0] if isinstance(key, tuple) and key else key
    if not isinstance(first, str):
        return None
    for name, how in PERSISTED.items():
        if first == name or first.startswith(name + "."):
            return name, how
    return None


def _plain(key: Any) -> Any:
    return list(key) if isinstance(key, tuple) else key


class SharedCache(dict):  # type: ignore[type-arg]
    """`Workspace.cache` backed by an ArtifactCache: a persisted entry missing in memory is read from the store; when
    the store has none, this process takes the entry's lock, computes it (the method does) and stores it when it is
    set ("once") or when the run ends (`flush`, for "grows"), so each entry is computed once across processes."""

    def __init__(self, cache: ArtifactCache, workspace_key: str, checkpoint: Callable[[], None]) -> None:
        super().__init__()
        self.store, self.workspace_key, self.checkpoint = cache, workspace_key, checkpoint
        self.held: dict[Any, AbstractContextManager[None]] = {}  # entries whose lock this process holds
        self.loaded: dict[Any, int] = {}  # "grows" entries: their length when read
        self.started: dict[Any, float] = {}
        self.uses: list[Use] = []

    def key_of(self, key: Any) -> str:
        return digest({"workspace": self.workspace_key, "entry": _plain(key)})

    def _fetch(self, key: Any) -> None:
        """Bring a persisted entry into memory if the store has it; else hold its lock (this process computes it)."""
        entry = cache_entry(key)
        if entry is None or key in self.held or super().__contains__(key):
            return
        name, how = entry
        start = time.perf_counter()
        skey = self.key_of(key)
        if how == "once" and self._read(key, skey, name, start):
            return
        lock = self.store.lock(skey, self.checkpoint)
        lock.__enter__()
        self.held[key] = lock
        self.started[key] = start
        if self._read(key, skey, name, start) and how == "once":
            self._release(key)

    def _read(self, key: Any, skey: str, name: str, start: float) -> bool:
        with tempfile.TemporaryDirectory(prefix="twossp-shared-") as tmp:
            found = _load(self.store, skey, Path(tmp))
            if found is None:
                return False
            # saved from the same kind of device (the key names it)
            where = None if torch.cuda.is_available() else "cpu"
            value = torch.load(Path(tmp) / VALUE_FILE, map_location=where, weights_only=True)
        super().__setitem__(key, value)
        if isinstance(value, list):
            self.loaded[key] = len(value)
        self.uses.append(Use(name, found["name"], True, time.perf_counter() - start))
        return True

    def _release(self, key: Any) -> None:
        lock = self.held.pop(key, None)
        if lock is not None:
            lock.__exit__(None, None, None)

    def _store(self, key: Any, value: Any) -> None:
        entry = cache_entry(key)
        assert entry is not None
        skey = self.key_of(key)
        with tempfile.TemporaryDirectory(prefix="twossp-shared-") as tmp:
            torch.save(value, Path(tmp) / VALUE_FILE)
            artifact = self.store.save(skey, Path(tmp), {"kind": entry[0], "key": skey, "entry": _plain(key),
                                                         "workspace": self.workspace_key, "twossp": __version__})
        seconds = time.perf_counter() - self.started[key] if key in self.started else 0.0
        self.uses.append(Use(entry[0], artifact, False, seconds))

    def get(self, key: Any, default: Any = None) -> Any:
        self._fetch(key)
        return super().get(key, default)

    def __getitem__(self, key: Any) -> Any:
        self._fetch(key)
        return super().__getitem__(key)

    def __contains__(self, key: object) -> bool:
        self._fetch(key)
        return super().__contains__(key)

    def setdefault(self, key: Any, default: Any = None) -> Any:
        self._fetch(key)
        if not super().__contains__(key):
            super().__setitem__(key, default)
        return super().__getitem__(key)

    def __setitem__(self, key: Any, value: Any) -> None:
        super().__setitem__(key, value)
        entry = cache_entry(key)
        if entry is not None and entry[1] == "once" and key in self.held:
            try:
                self._store(key, value)
            finally:
                self._release(key)

    def flush(self) -> None:
        """Store the "grows" entries this run extended and release every lock still held."""
        for key in list(self.held):
            try:
                entry = cache_entry(key)
                value = super().get(key)
                if entry is not None and entry[1] == "grows" and isinstance(value, list) \
                        and len(value) > self.loaded.get(key, 0):
                    self._store(key, [dict(step) for step in value])
            except Exception as exc:  # the statistic is only not shared: a later run computes it again
                log.warning("storing shared statistic %r failed: %s: %s", key, type(exc).__name__, exc)
            finally:
                self._release(key)

    def iter_uses(self) -> Iterator[dict[str, Any]]:
        for use in self.uses:
            yield use.as_dict()

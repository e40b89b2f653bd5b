"""Streaming a job's artifact as an uncompressed tar: `manifest.json` plus `model/<files>`.

The tar is produced by a background thread into a bounded queue, so memory stays flat for large models.
"""

from __future__ import annotations

import queue
import tarfile
import threading
import time
from collections.abc import Iterator

from service.store import ArtifactStore
from service.store.base import Manifest

_DONE = object()


class _ChunkReader:
    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buf = b""

    def read(self, size: int = -1) -> bytes:
        while size < 0 or len(self._buf) < size:
            try:
                self._buf += next(self._chunks)
            except StopIteration:
                break
        if size < 0:
            out, self._buf = self._buf, b""
        else:
            out, self._buf = self._buf[:size], self._buf[size:]
        return out


class _QueueWriter:
    def __init__(self, out: queue.Queue, stop: threading.Event) -> None:
        self._out = out
        self._stop = stop

    def write(self, data: bytes) -> int:
        while not self._stop.is_set():
            try:
                self._out.put(bytes(data), timeout=0.5)
                return len(data)
            except queue.Full:
                continue
        raise BrokenPipeError("download abandoned")


def stream_tar(store: ArtifactStore, prefix: str, manifest: Manifest, manifest_raw: bytes) -> Iterator[bytes]:
    out: queue.Queue = queue.Queue(maxsize=16)
    stop = threading.Event()

    def produce() -> None:
        try:
            with tarfile.open(fileobj=_QueueWriter(out, stop), mode="w|", format=tarfile.PAX_FORMAT) as tar:
                now = int(time.time())
                info = tarfile.TarInfo("manifest.json")
                info.size, info.mtime, info.mode = len(manifest_raw), now, 0o644
                tar.addfile(info, _ChunkReader(iter([manifest_raw])))
                for entry in manifest["files"]:
                    info = tarfile.TarInfo(f"model/{entry['path']}")
                    info.size, info.mtime, info.mode = entry["size"], now, 0o644
                    tar.addfile(info, _ChunkReader(store.iter_bytes(f"{prefix}/files/{entry['path']}")))
            out.put(_DONE)
        except BaseException as exc:  # surfaced to the consumer, which aborts the response
            out.put(exc)

    thread = threading.Thread(target=produce, name="artifact-tar", daemon=True)
    thread.start()
    try:
        while True:
            item = out.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()

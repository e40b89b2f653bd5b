"""Measured memory peaks of a job: the process's peak RSS (VmHWM, the interpreter and torch included) and the
CUDA device's peak allocated bytes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

STATUS = Path("/proc/self/status")
CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_bytes(key: str) -> int | None:
    try:
        for line in STATUS.read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    return None


def current_rss() -> int | None:
    value = _status_bytes("VmRSS")
    if value is None:
        try:
            import psutil

            value = int(psutil.Process().memory_info().rss)
        except Exception:  # pragma: no cover - psutil is a dependency
            return None
    return value


def peak_rss() -> int | None:
    """VmHWM: the highest RSS since the process started or since `reset_peaks` (Linux)."""
    return _status_bytes("VmHWM")


class PeakMeter:
    """Peaks since construction. The host peak is reset to the current RSS when the kernel allows it (writing 5
    to clear_refs), so a worker process running many jobs reports each job's own peak; `host_reset` says whether
    it was (if not, the peak may belong to an earlier job in the same process)."""

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self.start_rss = current_rss()
        self.host_reset = False
        try:
            CLEAR_REFS.write_text("5")
            self.host_reset = True
        except OSError:
            pass
        # every visible GPU's peak where there are several (a multi-device job spreads over them)
        self.gpus = torch.cuda.device_count() if self.device.type == "cuda" else 0
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            if self.gpus > 1:
                for index in range(self.gpus):
                    torch.cuda.reset_peak_memory_stats(index)

    def measured(self) -> dict[str, Any]:
        device_peak = None
        if self.device.type == "cuda":
            device_peak = int(torch.cuda.max_memory_allocated(self.device))
        measured: dict[str, Any] = {
            "host_peak_rss": peak_rss(),
            "host_rss_at_start": self.start_rss,
            "host_peak_reset_at_start": self.host_reset,
            "device_peak_allocated": device_peak,
        }
        if self.gpus > 1:
            measured["device_peaks_allocated"] = {
                f"cuda:{i}": int(torch.cuda.max_memory_allocated(i)) for i in range(self.gpus)}
        return measured

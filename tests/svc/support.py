"""Small helpers shared by the service tests."""

from __future__ import annotations

import socket
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def s3_settings(endpoint: str, bucket: str) -> dict[str, object]:
    return {
        "artifact_store": "s3",
        "s3_endpoint_url": endpoint,
        "s3_bucket": bucket,
        "s3_region": "us-east-1",
        "s3_access_key": "test",
        "s3_secret_key": "test",
    }


def job_body(model: Path, text: Path, **overrides: object) -> dict[str, object]:
    """The real-model protocol, kept small: a few windows so a job takes seconds."""
    body: dict[str, object] = {
        "model": str(model),
        "sparsity": 0.375,
        "calibration": [f"{text}:0:500"],
        "eval": [f"{text}:500:520"],
        "doc_separator": "<|endoftext|>",
        "seq_len": 512,
        "calibration_windows": 8,
        "measure_throughput": False,
    }
    body.update(overrides)
    return body


def stuck_body(models_dir: Path, model: Path, text: Path) -> dict[str, object]:
    """A job whose calibration is one 12 MB document (written into models_dir, an allowed root): tokenizing it
    is a single call of many seconds with no safe point to stop at."""
    document = models_dir / "one-long-document.txt"
    if not document.exists():
        document.write_text(text.read_text().replace("<|endoftext|>", "") * 15)
    return job_body(model, text, calibration=[str(document)])

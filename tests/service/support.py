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

"""The main job on the embedded default, as a user would run it.

Starts `twossp serve` (SQLite + local artifact folder + in-process worker), creates an API key, submits a
2SSP job on the real stories260k model, follows its stage and percent, downloads and verifies the pruned
model against the job's manifest, loads it with plain transformers and prints the report.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from twossp_core.example_data import example_data_dir

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def twossp(*args: str) -> list[str]:
    """The twossp command of this Python (the installed script, else the module)."""
    exe = Path(sys.executable).with_name("twossp")
    return [str(exe), *args] if exe.exists() else [sys.executable, "-m", "twossp_core.cli", *args]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(example_data_dir(REPO, "TWOSSP_EXAMPLE_DATA")),
                        help="folder with models/stories260k and text/tinystories-val-1000.txt (default: "
                             "$TWOSSP_EXAMPLE_DATA, else shared/data beside this checkout or beside the one it was "
                             "cloned from)")
    parser.add_argument("--sparsity", type=float, default=0.375)
    parser.add_argument("--method", default="2ssp")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--heal", choices=["kd", "lm"], default=None, help="heal the pruned model (default: no heal)")
    parser.add_argument("--workdir", default=str(REPO / "twossp-data"), help="TWOSSP_DATA_DIR for the service")
    args = parser.parse_args()

    data = Path(args.data).resolve()
    model, text = data / "models" / "stories260k", data / "text" / "tinystories-val-1000.txt"
    if not model.is_dir() or not text.is_file():
        print(f"quickstart: {model} or {text} not found: pass --data DIR (or set TWOSSP_EXAMPLE_DATA) to the "
              "folder holding models/ and text/", file=sys.stderr)
        return 1
    env = {**os.environ, "TWOSSP_DATA_DIR": args.workdir, "TWOSSP_ALLOWED_LOCAL_ROOTS": str(data)}
    for key in ("TWOSSP_DATABASE_URL", "TWOSSP_BROKER_URL", "TWOSSP_ARTIFACT_STORE"):
        env.pop(key, None)  # the embedded default: nothing configured
    port = free_port()
    api = f"http://127.0.0.1:{port}"

    key = subprocess.run(twossp("keys", "create", "quickstart"), env=env, check=True,
                         capture_output=True, text=True).stdout.strip().splitlines()[-1]
    server = subprocess.Popen(twossp("serve", "--port", str(port), "--log-level", "warning"), env=env)
    try:
        with httpx.Client(base_url=api, headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
            for _ in range(120):
                try:
                    if client.get("/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.5)
            else:
                print("quickstart: the server did not start", file=sys.stderr)
                return 1
            body = {
                "model": str(model), "sparsity": args.sparsity, "method": args.method,
                "calibration": [f"{text}:0:500"], "eval": [f"{text}:500:1000"],
                "doc_separator": "<|endoftext|>", "seq_len": 512, "device": args.device, "dtype": args.dtype,
            }
            if args.heal:
                body["heal"] = {"loss": args.heal}
            job = client.post("/jobs", json=body).raise_for_status().json()
            print(f"submitted job {job['id']} to {api}")
            from tqdm import tqdm

            with tqdm(total=100, file=sys.stderr, bar_format="{desc:<20} {percentage:3.0f}%|{bar}| {elapsed}") as bar:
                while True:
                    job = client.get(f"/jobs/{job['id']}").raise_for_status().json()
                    bar.set_description_str(job.get("stage") or job["state"], refresh=False)
                    bar.update(max(0.0, round(job.get("progress") or 0) - bar.n))
                    if job["state"] in ("succeeded", "failed", "cancelled"):
                        break
                    time.sleep(0.5)
            if job["state"] != "succeeded":
                print(f"quickstart: job {job['state']}: {job.get('error')}", file=sys.stderr)
                return 1

        from api.client import download_artifact
        from twossp_core.cli.summary import format_summary

        dest = Path(args.workdir) / "downloads" / job["id"]
        model_dir = download_artifact(api, key, job["id"], dest)
        print(f"downloaded and verified against the manifest: {model_dir}")
        from transformers import AutoModelForCausalLM
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        pruned = AutoModelForCausalLM.from_pretrained(model_dir, trust_remote_code=True)
        print(f"loaded with transformers: {pruned.num_parameters():,} parameters")
        print(format_summary(job["report"]))
        (dest / "job.json").write_text(json.dumps(job, indent=2))
        return 0
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    sys.exit(main())

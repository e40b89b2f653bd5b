"""The serving recipes of the README: `llama-server -m OUT/model.gguf`, `python -m llama_cpp.server --model
OUT/model.gguf` (llama-cpp-python's OpenAI-compatible server, installed with the dev tools, so it runs wherever the
tests run) and `vllm serve OUT` each answer one chat completion with the exported chat template.

Each test needs its engine on PATH. Without it the test is skipped, unless TWOSSP_TEST_ENGINES names the engine
(comma-separated: `llama-server,vllm`), as CI does where it installs them: then it fails.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch
from test_export_loading import CHAT_TEMPLATE

from twossp_core.export.registry import run_export
from twossp_core.models.registry import adapter_for

pytestmark = pytest.mark.slow

REQUIRED = {name.strip() for name in os.environ.get("TWOSSP_TEST_ENGINES", "").split(",") if name.strip()}
QUESTION = [{"role": "user", "content": "Once upon a time"}]


def engine(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        if name in REQUIRED:
            pytest.fail(f"{name} is not on PATH (TWOSSP_TEST_ENGINES requires it)")
        pytest.skip(f"{name} is not installed")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, stories_model: Path) -> Path:
    """A tiny instruct-like llama (the stories tokenizer with a chat template), pruned (block 1 without attention)
    and saved in the formats the engines read: gguf/, portable/ and decilm/."""
    import transformers as tf
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    config = tf.LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=256, num_hidden_layers=3,
                            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    root = tmp_path_factory.mktemp("serve")
    for fmt in ("gguf", "portable", "decilm"):
        model = AutoModelForCausalLM.from_config(config).eval()
        adapter_for(model).remove_attention(1)
        tokenizer = AutoTokenizer.from_pretrained(stories_model)
        tokenizer.chat_template = CHAT_TEMPLATE
        run_export(fmt, model, tokenizer, root / fmt, {"method": "2ssp", "model": str(stories_model)}, None)
    return root


def serve(argv: list[str], port: int, timeout_s: float = 600, ready: str = "/health") -> Iterator[str]:
    base = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"{argv[0]} exited {proc.returncode}: {proc.stdout.read()[-3000:]}")  # type: ignore[union-attr]
            try:
                if httpx.get(f"{base}{ready}", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        else:
            pytest.fail(f"{argv[0]} did not come up in {timeout_s:.0f} s")
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def one_chat_completion(base: str, model: str | None = None) -> dict:
    body = {"messages": QUESTION, "max_tokens": 8, "temperature": 0}
    if model is not None:
        body["model"] = model
    response = httpx.post(f"{base}/v1/chat/completions", json=body, timeout=300)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["choices"][0]["message"]["role"] == "assistant"
    assert isinstance(answer["choices"][0]["message"]["content"], str)
    assert answer["usage"]["completion_tokens"] >= 1
    return answer


def test_llama_server_answers_a_chat_completion(exported: Path) -> None:
    binary = engine("llama-server")
    port = free_port()
    # --jinja: the chat template inside model.gguf, as exported
    argv = [binary, "-m", str(exported / "gguf" / "model.gguf"), "--host", "127.0.0.1", "--port", str(port),
            "-c", "256", "--jinja"]
    for base in serve(argv, port):
        answer = one_chat_completion(base)
        # the prompt went through the exported template: 5 template pieces + the question's tokens
        assert answer["usage"]["prompt_tokens"] > 4


def test_llama_cpp_python_server_answers_a_chat_completion(exported: Path) -> None:
    """The GGUF export served by llama-cpp-python: its chat format comes from the file's tokenizer.chat_template."""
    pytest.importorskip("llama_cpp.server", reason="llama-cpp-python's server extras are not installed")
    port = free_port()
    argv = [sys.executable, "-m", "llama_cpp.server", "--model", str(exported / "gguf" / "model.gguf"),
            "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "256"]
    for base in serve(argv, port, ready="/v1/models"):
        answer = one_chat_completion(base)
        # the prompt went through the exported template: 5 template pieces + the question's tokens
        assert answer["usage"]["prompt_tokens"] > 4


@pytest.mark.parametrize("fmt", ["portable", "decilm"])
def test_vllm_serve_answers_a_chat_completion(exported: Path, fmt: str) -> None:
    binary = engine("vllm")
    port = free_port()
    directory = str(exported / fmt)
    argv = [binary, "serve", directory, "--host", "127.0.0.1", "--port", str(port), "--max-model-len", "256",
            "--dtype", "float32", *(["--trust-remote-code"] if fmt == "decilm" else [])]
    for base in serve(argv, port):
        one_chat_completion(base, model=directory)

"""Loading an export as its model card says, with plain transformers in a fresh process: no prompt about the
directory's code for the tokenizer, no misleading warning, the source's use_cache, tokenizer settings and chat
template kept (the GGUF file's too), and the card titled after the source model."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from twossp_core.export.registry import run_export
from twossp_core.export.source_files import source_name
from twossp_core.models.registry import adapter_for

SOURCE_MAX_LENGTH = 96
CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")
CHAT = [{"role": "user", "content": "Once upon a time"}]


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory, stories_model: Path) -> Path:
    """A source model saved as its own directory, `.../tiny-llama/hf` (a directory name that does not name it),
    with use_cache on and a tokenizer whose model_max_length is set."""
    import transformers as tf
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    config = tf.LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=256, num_hidden_layers=3,
                            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, use_cache=True)
    path = tmp_path_factory.mktemp("models") / "tiny-llama" / "hf"
    AutoModelForCausalLM.from_config(config).save_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(stories_model)
    tokenizer.model_max_length = SOURCE_MAX_LENGTH
    tokenizer.chat_template = CHAT_TEMPLATE  # an instruct model's
    tokenizer.save_pretrained(path)
    return path


def _pruned(source: Path):
    from twossp_core.runtime.loading import load_model

    model, tokenizer = load_model(str(source))  # as a run loads it: cache off, unbounded model_max_length
    adapter_for(model).remove_attention(1)
    return model, tokenizer


def _usage(card: str) -> str:
    """The card's transformers snippet (the last Python block of "How to load")."""
    section = card.split("## How to load", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)[-1]


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["compact", "portable", "decilm"])
def test_an_export_loads_as_its_card_says_without_prompt_or_warning(fmt: str, source: Path, tmp_path: Path) -> None:
    model, tokenizer = _pruned(source)
    out = tmp_path / fmt
    run_export(fmt, model, tokenizer, out, {"method": "2ssp", "model": str(source)}, None)

    config = json.loads((out / "config.json").read_text())
    assert config["use_cache"] is True  # the source's, not the run's
    tokenizer_config = json.loads((out / "tokenizer_config.json").read_text())
    assert tokenizer_config["model_max_length"] == SOURCE_MAX_LENGTH
    assert not {"auto_map", "is_local", "local_files_only"} & set(tokenizer_config)
    card = (out / "README.md").read_text()
    assert "\n# tiny-llama pruned with 2ssp\n" in card

    check = _usage(card).replace("THIS_DIR", str(out)) + (
        "import torch\n"
        "ids = tokenizer('Once upon a time', return_tensors='pt').input_ids\n"
        "print('cache:', model(ids).past_key_values is not None)\n"
        "print('ids:', ids.tolist())\n"
        f"print('chat:', tokenizer.apply_chat_template({CHAT!r}, tokenize=False, add_generation_prompt=True))\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "warning"}
    run = subprocess.run([sys.executable, "-c", check], cwd=tmp_path, env=env, stdin=subprocess.DEVNULL,
                         capture_output=True, text=True, timeout=300)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output
    assert "custom code" not in output and "trust_remote_code" not in output  # no prompt, no refusal
    assert "to instantiate a model of type" not in output
    assert "cache: True" in run.stdout
    assert f"ids: {[tokenizer('Once upon a time').input_ids]}" in run.stdout
    assert "chat: <|user|>Once upon a time\n<|assistant|>" in run.stdout  # the chat template came along


@pytest.mark.slow
def test_the_gguf_export_carries_the_chat_template(source: Path, tmp_path: Path) -> None:
    from gguf import GGUFReader

    model, tokenizer = _pruned(source)
    run_export("gguf", model, tokenizer, tmp_path / "gguf", {"method": "2ssp", "model": str(source)}, None)
    field = GGUFReader(tmp_path / "gguf" / "model.gguf").fields["tokenizer.chat_template"]
    assert bytes(field.parts[field.data[0]]).decode() == CHAT_TEMPLATE


def test_the_source_name_skips_directory_names_that_do_not_name_a_model(tmp_path: Path) -> None:
    snapshot = tmp_path / "models--HuggingFaceTB--SmolLM2-135M-Instruct" / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    assert source_name(str(snapshot)) == "HuggingFaceTB/SmolLM2-135M-Instruct"
    nested = tmp_path / "SmolLM2-135M-Instruct" / "hf"
    nested.mkdir(parents=True)
    assert source_name(str(nested)) == "SmolLM2-135M-Instruct"
    assert source_name("org/name") == "org/name"

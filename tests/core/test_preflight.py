"""Early, torch-free request checks: config-based counts equal real counts; bad requests are refused."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from tiny_models import FAMILIES, save_tiny, tiny_model

from twossp_core.errors import DataError, InfeasibleTarget, ModelNotFound, UnsupportedModel
from twossp_core.models.counts import block_counts
from twossp_core.models.registry import adapter_for
from twossp_core.plan.methods import method_preflight
from twossp_core.plan.spec import parse_spec
from twossp_core.preflight import check_model


@pytest.mark.parametrize("family", FAMILIES)
def test_config_counts_equal_model_counts(family):
    model = tiny_model(family)
    adapter = adapter_for(model)
    counts = block_counts(model.config.to_dict())
    assert counts.attention == adapter.attention_params(0)
    assert counts.mlp == adapter.mlp_params(0)
    assert counts.block == adapter.block_params(0)
    assert counts.blocks_total == adapter.blocks_params()


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return save_tiny("llama", tmp_path_factory.mktemp("m"))


def _spec(model, text_file, **kw):
    return parse_spec({"model": str(model), "calibration": [str(text_file)], "eval": [str(text_file)], **kw})


def test_the_methods_own_preflight_decides_feasibility(llama_dir, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("hello")
    assert method_preflight("2ssp") is not None
    check_model(_spec(llama_dir, text, sparsity=0.4))  # the balance can be planned: accepted
    # the same model and sparsity, but more attention modules than the target allows: refused before queueing
    with pytest.raises(InfeasibleTarget, match="attention modules"):
        check_model(_spec(llama_dir, text, sparsity=0.1, options={"num_attention_to_prune": 4}))
    with pytest.raises(InfeasibleTarget, match="blocks"):
        check_model(_spec(llama_dir, text, sparsity=0.4, options={"num_attention_to_prune": 99}))
    # a method without a preflight of its own is not held to 2SSP's plan
    assert method_preflight("shortgpt") is None
    check_model(_spec(llama_dir, text, method="shortgpt", sparsity=0.1, options={}))


def test_unsupported_and_missing_models_are_refused(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("hello")
    (tmp_path / "gpt").mkdir()
    (tmp_path / "gpt" / "config.json").write_text('{"model_type": "gpt2"}')
    with pytest.raises(UnsupportedModel, match="gpt2"):
        check_model(_spec(tmp_path / "gpt", text, sparsity=0.4))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFound, match="config.json"):
        check_model(_spec(tmp_path / "empty", text, sparsity=0.4))


def test_missing_data_file_is_refused(llama_dir, tmp_path):
    with pytest.raises(DataError, match="no such file"):
        check_model(_spec(llama_dir, tmp_path / "nope.txt", sparsity=0.4))


def test_request_checks_do_not_import_torch():
    code = (
        "import sys, twossp_core.plan.spec, twossp_core.preflight, twossp_core.plan.methods;"
        "twossp_core.plan.spec.parse_spec({'model': 'x/y', 'sparsity': 0.5});"
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_every_familys_counts_are_computed_without_torch():
    code = (
        "import json, sys; from twossp_core.models.counts import block_counts;"
        "from twossp_core.models.registry import supported_model_types;"
        "cfg = {'hidden_size': 64, 'intermediate_size': 96, 'num_attention_heads': 4, 'num_hidden_layers': 2};"
        "blocks = {t: block_counts({**cfg, 'model_type': t}).block for t in supported_model_types()};"
        "print(json.dumps({'blocks': blocks, 'torch': 'torch' in sys.modules}))"
    )
    out = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert out["torch"] is False
    assert sorted(out["blocks"]) == sorted(FAMILIES) and all(n > 0 for n in out["blocks"].values())
